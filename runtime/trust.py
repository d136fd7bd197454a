"""Names read from files: the trust boundary of a folder.

An artefact folder may come from anyone. Every name read from it (meta.json's `files`, an
engine record's `source`, the external-data `location` inside an .onnx, a cache entry) is
resolved by `contained`: a plain file name inside the folder, or a one-line FSAError. No
separators, no `..`, no absolute or drive paths, no control characters, no symlink leading
out of the folder.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

from fsa_deploy.errors import FSAError, escape

NAME_MAX = 255


def name_problem(name: object) -> str | None:
    """None if `name` is a plain file name (what a folder may list), else what is wrong with it."""
    if not isinstance(name, str) or not name:
        return f"{name!r} is not a file name"
    if name in (".", ".."):
        return f"{name!r} is not a file name"
    if "/" in name or "\\" in name:
        return f"{escape(name)!r} is a path, not a plain file name (separator)"
    if ":" in name:  # a Windows drive (C:x) or an NTFS stream (a:b)
        return f"{escape(name)!r} is not a plain file name (':')"
    if any(unicodedata.category(c) in ("Cc", "Cf") for c in name):
        return f"{escape(name)!r} holds control characters"
    if len(name.encode("utf-8", "surrogatepass")) > NAME_MAX:
        return f"a name of {len(name)} characters is too long for a file name"
    return None


def contained(root: str | os.PathLike[str], name: object, what: str = "") -> Path:
    """root/name, if `name` is a plain file name and the path (symlinks followed) stays in `root`.

    `what` says where the name came from (for the error line: "meta.json files entry").
    """
    where = f" ({what})" if what else ""
    bad = name_problem(name)
    if bad:
        raise FSAError(f"{escape(str(root))}: {bad}{where}; refused, a name must stay inside its folder")
    root = Path(root)
    path = root / str(name)
    if path.is_symlink() or path.exists():
        try:
            real, base = path.resolve(strict=True), root.resolve(strict=True)
        except (OSError, RuntimeError) as e:  # a symlink loop or a dangling link
            why = "a symlink loop" if isinstance(e, RuntimeError) or getattr(e, "errno", 0) == 40 else "a dangling link"
            raise FSAError(f"{escape(str(path))}: {why}{where}; refused") from None
        if real.parent != base and base not in real.parents:
            raise FSAError(f"{escape(str(path))}: a symlink leading out of {escape(str(root))}{where}; refused")
    return path

"""Names read from files, and our own temporary names: the trust boundary of a folder.

An artefact folder may come from anyone. Every name read from it (meta.json's `files`, an
engine record's `source`, the external-data `location` inside an .onnx, a cache entry) is
resolved by `contained`: a plain file name inside the folder, or a one-line FSAError. No
separators, no `..`, no absolute or drive paths, no control characters, no symlink leading
out of the folder.

Temporary files and folders we make carry MARKER and the writer's PID in their name
(`.NAME.fsa-tmp-PID-RANDOM`), so the next run on a folder can sweep what a killed run left
(runtime/gate.py's `sweep_stale`) without ever touching a name a user could have chosen.
"""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path

from fsa_deploy.errors import FSAError, escape

MARKER = "fsa-tmp"  # in every temporary name we create: `.{name}.fsa-tmp-{pid}-{random}`
OLD_MARKER = "fsa-old"  # a folder moved aside by --overwrite until the new one is in place
_OURS = re.compile(rf"^\..*\.(?:{MARKER}|{OLD_MARKER})-(\d+)-[^/\\]*$")
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


# ---------------------------------------------------------------- our temporary names


def temp_prefix(name: str, kind: str = MARKER) -> str:
    """`.NAME.fsa-tmp-PID-` (NAME cut to 100 characters: the whole stays a legal file name)."""
    return f".{name[:100]}.{kind}-{os.getpid()}-"


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name == "nt":  # no signal 0 on Windows: assume alive (never sweep a live run's files)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: someone else's live process
        return True
    return True


def is_ours(name: str) -> int | None:
    """The PID recorded in one of our temporary names, else None (a name a user could choose)."""
    m = _OURS.match(name)
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------- external data named inside an .onnx

# TensorProto.external_data is a list of StringStringEntryProto {1: key, 2: value}; the entry
# {key: "location", value: NAME} is these bytes, then NAME's length (a varint) and NAME
_LOCATION = b"\x0a\x08location\x12"


def locations_in(data: bytes) -> list[str]:
    """The external-data file names an ONNX model's bytes refer to (no protobuf library needed)."""
    found, i = [], data.find(_LOCATION)
    while i >= 0:
        j, n, shift = i + len(_LOCATION), 0, 0
        while j < len(data) and shift < 35:
            b = data[j]
            n |= (b & 0x7F) << shift
            j += 1
            shift += 7
            if not b & 0x80:
                break
        if j + n <= len(data):  # else cut at the block's end: the next block (overlapping) holds it whole
            found.append(data[j:j + n].decode("utf-8", "replace"))
        i = data.find(_LOCATION, i + 1)
    return found


class LocationScanner:
    """Feed an .onnx file's blocks in order (as a hash reads them); `names` then holds every
    external-data location. Blocks overlap by a margin so a record cut in two is still seen."""

    MARGIN = 4096 + len(_LOCATION) + 5

    def __init__(self) -> None:
        self.names: set[str] = set()
        self._tail = b""

    def feed(self, block: bytes) -> None:
        if self._tail:  # a record that starts in the previous block's end
            self.names.update(locations_in(self._tail + block[: self.MARGIN]))
        self.names.update(locations_in(block))
        self._tail = block[-self.MARGIN:]


def check_locations(root: str | os.PathLike[str], graph: str, names: set[str], recorded: set[str]) -> None:
    """Every external-data location of `graph` is a plain, recorded file name of `root`."""
    for name in sorted(names):
        contained(root, name, f"external-data location inside {graph}")
        if name not in recorded:
            raise FSAError(f"{escape(str(Path(root) / graph))}: its external data {escape(name)!r} is not recorded "
                           "in meta.json; refused")

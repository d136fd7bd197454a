"""The artefact folder: file and tensor names, meta.json, hashes, atomic writes.

One place for the names that the exporter writes and every reader loads. Every
reader checks the sha256 of the files it relies on against meta.json.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fsa_deploy.runtime import schema

from fsa_deploy import interrupts

# The names live in fsa_deploy.contract; imported here for `artifact.IMAGE_ONNX`-style use.
from fsa_deploy.contract import (  # noqa: F401
    EMBEDDINGS,
    FORMAT,
    FORMAT_VERSION,
    IMAGE,
    IMAGE_ONNX,
    LOGITS,
    META,
    TEXT_EMBEDDINGS,
    TEXT_ONNX,
    TOKENS,
)
from fsa_deploy.errors import FSAError


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Artifact:
    """A loaded artefact folder: `meta` is meta.json as a dict."""

    root: Path
    meta: dict[str, Any]
    _verified: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        if not isinstance(self.meta, schema.Meta):  # a missing field is then one line naming it
            self.meta = schema.Meta(self.meta)
            self.meta.source = str(self.root / META)

    @classmethod
    def load(cls, root: str | os.PathLike[str]) -> Artifact:
        root = Path(root)
        if not root.is_dir():
            raise FSAError(f"{root}: not a folder (expected an artefact folder written by `fsa export`)")
        path = root / META
        if not path.is_file():
            raise FSAError(f"{root}: no {META} (not an artefact folder written by `fsa export`)")
        try:
            text = path.read_text()
        except (OSError, ValueError) as e:
            raise FSAError(f"{path}: unreadable meta.json ({e})") from e
        meta = schema.parse(text, str(path))  # strict JSON: NaN and Infinity are refused
        if meta.get("format") != FORMAT:
            raise FSAError(f"{path}: not an fsa-deploy meta.json (format field missing or wrong)")
        if meta.get("format_version") != FORMAT_VERSION:
            raise FSAError(
                f"{path}: format_version {meta.get('format_version')} is not supported "
                f"(this fsa-deploy reads {FORMAT_VERSION}); re-export"
            )
        return cls(root, schema.validate(meta, str(path)))  # every field: one line naming a bad one

    def files(self) -> dict[str, dict[str, Any]]:
        return self.meta.setdefault("files", {})

    def path(self, name: str, verify: bool = True) -> Path:
        """Path of a file of the folder; with `verify`, its sha256 must match meta.json."""
        info = self.files().get(name)
        if info is None:
            raise FSAError(f"{self.root}: {name} is not recorded in {META} (files: {', '.join(self.files())})")
        p = self.root / name
        if not p.is_file():
            raise FSAError(f"{p}: missing (recorded in {META})")
        if verify and name not in self._verified:
            digest = sha256_file(p)
            if digest != info.get("sha256"):
                again = "rebuild it (fsa build)" if p.suffix == ".engine" else "re-export"
                raise FSAError(f"{p}: sha256 does not match {META} (file changed after it was written); {again}")
            self._verified.add(name)
        return p

    def verify_all(self) -> None:
        for name in self.files():
            self.path(name)

    def record(self, name: str, **info: Any) -> None:
        """Record (or refresh) a file of the folder in meta.json, with its hash and size."""
        p = self.root / name
        self.files()[name] = {**self.files().get(name, {}), **info, "sha256": sha256_file(p), "bytes": p.stat().st_size}
        self._verified.add(name)

    def save(self) -> None:
        write_json_atomic(self.root / META, self.meta)


def with_stage_outputs(model, stages: dict[str, str], names: list[str] | None = None):
    """A copy of an image graph (onnx.ModelProto) whose stage tensors are also graph outputs.

    `stages` is meta.json's stage -> tensor map; shapes and types come from shape inference.
    """
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    inferred = {vi.name: vi for vi in onnx.shape_inference.infer_shapes(m).graph.value_info}
    for stage in names or list(stages):
        tensor = stages[stage]
        if tensor not in inferred:
            raise FSAError(f"stage {stage!r}: tensor {tensor} not found in the graph")
        m.graph.output.append(inferred[tensor])
    return m


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write JSON to a temporary name beside `path`, then rename: never half-written."""
    try:  # strict JSON: NaN and Infinity are not JSON, and a reader must never meet them
        text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n"
    except ValueError as e:
        raise FSAError(f"{path}: refusing to write a non-finite number (NaN or Infinity) into JSON ({e})") from e
    with atomic_file(path) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` only if the block succeeds.

    No rename after a signal (fsa_deploy.interrupts); the temporary file goes in every case.
    """
    path = Path(path)
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; the result should look like any other file
        yield Path(tmp)
        interrupts.check()
        os.replace(tmp, path)
    finally:
        with interrupts.shielded(), contextlib.suppress(OSError, TypeError):
            os.unlink(tmp)  # type: ignore[arg-type]


def check_target(final: str | os.PathLike[str], overwrite: bool = False) -> None:
    """`final` may not exist, or must be an artefact folder (replaced only with `overwrite`)."""
    final = Path(final)
    if final.exists():
        if not final.is_dir() or not (final / META).is_file():
            raise FSAError(f"{final}: exists and is not an artefact folder; choose another --out")
        if not overwrite:
            raise FSAError(f"{final}: artefact folder exists; pass --overwrite to replace it")


@contextlib.contextmanager
def staging_folder(final: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Build a folder under a temporary name beside `final`, then move it into place.

    `final` may not exist, or must be an artefact folder (it is replaced only with
    `overwrite`); anything else is refused, so a user's folder is never clobbered.
    """
    final = Path(final)
    check_target(final, overwrite)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FSAError(f"{final.parent}: cannot create the folder ({e.strerror or e})") from e
    tmp: Path | None = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        yield tmp
        interrupts.check()
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            with interrupts.shielded():  # the swap must not stop half-way
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp is not None:
            with interrupts.shielded():
                shutil.rmtree(tmp, ignore_errors=True)

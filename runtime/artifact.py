"""The artefact folder: file and tensor names, meta.json, hashes, atomic writes.

One place for the names that the exporter writes and every reader loads. Every
reader checks the sha256 of the files it relies on against meta.json.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fsa_deploy.contract import META
from fsa_deploy.errors import FSAError
from fsa_deploy.runtime import environ, gate, onnx_locations, schema, trust

_DIGESTS: dict[tuple[str, int, int], str] = {}  # sha256_file(once=True): (real path, size, mtime_ns) -> digest


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20, scan: onnx_locations.LocationScanner | None = None,
                *, once: bool = False, data: bytes | None = None) -> str:
    """sha256 of a file: the one implementation. `scan` sees every block (an .onnx's external-data
    names). `once`: hashed once per (path, size, mtime) in this process, for multi-GB files recorded
    or checked in several places (checkpoints, engines). `data`: the file's bytes when the caller
    holds them already (an engine about to be deserialised: not read twice)."""
    key = None
    if once:
        st = os.stat(path)
        key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
        if scan is None and key in _DIGESTS:
            return _DIGESTS[key]
    h = hashlib.sha256()
    if data is not None:
        h.update(data)
        if scan is not None:
            scan.feed(data)
    else:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
                if scan is not None:
                    scan.feed(block)
    digest = h.hexdigest()
    if key is not None:
        _DIGESTS[key] = digest
    return digest


@dataclass
class Artifact:
    """A loaded artefact folder: `meta` is meta.json as a dict (what is written back); `info`,
    `file` and `file_records` read it as the typed records of runtime.schema."""

    root: Path
    meta: dict[str, Any]  # a schema.ExportMeta is accepted too (a fresh export's)
    _verified: set[str] = field(default_factory=set)
    _changed: set[str] = field(default_factory=set)  # records this process made or dropped: save() merges them

    def __post_init__(self) -> None:
        if isinstance(self.meta, schema.ExportMeta):
            self.meta = self.meta.to_json()
        if not isinstance(self.meta, schema.Meta):  # a missing field is then one line naming it
            self.meta = schema.Meta(self.meta)
            self.meta.source = str(self.root / META)

    @classmethod
    def load(cls, root: str | os.PathLike[str]) -> Artifact:
        root = Path(root)
        if not root.is_dir():
            raise FSAError(f"{root}: not a folder (expected an artefact folder written by `fsa export`)")
        path = trust.contained(root, META, "the artefact's own meta.json")
        if not path.is_file():
            raise FSAError(f"{root}: no {META} (not an artefact folder written by `fsa export`)")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, ValueError) as e:
            raise FSAError(f"{path}: unreadable meta.json ({e})") from e
        meta = schema.parse(text, str(path))  # strict JSON: NaN and Infinity are refused
        schema.check_format(meta, str(path))
        art = cls(root, schema.validate(meta, str(path)))  # every field: one line naming a bad one
        for name in art.files():  # before any file is touched: no name leads out of the folder
            trust.contained(root, name, f"{META} files entry")
        return art

    @property
    def info(self) -> schema.MetaRecord:
        """meta.json's model fields, typed (a missing one a reader needs: one line naming the file)."""
        return schema.MetaRecord.of(self.meta, str(self.root / META))

    def files(self) -> dict[str, dict[str, Any]]:
        """The `files` entries as JSON objects (what is written back); read them with `file`."""
        files: dict[str, dict[str, Any]] = self.meta.setdefault("files", {})
        return files

    def file(self, name: str) -> schema.FileRecord:
        """The typed record of a file of the folder; one line naming the folder if it has none."""
        info = self.files().get(name)
        if info is None:
            raise FSAError(f"{self.root}: {name} is not recorded in {META} (files: {', '.join(self.files())})")
        try:
            return schema.FileRecord.of(info)
        except ValueError as e:  # a record this process wrote wrong (a loaded one was checked by load)
            raise FSAError(f"{self.root / META}: files: {name}: {e}") from None

    def sha256(self, name: str) -> str | None:
        """The recorded sha256 of a file; None when the folder records no such file."""
        return self.file(name).sha256 if name in self.files() else None

    def file_records(self) -> dict[str, schema.FileRecord]:
        """Every file's typed record, by name."""
        return {name: self.file(name) for name in self.files()}

    def path(self, name: str, verify: bool = True) -> Path:
        """Path of a file of the folder; with `verify`, its sha256 must match meta.json."""
        info = self.file(name)
        p = trust.contained(self.root, name, f"{META} files entry")
        if not p.is_file():
            raise FSAError(f"{p}: missing (recorded in {META})")
        if verify and name not in self._verified:
            scan = onnx_locations.LocationScanner() if name.endswith(".onnx") else None
            digest = sha256_file(p, scan=scan)
            if scan is not None:  # external data an .onnx names: plain names, recorded here
                onnx_locations.check_locations(self.root, name, scan.names, set(self.files()))
            if digest != info.sha256:
                again = "rebuild it (fsa build)" if p.suffix == ".engine" else "re-export"
                raise FSAError(f"{p}: sha256 does not match {META} (file changed after it was written); {again}")
            self._verified.add(name)
        return p

    def verify_all(self) -> None:
        for name in self.files():
            self.path(name)

    def record(self, name: str, entry: schema.FileRecord | None = None, **info: Any) -> None:
        """Record (or refresh) a file of the folder in meta.json, with its hash and size: `entry`
        (or its fields as keywords) says what the file is; fields it leaves out keep their value."""
        if entry is not None and info:
            raise TypeError("Artifact.record: give a FileRecord or its fields as keywords, not both")
        p = trust.contained(self.root, name, "a file to record")
        new = schema.dump_record(entry if entry is not None else schema.FileRecord.of(info))
        new = {k: v for k, v in new.items() if k not in ("sha256", "bytes")}
        self.files()[name] = {**self.files().get(name, {}), **new, "sha256": sha256_file(p), "bytes": p.stat().st_size}
        self._verified.add(name)
        self._changed.add(name)

    def forget(self, name: str) -> None:
        """Drop a file's record (the caller removes the file); save() writes it."""
        self.files().pop(name, None)
        self._verified.discard(name)
        self._changed.add(name)

    def save(self) -> None:
        """Write meta.json: one writer at a time (a lock beside it, bounded wait), re-read under the
        lock and merged with this process's records, replaced atomically, so two `fsa build` or
        `fsa calibrate` on one folder keep each other's records."""
        with gate.writing_into(self.root):  # the one writer of an artefact's own meta.json
            self._save()

    def _save(self) -> None:
        path = self.root / META
        if not path.exists():  # a folder being written (export's staging folder): nobody else knows it
            gate.write_json(path, self.meta)
            self._changed.clear()
            return
        with meta_lock(self.root):
            current = None
            if path.is_file():
                try:
                    current = schema.parse(path.read_text(encoding="utf-8"), str(path))
                except (OSError, ValueError, FSAError):
                    current = None  # unreadable now: ours is the only good copy
            if isinstance(current, dict) and isinstance(current.get("files"), dict):
                files = dict(current["files"])
                for name in self._changed:
                    if name in self.files():
                        files[name] = self.files()[name]
                    else:
                        files.pop(name, None)
                self.meta["files"] = files
            gate.write_json(path, self.meta)
            self._changed.clear()


@contextlib.contextmanager
def meta_lock(root: Path) -> Iterator[None]:
    """An exclusive lock on the folder's meta.json (`.meta.json.lock`, opened by the gate without
    following a link, released by the OS if the holder dies); FSAError naming the folder after
    FSA_LOCK_TIMEOUT seconds (default 300)."""
    timeout = environ.value("FSA_LOCK_TIMEOUT")
    try:
        with gate.lock(root / f".{META}.lock", timeout, what=f"{root}: {META}"):
            yield
    except FSAError as e:
        if "still locked" not in str(e):
            raise
        raise FSAError(f"{root}: another fsa process has held {META} for {timeout:g} s (a build or calibrate "
                       "still running?); try again when it ends (FSA_LOCK_TIMEOUT sets the wait)") from None
    except OSError as e:
        raise FSAError(f"{root}: cannot lock {META} ({e.strerror or e}); is the folder read-only?") from None


def with_stage_outputs(model: Any, stages: dict[str, str], names: list[str] | None = None) -> Any:
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


def is_artifact(folder: str | os.PathLike[str]) -> bool:
    """True if `folder` holds an fsa-deploy meta.json by schema (format name and an integer version)."""
    path = Path(folder) / META
    if not path.is_file() or path.is_symlink():
        return False
    try:
        meta = schema.parse(path.read_text(encoding="utf-8"), str(path))
    except (OSError, ValueError, FSAError):
        return False
    return schema.is_format(meta)

"""The artefact folder: file and tensor names, meta.json, hashes, atomic writes.

One place for the names that the exporter writes and every reader loads. Every
reader checks the sha256 of the files it relies on against meta.json.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fsa_deploy.runtime import paths, schema

from fsa_deploy import interrupts
from fsa_deploy.contract import FORMAT, FORMAT_VERSION, META
from fsa_deploy.errors import FSAError

_DIGESTS: dict[tuple[str, int, int], str] = {}  # sha256_file(once=True): (real path, size, mtime_ns) -> digest


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20, scan: paths.LocationScanner | None = None,
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
    """A loaded artefact folder: `meta` is meta.json as a dict."""

    root: Path
    meta: dict[str, Any]
    _verified: set[str] = field(default_factory=set)
    _changed: set[str] = field(default_factory=set)  # records this process made or dropped: save() merges them

    def __post_init__(self) -> None:
        if not isinstance(self.meta, schema.Meta):  # a missing field is then one line naming it
            self.meta = schema.Meta(self.meta)
            self.meta.source = str(self.root / META)

    @classmethod
    def load(cls, root: str | os.PathLike[str]) -> Artifact:
        root = Path(root)
        if not root.is_dir():
            raise FSAError(f"{root}: not a folder (expected an artefact folder written by `fsa export`)")
        path = paths.contained(root, META, "the artefact's own meta.json")
        if not path.is_file():
            raise FSAError(f"{root}: no {META} (not an artefact folder written by `fsa export`)")
        try:
            text = path.read_text(encoding="utf-8")
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
        art = cls(root, schema.validate(meta, str(path)))  # every field: one line naming a bad one
        for name in art.files():  # before any file is touched: no name leads out of the folder
            paths.contained(root, name, f"{META} files entry")
        return art

    def files(self) -> dict[str, dict[str, Any]]:
        return self.meta.setdefault("files", {})

    def path(self, name: str, verify: bool = True) -> Path:
        """Path of a file of the folder; with `verify`, its sha256 must match meta.json."""
        info = self.files().get(name)
        if info is None:
            raise FSAError(f"{self.root}: {name} is not recorded in {META} (files: {', '.join(self.files())})")
        p = paths.contained(self.root, name, f"{META} files entry")
        if not p.is_file():
            raise FSAError(f"{p}: missing (recorded in {META})")
        if verify and name not in self._verified:
            scan = paths.LocationScanner() if name.endswith(".onnx") else None
            digest = sha256_file(p, scan=scan)
            if scan is not None:  # external data an .onnx names: plain names, recorded here
                paths.check_locations(self.root, name, scan.names, set(self.files()))
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
        p = paths.contained(self.root, name, "a file to record")
        self.files()[name] = {**self.files().get(name, {}), **info, "sha256": sha256_file(p), "bytes": p.stat().st_size}
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
        path = self.root / META
        if not path.exists():  # a folder being written (export's staging folder): nobody else knows it
            write_json_atomic(path, self.meta)
            self._changed.clear()
            return
        with meta_lock(self.root):
            current = None
            if path.is_file():
                try:
                    current = schema.parse(path.read_text(encoding="utf-8"), str(path))
                except (OSError, ValueError, FSAError):
                    current = None  # unreadable now: ours is the only good copy
            _pause_for_tests()
            if isinstance(current, dict) and isinstance(current.get("files"), dict):
                files = dict(current["files"])
                for name in self._changed:
                    if name in self.files():
                        files[name] = self.files()[name]
                    else:
                        files.pop(name, None)
                self.meta["files"] = files
            write_json_atomic(path, self.meta)
            self._changed.clear()


LOCK_TIMEOUT_S = 300.0  # FSA_LOCK_TIMEOUT overrides: how long a writer waits for another one


def _pause_for_tests() -> None:
    """FSA_TEST_META_PAUSE=SECONDS: sleep between meta.json's read and write (the race test's hook)."""
    pause = os.environ.get("FSA_TEST_META_PAUSE")
    if pause:
        import time

        time.sleep(float(pause))


@contextlib.contextmanager
def meta_lock(root: Path) -> Iterator[None]:
    """An exclusive lock on the folder's meta.json (`.meta.json.lock`, released by the OS if the
    holder dies); FSAError naming the folder after FSA_LOCK_TIMEOUT seconds (default 300)."""
    from filelock import FileLock, Timeout

    try:
        timeout = float(os.environ.get("FSA_LOCK_TIMEOUT", LOCK_TIMEOUT_S))
    except ValueError:
        raise FSAError(f"FSA_LOCK_TIMEOUT {os.environ['FSA_LOCK_TIMEOUT']!r}: not a number of seconds") from None
    lock = FileLock(str(root / f".{META}.lock"), timeout=timeout)
    try:
        lock.acquire()
    except Timeout:
        raise FSAError(f"{root}: another fsa process has held {META} for {timeout:g} s (a build or calibrate "
                       "still running?); try again when it ends (FSA_LOCK_TIMEOUT sets the wait)") from None
    except OSError as e:
        raise FSAError(f"{root}: cannot lock {META} ({e.strerror or e}); is the folder read-only?") from None
    try:
        yield
    finally:
        lock.release()


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

    The temporary name carries our marker and PID (runtime.paths), so a killed run's leftover is
    swept by the next write into that folder. No rename after a signal (fsa_deploy.interrupts);
    the temporary file goes in every case.
    """
    path = Path(path)
    tmp: str | None = None
    try:
        paths.sweep_stale(path.parent, once=True)
        tmp = paths.mkstemp_beside(path, path.suffix)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; the result should look like any other file
        yield Path(tmp)
        interrupts.check()
        os.replace(tmp, path)
    finally:
        with interrupts.shielded(), contextlib.suppress(OSError, TypeError):
            os.unlink(tmp)  # type: ignore[arg-type]


@functools.cache
def _umask() -> int:
    """The process's umask, read once (reading it means setting it: never while other threads write files)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def is_artifact(folder: str | os.PathLike[str]) -> bool:
    """True if `folder` holds an fsa-deploy meta.json by schema (format name and an integer version)."""
    path = Path(folder) / META
    if not path.is_file() or path.is_symlink():
        return False
    try:
        meta = schema.parse(path.read_text(encoding="utf-8"), str(path))
    except (OSError, ValueError, FSAError):
        return False
    version = meta.get("format_version")
    return meta.get("format") == FORMAT and isinstance(version, int) and not isinstance(version, bool)


def check_target(final: str | os.PathLike[str], overwrite: bool = False, option: str = "--out") -> None:
    """`final` may not exist, or must be an artefact folder by schema (replaced only with `overwrite`).

    A folder that merely holds a file called meta.json is not an artefact: refused even with --overwrite.
    """
    final = Path(final)
    if final.is_symlink() or final.exists():
        if final.is_symlink() or not final.is_dir() or not is_artifact(final):
            raise FSAError(f"{option} {final}: exists and is not an artefact folder (no fsa-deploy {META}); "
                           f"--overwrite replaces only an artefact folder: choose another {option}")
        if not overwrite:
            raise FSAError(f"{option} {final}: artefact folder exists; pass --overwrite to replace it")


@contextlib.contextmanager
def staging_folder(final: str | os.PathLike[str], overwrite: bool = False,
                   check: Callable[[Path, bool], None] | None = None) -> Iterator[Path]:
    """Build a folder under a temporary name beside `final`, then move it into place.

    `final` may not exist, or must be an artefact folder (it is replaced only with `overwrite`);
    anything else is refused, so a user's folder is never clobbered. The old artefact is moved
    aside under a unique name of ours and removed only once the new one is in place.
    """
    final = Path(final)
    check = check or check_target
    check(final, overwrite)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FSAError(f"{final.parent}: cannot create the folder ({e.strerror or e})") from e
    paths.sweep_stale(final.parent)  # what a killed export left (our marker, its PID gone)
    tmp: Path | None = None
    try:
        tmp = paths.mkdtemp_beside(final)
        yield tmp
        interrupts.check()
        if final.exists():
            check(final, overwrite)  # still replaceable (nobody swapped it while we worked)
            with interrupts.shielded():  # the swap must not stop half-way
                old = paths.mkdtemp_beside(final, paths.OLD_MARKER)
                os.rmdir(old)  # a unique free name: the old artefact goes there
                os.replace(final, old)
                try:
                    os.replace(tmp, final)
                except OSError:
                    os.replace(old, final)  # put the old one back: the user keeps a working artefact
                    raise
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp is not None:
            with interrupts.shielded():
                shutil.rmtree(tmp, ignore_errors=True)


def check_output_file(path: str | os.PathLike[str] | None, option: str, overwrite: bool = False) -> None:
    """Before any work: a report or dump the user names must be a file name we may write.

    Never a folder, never meta.json or a file it records (not even with --overwrite); an existing
    file, or a new one inside an artefact folder, only with `overwrite`. Its folder is created.
    """
    if not path:
        return
    p = Path(path)
    if p.is_dir():
        raise FSAError(f"{option} {p}: is a folder; give a file name")
    schema.refuse_artifact_file(p, option)
    if not overwrite:
        if p.is_symlink() or p.exists():
            raise FSAError(f"{option} {p}: exists; pass --overwrite to replace it")
        if is_artifact(p.parent):
            raise FSAError(f"{option} {p}: inside the artefact folder {p.parent}; write it elsewhere "
                           "(or pass --overwrite)")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FSAError(f"{option} {p}: cannot create its folder ({e.strerror or e})") from e
    if not p.parent.is_dir():
        raise FSAError(f"{option} {p}: cannot create its folder ({p.parent} is not a folder)")

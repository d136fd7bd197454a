"""The output gate: every file or folder fsa creates, replaces, appends to or deletes goes through here.

Nothing else in the package calls a write or delete primitive (tests/test_gate.py scans the source),
so the policy is decided once:

- never inside an artefact folder at any depth (recognised by its schema, also when meta.json is a
  symlink), except a folder this process is building or recording into (`writing_into`: export's
  staging folder, build and calibrate on their artefact);
- never over anything that is not a regular file or folder (device nodes, FIFOs, sockets), not even
  with --overwrite;
- never two outputs of one run on the same file (`Outputs`);
- never over a file fsa cannot show it wrote unless --overwrite: every output is recorded, with its
  sha256, in the manifest of its folder (contract.OUTPUTS_MANIFEST); a re-run replaces a file whose
  recorded hash still matches, a file the user put there or edited since is refused;
- outputs are checked (and their folders made writable) before any work; folders follow the umask;
- lock files are opened without following links and never truncated.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

if os.name == "nt":  # no flock on Windows: filelock's msvcrt lock (lock()); folders are not locked there
    from filelock import FileLock, Timeout
else:
    import fcntl

from fsa_deploy import interrupts
from fsa_deploy.contract import FORMAT, META, OUTPUTS_FORMAT, OUTPUTS_MANIFEST
from fsa_deploy.errors import FSAError, escape
from fsa_deploy.runtime import tempnames
from fsa_deploy.runtime.schema import refuse_artifact_file

PathLike = str | os.PathLike[str]

# ---------------------------------------------------------------- what a path is


@functools.cache
def umask() -> int:
    """The process's umask, read once (reading it means setting it: never while other threads write files)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def artifact_format(folder: PathLike) -> bool:
    """True if `folder`/meta.json (a link followed) is an fsa-deploy meta.json by its format field."""
    meta = Path(folder) / META
    try:
        if not meta.is_file() or meta.stat().st_size > 64 << 20:
            return False
        raw = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(raw, dict) and raw.get("format") == FORMAT


_BUILDING: set[str] = set()  # real paths of artefact folders this process writes into (writing_into)
_BUILDING_LOCK = threading.Lock()


@contextlib.contextmanager
def writing_into(root: PathLike) -> Iterator[None]:
    """Allow writes inside the artefact folder `root` for the block: export's staging folder, build
    and calibrate adding the files they record in its meta.json."""
    key = os.path.realpath(root)
    with _BUILDING_LOCK:
        fresh = key not in _BUILDING
        _BUILDING.add(key)
    try:
        yield
    finally:
        if fresh:
            with _BUILDING_LOCK:
                _BUILDING.discard(key)


def artifact_holding(path: PathLike) -> Path | None:
    """The artefact folder `path` lies in (at any depth, as written and with links resolved), or None;
    a folder this process is writing into does not count."""
    seen: set[str] = set()
    for start in (Path(os.path.abspath(path)), Path(os.path.realpath(path))):
        for folder in start.parents:
            key = str(folder)
            if key in seen:
                continue
            seen.add(key)
            if artifact_format(folder):
                real = os.path.realpath(folder)
                if any(real == b or real.startswith(b + os.sep) for b in _BUILDING):
                    return None
                return folder
    return None


def kind_problem(path: PathLike) -> str | None:
    """What makes `path` unfit to write over: a device node, FIFO or socket (a link followed); None if
    it is absent, a regular file or a folder."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    what = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
    return f"is {what}, not a regular file"


def guard(path: PathLike, name: str | None = None) -> Path:
    """The check every primitive below makes: not a special file, not inside an artefact folder."""
    p = Path(path)
    shown = escape(name or str(p))
    bad = kind_problem(p)
    if bad:
        raise FSAError(f"{shown}: {bad}; fsa writes only regular files and folders")
    art = artifact_holding(p)
    if art is not None:
        raise FSAError(f"{shown}: inside the artefact folder {escape(str(art))}; write it elsewhere")
    return p


# ---------------------------------------------------------------- ownership: the manifest of each folder


def sha256(path: PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _manifest(folder: Path) -> dict[str, str]:
    """name -> sha256 of the files fsa wrote in `folder` (its manifest; empty if none or unreadable).

    The manifest is JSON Lines, appended to (one line per file written or removed, the last one
    counts), so recording stays O(1) per file in a folder of thousands of results; a line torn by
    a killed writer is skipped."""
    path = folder / OUTPUTS_MANIFEST
    files: dict[str, str] = {}
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            return files
        key = (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns)
        if _MANIFESTS.get(key[0], (None,))[0] == key:  # read once per change: a re-run checks thousands
            return dict(_MANIFESTS[key[0]][1])
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return files
    if not lines or lines[0].strip() != _MANIFEST_HEAD:
        return files
    for line in lines[1:]:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("file"), str):
            digest = rec.get("sha256")
            if isinstance(digest, str):
                files[rec["file"]] = digest
            else:
                files.pop(rec["file"], None)
    _MANIFESTS[key[0]] = (key, dict(files))
    return files


_MANIFEST_HEAD = json.dumps({"format": OUTPUTS_FORMAT})
_MANIFESTS: dict[str, tuple[tuple[str, int, int, int], dict[str, str]]] = {}


def owned(path: PathLike) -> bool:
    """True if `path` is a regular file fsa wrote and nobody changed since (its folder's manifest)."""
    p = Path(path)
    if p.is_symlink() or not p.is_file():
        return False
    digest = _manifest(p.parent).get(p.name)
    return digest is not None and digest == sha256(p)


def _update_manifest(folder: Path, change: dict[str, str | None]) -> None:
    """Record (name -> sha256) or drop (name -> None) files in `folder`'s manifest: lines appended
    under the folder's lock; never through a link."""
    if not change:
        return
    path = folder / OUTPUTS_MANIFEST
    with _folder_lock(folder):
        fresh = not path.is_file() or path.is_symlink()
        if fresh and (path.is_symlink() or path.exists()):
            os.unlink(path)  # a link or a special file in our manifest's name: never written through
        lines = [] if not fresh else [_MANIFEST_HEAD]
        lines += [json.dumps({"file": n, "sha256": d} if d else {"file": n}) for n, d in change.items()]
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC,
                     0o666)
        with os.fdopen(fd, "a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """flock on the folder itself (no lock file left beside the user's files); none on Windows."""
    if os.name == "nt":
        yield
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def record(*files: PathLike) -> None:
    """Mark `files` (written by us) as ours: their hashes go into their folders' manifests."""
    by_folder: dict[Path, dict[str, str | None]] = {}
    for f in files:
        p = Path(f)
        if p.is_file() and not p.is_symlink() and artifact_holding(p) is None:  # meta.json records those
            by_folder.setdefault(p.parent, {})[p.name] = sha256(p)
    for folder, change in by_folder.items():
        _update_manifest(folder, change)


# ---------------------------------------------------------------- before any work: the outputs of a run


def writable(folder: Path, shown: str) -> None:
    """Before the work: a file can be made in `folder` (tried: the missing folders made and a probe file
    of ours created, then all of it removed again, so nothing is left before the work; the results
    make the folder when the first is written). Root ignores permission bits: only trying tells."""
    folder = Path(os.path.abspath(folder))  # `x/..` as the result's path will be resolved
    if str(folder) in _WRITABLE:  # tried once per run: segment checks three results per image
        return
    base = folder
    while not (base.is_symlink() or base.exists()) and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise FSAError(f"{shown}: cannot create its folder ({escape(str(base))} is not a folder)")
    made: list[Path] = []
    try:
        for p in reversed([folder, *folder.parents][: len(folder.parts) - len(base.parts)]):
            os.mkdir(p, 0o777)
            made.append(p)
        fd, probe = tempfile.mkstemp(prefix=tempnames.temp_prefix("probe"), dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise FSAError(f"{shown}: cannot write in {escape(str(folder))} ({e.strerror or e})") from None
    finally:
        for p in reversed(made):
            with contextlib.suppress(OSError):
                os.rmdir(p)
    _WRITABLE.add(str(folder))


_WRITABLE: set[str] = set()
_CLEARED: set[str] = set()  # real paths check_file let this process write (--overwrite given where needed)


def check_file(path: PathLike, option: str, overwrite: bool = False, action: str = "replace") -> Path:
    """Before any work: `path` may be written as a file. Refused: a folder, a special file, a file
    inside an artefact folder, meta.json or a file it records, an existing file that is not ours
    (unless `overwrite`: a log fsa appends to is ours when its folder's manifest says so; `action`
    says what --overwrite then does to it: "replace", or "append to" for a log)."""
    p = Path(path)
    shown = f"{option} {escape(str(p))}"
    if p.is_dir():
        raise FSAError(f"{shown}: is a folder; give a file name")
    bad = kind_problem(p)
    if bad:
        raise FSAError(f"{shown}: {bad}; refused (also with --overwrite)")

    refuse_artifact_file(p, option)
    art = artifact_holding(p)
    if art is not None:
        raise FSAError(f"{shown}: inside the artefact folder {escape(str(art))}; write it elsewhere")
    if (p.is_symlink() or p.exists()) and not overwrite and not owned(p):
        raise FSAError(f"{shown}: exists; pass --overwrite to {action} it (fsa did not write it, or it was "
                       "changed since)")
    writable(p.parent, shown)
    _CLEARED.add(os.path.realpath(p))
    return p


def _refuse_unchecked(p: Path) -> None:
    """The last line of the gate: a result (`keep`) never replaces a file fsa did not write unless
    check_file let it (a write path that skipped its option's check fails here, not with the user's file)."""
    if (p.is_symlink() or p.exists()) and not owned(p) and os.path.realpath(p) not in _CLEARED:
        raise FSAError(f"{escape(str(p))}: exists and fsa did not write it (or it was changed since); "
                       "refused: pass --overwrite to replace it")


def check_folder(path: PathLike, option: str, write: bool = True, create: bool = True) -> Path:
    """Before any work: `path` may be used as a folder we write in (not inside an artefact folder, not a
    file; `create`: made now, else when its first file is written; `write`: refused when we cannot
    write in it, else a read-only one is fine: a cache)."""
    p = Path(path)
    shown = f"{option} {escape(str(p))}"
    bad = kind_problem(p)
    if bad or (p.exists() and not p.is_dir()):
        raise FSAError(f"{shown}: {bad or 'exists and is not a folder (cannot be made a folder)'}")
    art = artifact_holding(p / "x") if artifact_format(p) else artifact_holding(p)
    if art is not None:
        raise FSAError(f"{shown}: inside the artefact folder {escape(str(art))}; choose a folder of its own")
    if not create:
        writable(p, shown)
        return p
    try:
        mkdir(p)
    except OSError as e:
        raise FSAError(f"{shown}: cannot be made a folder ({e.strerror or e})") from None
    if write:
        writable(p, shown)
    return p


class Outputs:
    """The output files of one run, checked together before any work: two options (or two results)
    that resolve to one file are refused."""

    def __init__(self) -> None:
        self._seen: dict[str, str] = {}

    def _claim(self, p: Path, option: str) -> None:
        key = os.path.normcase(os.path.realpath(p))
        other = self._seen.get(key)
        if other is not None:
            raise FSAError(f"{option} {escape(str(p))}: the same file as {other}; give each output its own file")
        self._seen[key] = f"{option} {escape(str(p))}"

    def file(self, path: PathLike | None, option: str, overwrite: bool = False) -> Path | None:
        if not path:
            return None
        self._claim(Path(path), option)
        return check_file(path, option, overwrite)


def check_output_file(path: PathLike | None, option: str, overwrite: bool = False) -> None:
    """One output file checked before any work (check_file); nothing for None."""
    if path:
        check_file(path, option, overwrite)


# ---------------------------------------------------------------- writing


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    tmp: str | None = None
    try:
        sweep_stale(path.parent, once=True)
        fd, tmp = tempfile.mkstemp(prefix=tempnames.temp_prefix(path.stem), suffix=path.suffix, dir=path.parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600 files; the result should look like any other file
        yield Path(tmp)
        interrupts.check()
        os.replace(tmp, path)
    finally:
        with interrupts.shielded(), contextlib.suppress(OSError, TypeError):
            os.unlink(tmp)  # type: ignore[arg-type]


@contextlib.contextmanager
def atomic(path: PathLike, keep: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path` (our marker and PID in its name, so a killed run's
    leftover is swept by the next write there); renamed to `path` only if the block succeeds and no
    signal came. `keep`: record the result as ours in its folder's manifest (caches and files an
    artefact's meta.json records pass False)."""
    p = guard(path)
    if keep and not _inside_building(p):
        _refuse_unchecked(p)
    if not p.parent.is_dir():
        mkdir(p.parent)
    try:
        with _atomic(p) as tmp:
            yield tmp
    except OSError as e:  # the user's name in the line, never our temporary one
        if e.filename is None or tempnames.MARKER not in str(e.filename):
            raise
        raise FSAError(f"{escape(str(p))}: cannot write ({e.strerror or e})") from None
    if keep and not _inside_building(p):
        record(p)


def _inside_building(p: Path) -> bool:
    real = os.path.realpath(p.parent)
    return any(real == b or real.startswith(b + os.sep) for b in _BUILDING)



def write_text(path: PathLike, text: str, keep: bool = True, encoding: str = "utf-8") -> None:
    with atomic(path, keep) as tmp:
        tmp.write_text(text, encoding=encoding)


def write_bytes(path: PathLike, data: bytes, keep: bool = True, mode: int | None = None) -> None:
    """`mode`: permission bits (an executable), the umask applied."""
    with atomic(path, keep) as tmp:
        tmp.write_bytes(data)
        if mode is not None:
            os.chmod(tmp, mode & ~umask())


def write_group(files: dict[Path, bytes], keep: bool = True) -> None:
    """Several files, each under a temporary name, renamed only once all are written (one image's results)."""
    with contextlib.ExitStack() as stack:
        for path, data in files.items():
            stack.enter_context(atomic(path, keep)).write_bytes(data)


def write_json(path: PathLike, obj: Any, keep: bool = True) -> None:
    """Strict JSON (NaN and Infinity refused: a reader must never meet them), never half-written."""
    try:
        text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n"
    except ValueError as e:
        raise FSAError(f"{path}: refusing to write a non-finite number (NaN or Infinity) into JSON ({e})") from e
    write_text(path, text, keep)



def write_with(path: PathLike, fn: Callable[..., object], *args: Any, keep: bool = True, **kw: Any) -> None:
    """`fn(*args, TMP, **kw)` fills a temporary file (torch.save, a figure's savefig...), then it becomes `path`."""
    with atomic(path, keep) as tmp:
        fn(*args, str(tmp), **kw)


def produce(path: PathLike, fn: Callable[..., object], *args: Any, **kw: Any) -> None:
    """`fn(*args, PATH, **kw)` for a tool that writes `path` itself, and files beside it (an ONNX graph
    with external data): inside a folder of ours being built (staging, a temporary folder)."""
    fn(*args, str(guard(path)), **kw)


def save_npz(path: PathLike, keep: bool = True, **arrays: Any) -> None:
    with atomic(path, keep) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def fill_npz(tmp: PathLike, **arrays: Any) -> None:
    """Arrays into a temporary file `atomic` handed out (the caller renames it with other work)."""
    with open(guard(tmp), "wb") as f:
        np.savez(f, **arrays)


def save_npy(path: PathLike, array: Any, keep: bool = True) -> None:
    with atomic(path, keep) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def open_append(path: PathLike, text: bool = True) -> IO[Any]:
    """A log we append to (checked with check_file(append=True) before the work); never through a link."""
    p = guard(path)
    fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC,
                 0o666)
    return os.fdopen(fd, "a" if text else "ab")


def write_proc(path: str, text: str) -> None:
    """A control file of this process under /proc/self (clear_refs): the kernel's, not a user's file."""
    if not path.startswith("/proc/self/"):
        raise FSAError(f"{path}: not a /proc/self control file")
    with open(path, "w") as f:
        f.write(text)


def mkdir(path: PathLike) -> Path:
    """A folder and its parents, following the umask like files do."""
    p = Path(path)
    if p.is_dir():
        return p
    guard(p)
    p.mkdir(parents=True, exist_ok=True, mode=0o777)
    return p


def unlink(path: PathLike, missing_ok: bool = True) -> None:
    """Remove one file or link (never a link's target)."""
    p = guard_parent(path)
    with contextlib.suppress(FileNotFoundError) if missing_ok else contextlib.nullcontext():
        os.unlink(p)
    record_removed(p)


def guard_parent(path: PathLike) -> Path:
    """guard for a name that may itself be a link or a special file we remove (only its folder counts)."""
    p = Path(path)
    art = artifact_holding(p)
    if art is not None:
        raise FSAError(f"{escape(str(p))}: inside the artefact folder {escape(str(art))}; refused")
    return p


def record_removed(p: Path) -> None:
    if p.name in _manifest(p.parent):
        _update_manifest(p.parent, {p.name: None})


def rmtree(path: PathLike) -> None:
    """Remove a folder this process made (a temp or staging folder); errors ignored."""
    p = guard_parent(path)
    shutil.rmtree(p, ignore_errors=True)


def replace(src: PathLike, dst: PathLike) -> None:
    guard(src)
    guard(dst)
    os.replace(src, dst)


def copy(src: PathLike, dst: PathLike, keep: bool = True) -> None:
    """Copy a file's bytes and times (never its mode bits' setuid and the like) atomically."""
    with atomic(dst, keep) as tmp:
        shutil.copyfile(src, tmp)
        shutil.copystat(src, tmp)


def link_or_copy(src: PathLike, dst: PathLike, symbolic: bool = False) -> None:
    """A hard (or `symbolic`) link of `src` at `dst` where the file system allows it, else a copy."""
    d = guard(dst)
    try:
        os.symlink(src, d) if symbolic else os.link(src, d)
    except OSError:
        shutil.copy2(src, d)


def copytree(src: PathLike, dst: PathLike, ignore: Iterable[str] = ()) -> None:
    guard(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*ignore) if ignore else None, dirs_exist_ok=True)


@contextlib.contextmanager
def temp_dir(prefix: str = "fsa-", where: PathLike | None = None) -> Iterator[Path]:
    """A private temporary folder (the system's temp area, or inside `where`), removed on exit and on a signal."""
    if where is not None:
        guard(Path(where) / "x")
    d = tempfile.mkdtemp(prefix=prefix, dir=where)
    try:
        yield Path(d)
    finally:
        with interrupts.shielded():
            shutil.rmtree(d, ignore_errors=True)


def mkdtemp(prefix: str = "fsa-", where: PathLike | None = None) -> Path:
    """A temporary folder the caller removes (rmtree): the system's temp area, or inside `where`."""
    if where is not None:
        guard(Path(where) / "x")
    return Path(tempfile.mkdtemp(prefix=prefix, dir=where))


def mkstemp_beside(path: Path, suffix: str = "") -> str:
    """A new empty temporary file of ours beside `path` (our marker and PID in its name), closed."""
    guard(path)
    fd, tmp = tempfile.mkstemp(prefix=tempnames.temp_prefix(path.stem), suffix=suffix, dir=path.parent)
    os.close(fd)
    return tmp


def open_write(path: PathLike) -> IO[bytes]:
    """A temporary file of ours (mkstemp_beside) opened to be filled; never through a link."""
    p = guard(path)
    fd = os.open(p, os.O_WRONLY | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC)
    return os.fdopen(fd, "wb")


def mkdtemp_beside(path: Path, kind: str = tempnames.MARKER) -> Path:
    guard(path.parent / "x")
    return Path(tempfile.mkdtemp(prefix=tempnames.temp_prefix(path.name, kind), dir=path.parent))


_SWEPT: set[str] = set()


def sweep_stale(folder: PathLike, once: bool = False) -> list[str]:
    """Remove what a killed run left in `folder`: names with our marker whose PID is not alive.

    Returns the names removed. Never follows a symlink; never raises. With `once`, a folder is
    swept at most once per process (segment writes three files per image).
    """
    removed: list[str] = []
    if once:
        key = os.path.realpath(folder)
        if key in _SWEPT:
            return removed
        _SWEPT.add(key)
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        pid = tempnames.is_ours(entry.name)
        if pid is None or tempnames.pid_alive(pid):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(entry.name)
    return removed


# ---------------------------------------------------------------- locks


@contextlib.contextmanager
def lock(path: PathLike, timeout: float = -1.0, what: str | None = None) -> Iterator[None]:
    """An exclusive lock on the file `path`, opened without following a link and never truncated
    (released by the kernel if the holder dies). `timeout` < 0 waits forever; FSAError after it."""
    p = Path(path)
    if os.name == "nt":  # no flock: filelock's msvcrt lock (its floor refuses links too)
        fl = FileLock(str(p), timeout=timeout)
        try:
            fl.acquire()
        except Timeout:
            raise FSAError(f"{what or p}: still locked by another fsa process after {timeout:g} s") from None
        try:
            yield
        finally:
            fl.release()
        return
    guard_parent(p) if not _inside_building(p) else None
    try:
        fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_NONBLOCK", 0), 0o666)
    except OSError as e:
        why = "a link (refused)" if e.errno in (40, 31) else (e.strerror or str(e))
        raise FSAError(f"{escape(str(p))}: cannot open the lock file ({why})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FSAError(f"{escape(str(p))}: the lock file is not a regular file; refused")
        end = time.monotonic() + timeout if timeout >= 0 else None
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if end is not None and time.monotonic() >= end:
                    raise FSAError(f"{what or escape(str(p))}: still locked by another fsa process after "
                                   f"{timeout:g} s") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock


# ---------------------------------------------------------------- --overwrite of a folder removes only what we wrote


def foreign_files(folder: Path, listed: set[str] | None = None) -> list[str]:
    """Files under `folder` (relative paths) that `listed` (default: its manifest) does not name; links
    and special files are always foreign."""
    names = set(_manifest(folder)) if listed is None else listed
    names |= {OUTPUTS_MANIFEST}
    foreign = []
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        for name in [*dirs, *files]:
            p = here / name
            rel = p.relative_to(folder).as_posix()
            if p.is_symlink() or (name in files and (rel not in names or not p.is_file())):
                foreign.append(rel)
        dirs[:] = [d for d in dirs if not (here / d).is_symlink()]
    return sorted(foreign)


def record_tree(folder: Path) -> None:
    """Every file under `folder` (a folder we just filled: a model repository) into one manifest at its
    top, by relative path: --overwrite later removes only these."""
    files: dict[str, str | None] = {}
    for root, _dirs, names in os.walk(folder):
        for name in names:
            p = Path(root, name)
            if name != OUTPUTS_MANIFEST and not p.is_symlink():
                files[p.relative_to(folder).as_posix()] = sha256(p)
    _update_manifest(folder, files)


# ---------------------------------------------------------------- folders built aside and moved into place


def _artifact_listed(root: Path) -> set[str]:
    """The names an artefact's meta.json accounts for (its files are all at the top)."""
    try:
        files = json.loads((root / META).read_text(encoding="utf-8")).get("files", {})
    except (OSError, ValueError, AttributeError, RecursionError):
        files = {}
    return {META, f".{META}.lock", *(files if isinstance(files, dict) else ())}


def check_target(final: PathLike, overwrite: bool = False, option: str = "--out") -> None:
    """`final` may not exist, or must be an artefact folder by schema (replaced only with `overwrite`,
    and only when every file in it is one its meta.json records: a user's file inside is named and
    refused). Never inside another artefact folder."""
    final = Path(final)
    shown = f"{option} {escape(str(final))}"
    art = artifact_holding(final)
    if art is not None:
        raise FSAError(f"{shown}: inside the artefact folder {escape(str(art))}; choose a folder of its own")
    if final.is_symlink() or final.exists():
        if final.is_symlink() or not final.is_dir() or not artifact_format(final):
            raise FSAError(f"{shown}: exists and is not an artefact folder (no fsa-deploy {META}); "
                           f"--overwrite replaces only an artefact folder: choose another {option}")
        if not overwrite:
            raise FSAError(f"{shown}: artefact folder exists; pass --overwrite to replace it")
        refuse_foreign(final, option, _artifact_listed(final))


def refuse_foreign(folder: Path, option: str, listed: set[str] | None = None) -> None:
    """--overwrite of a folder of ours: refused, naming them, when files we did not write are inside."""
    foreign = foreign_files(folder, listed)
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        names = escape(", ".join(foreign[:3]))
        raise FSAError(f"{option} {escape(str(folder))}: holds files fsa did not write ({names}"
                       f"{more}); --overwrite removes only its own files: move them first")


@contextlib.contextmanager
def staging_folder(final: PathLike, overwrite: bool = False,
                   check: Callable[[Path, bool], None] | None = None) -> Iterator[Path]:
    """Build a folder under a temporary name beside `final`, then move it into place.

    `check(final, overwrite)` decides what `final` may be (default: absent, or an artefact folder
    replaced with `overwrite`), before the work and again before the swap. The old folder is moved
    aside under a unique name of ours and removed only once the new one is in place.
    """
    final = Path(final)
    check = check or check_target
    check(final, overwrite)
    try:
        mkdir(final.parent)
    except OSError as e:
        raise FSAError(f"{escape(str(final.parent))}: cannot create the folder ({e.strerror or e})") from e
    sweep_stale(final.parent)  # what a killed export left (our marker, its PID gone)
    tmp: Path | None = None
    try:
        tmp = mkdtemp_beside(final)
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes 0700 folders; the result should look like any other
        with writing_into(tmp):
            yield tmp
        interrupts.check()
        if final.exists():
            check(final, overwrite)  # still replaceable (nobody swapped it while we worked)
            with interrupts.shielded():  # the swap must not stop half-way
                old = mkdtemp_beside(final, tempnames.OLD_MARKER)
                os.rmdir(old)  # a unique free name: the old folder goes there
                os.replace(final, old)
                try:
                    os.replace(tmp, final)
                except OSError:
                    os.replace(old, final)  # put the old one back: the user keeps a working folder
                    raise
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp is not None:
            with interrupts.shielded():
                shutil.rmtree(tmp, ignore_errors=True)

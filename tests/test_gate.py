"""The output gate by construction: no write or delete primitive outside runtime/gate.py.

The scan reads the source (AST) of every package folder and fails with the file and line of a
raw write: open for writing, Path.write_*/touch/mkdir/unlink/rename/replace/rmdir, os.replace /
rename / remove / unlink / mkdir / makedirs / rmdir / link / symlink, shutil.*, np.save*, an
image's or model's .save(...), torch.onnx.export, tempfile.*. Calls on the gate itself pass.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("fsa_deploy", "runtime", "export", "calibration", "validation", "models", "benchmarks")
GATE = REPO / "runtime" / "gate.py"
PATH_METHODS = {"write_text", "write_bytes", "touch", "mkdir", "unlink", "rmdir", "symlink_to", "hardlink_to"}
ONE_ARG_METHODS = {"rename", "replace"}  # Path.rename(target); str.replace has two, dataclasses.replace keywords
OS_WRITES = {"replace", "rename", "renames", "remove", "unlink", "mkdir", "makedirs", "rmdir", "removedirs",
             "symlink", "link", "mkfifo", "mknod", "truncate", "open"}
SHUTIL_READS = {"which", "disk_usage", "get_terminal_size", "ignore_patterns"}
TEMPFILE_READS = {"gettempdir", "gettempprefix"}


def _write_mode(call: ast.Call, at: int, strict: bool = True) -> bool:
    """The call's mode (argument `at` or mode=) writes; `strict`: a mode we cannot read counts as writing
    (open()); else only a literal one does (Path.open("w"), not Image.open(fp))."""
    mode = call.args[at] if len(call.args) > at else next((k.value for k in call.keywords if k.arg == "mode"), None)
    if mode is None:
        return False
    if not (isinstance(mode, ast.Constant) and isinstance(mode.value, str)):
        return strict
    return any(c in mode.value for c in "wax+")


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _memory_buffers(tree: ast.AST) -> set[str]:
    """Names bound to io.BytesIO(): an image saved there is encoded in memory, not written."""
    names = set()
    for n in ast.walk(tree):
        value, targets = None, []
        if isinstance(n, ast.Assign):
            value, targets = n.value, n.targets
        elif isinstance(n, ast.withitem):
            value, targets = n.context_expr, [n.optional_vars] if n.optional_vars else []
        if isinstance(value, ast.Call) and _dotted(value.func).endswith("BytesIO"):
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def _gate_names(tree: ast.AST) -> set[str]:
    """The names the gate module is bound to (`from fsa_deploy.runtime import gate as out`)."""
    names = {"gate"}
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and (n.module or "").endswith("runtime"):
            names |= {a.asname or a.name for a in n.names if a.name == "gate"}
    return names


def raw_writes(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    buffers, gates = _memory_buffers(tree), _gate_names(tree)
    found = []
    for n in ast.walk(tree):
        why = None
        if isinstance(n, ast.ImportFrom) and n.module in ("shutil", "tempfile", "os"):
            bad = [a.name for a in n.names if (n.module == "os" and a.name in OS_WRITES) or
                   (n.module == "shutil" and a.name not in SHUTIL_READS) or
                   (n.module == "tempfile" and a.name not in TEMPFILE_READS)]
            why = f"from {n.module} import {', '.join(bad)}" if bad else None
        elif isinstance(n, ast.Call):
            f, name = n.func, _dotted(n.func)
            head = name.split(".")[0]
            if head in gates:
                continue
            if isinstance(f, ast.Name) and f.id == "open" and _write_mode(n, 1):
                why = "open() for writing"
            elif isinstance(f, ast.Attribute):
                a = f.attr
                if (head == "os" and name.count(".") == 1 and a in OS_WRITES
                        or head == "shutil" and a not in SHUTIL_READS
                        or head == "tempfile" and a not in TEMPFILE_READS
                        or head in ("np", "numpy") and a.startswith("save") or name == "torch.onnx.export"):
                    why = name
                elif a in PATH_METHODS or a in ONE_ARG_METHODS and len(n.args) == 1 and not n.keywords:
                    why = f".{a}()"
                elif a == "open" and _write_mode(n, 0, strict=False):
                    why = ".open() for writing"
                elif a.startswith("save") and n.args and not (isinstance(n.args[0], ast.Name) and
                                                             n.args[0].id in buffers):
                    why = f".{a}(...)"
        if why:
            found.append(f"{path.relative_to(REPO)}:{n.lineno}: {why}")
    return found


def test_no_write_primitive_outside_the_gate():
    hits = []
    for root in ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            if path != GATE:
                hits += raw_writes(path)
    assert not hits, "write/delete primitives outside runtime/gate.py:\n" + "\n".join(hits)


def test_the_scan_sees_each_primitive(tmp_path):
    """The scan itself: each family it must catch, caught; in-memory and read-only calls pass."""
    src = tmp_path / "m.py"
    bad = ["open(p, 'w')", "open(p, mode='ab')", "p.write_text('x')", "p.mkdir()", "p.unlink()", "p.replace(q)",
           "os.replace(a, b)", "os.makedirs(a)", "shutil.rmtree(a)", "shutil.copy2(a, b)", "np.savez(f, x=1)",
           "img.save(p)", "onnx.save(m, p)", "torch.onnx.export(m, x, p)", "tempfile.mkdtemp()", "p.touch()"]
    good = ["open(p)", "open(p, 'rb')", "s.replace('a', 'b')", "dataclasses.replace(x, a=1)", "gate.write_text(p, 'x')",
            "shutil.which('x')", "tempfile.gettempdir()", "art.save()"]
    src.write_text("\n".join(bad + good) + "\nbuf = io.BytesIO()\nimg.save(buf, format='PNG')\n")
    REPO_ = globals()["REPO"]
    globals()["REPO"] = tmp_path
    try:
        hits = raw_writes(src)
    finally:
        globals()["REPO"] = REPO_
    assert [int(h.split(":")[1]) for h in hits] == list(range(1, len(bad) + 1)), hits


# ---------------------------------------------------------------- the families, as a user meets them

import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import pytest  # noqa: E402
from conftest import assert_one_line_error, photos  # noqa: E402
from PIL import Image  # noqa: E402

from fsa_deploy.contract import META, OUTPUTS_MANIFEST  # noqa: E402

CLASSES = ["--classes", "cat, dog", "--threads", "1"]


@dataclass
class Row:
    """argv with {art} (the shared tiny export), {tmp}, {photo}, {link_art} (an artefact whose meta.json is a
    symlink), {fifo}, {sock}, {user} (a user's file) filled in; env likewise; the error line must hold
    `needle` (rc 2), or rc 0 when needle is None."""

    argv: list[str]
    needle: str | None
    env: dict[str, str] = field(default_factory=dict)
    setup: str = ""  # a named preparation (below)


SEG = ["segment", "{photo}", "--artifact", "{art}", *CLASSES, "--no-cache"]
VAL = ["validate", "{art}", "--classes", "cat, dog"]
EVAL = ["eval", "folder", "--root", "{tmp}/data", "--artifact", "{art}"]
BENCH = ["bench", "--artifact", "{art}"]
LINT = ["lint", "{art}/image.onnx"]
INSIDE = "inside the artefact folder"
SPECIAL = "not a regular file"
ROWS: dict[str, Row] = {
    # a path inside an artefact folder, at any depth, through every option that writes
    "segment --out in artefact": Row([*SEG, "--out", "{art}/out"], INSIDE),
    "segment --out 2 deep": Row([*SEG, "--out", "{art}/a/b"], INSIDE),
    "segment --out in linked-meta artefact": Row([*SEG, "--out", "{link_art}/out"], INSIDE),
    "segment --cache-dir in artefact": Row([*SEG[:-1], "--cache-dir", "{art}/cache", "--out", "{tmp}/o"], INSIDE),
    "FSA_CACHE_DIR in artefact": Row([*SEG[:-1], "--out", "{tmp}/o"], INSIDE, {"FSA_CACHE_DIR": "{art}/c/d"}),
    "triton --out 2 deep": Row(["triton", "{art}", "--out", "{art}/a/repo"], INSIDE),
    "triton --out 2 deep --overwrite": Row(["triton", "{art}", "--out", "{art}/a/repo", "--overwrite"], INSIDE),
    "serve --log-file meta.json": Row(["serve", "{art}", "--log-file", "{art}/meta.json"], "meta.json"),
    "serve --log-file in artefact": Row(["serve", "{art}", "--log-file", "{art}/logs/t.log"], INSIDE),
    "eval --work in artefact": Row([*EVAL, "--json", "{tmp}/r.json", "--work", "{art}/w"], INSIDE),
    "eval --json in artefact": Row([*EVAL, "--json", "{art}/x/r.json"], INSIDE),
    "bench --work in artefact": Row([*BENCH, "--work", "{art}/w/x"], INSIDE),
    "validate --md in artefact": Row([*VAL, "--md", "{art}/r/r.md", "--overwrite"], INSIDE),
    "lint --json in artefact": Row([*LINT, "--json", "{art}/l.json", "--overwrite"], INSIDE),
    "export --out in artefact": Row(["export", "--model", "tiny", "--random-init", "--proxy", "tiny-dino", "--crop",
                                     "112", "--out", "{art}/a/new"], INSIDE),
    "dump --out in artefact": Row(["dump", "--image", "{photo}", "--model", "tiny", "--random-init", "--proxy",
                                   "tiny-dino", "--crop", "112", "--out", "{art}/x/d.npz"], INSIDE),
    # never over a device node, a FIFO or a socket, --overwrite or not
    "validate --json /dev/null --overwrite": Row([*VAL, "--json", "/dev/null", "--overwrite"], "a device"),
    "validate --json FIFO --overwrite": Row([*VAL, "--json", "{fifo}", "--overwrite"], "a FIFO"),
    "eval --md FIFO": Row([*EVAL, "--json", "{tmp}/r.json", "--md", "{fifo}"], "a FIFO"),
    "bench --json socket --overwrite": Row([*BENCH, "--json", "{sock}", "--overwrite"], "a socket"),
    "lint --json /dev/null --overwrite": Row([*LINT, "--json", "/dev/null", "--overwrite"], "a device"),
    "segment result is a FIFO --overwrite": Row([*SEG, "--out", "{tmp}/pics", "--overwrite"], "a FIFO",
                                                setup="fifo result"),
    # two outputs of one run on one file
    "validate --json = --md": Row([*VAL, "--json", "{tmp}/r", "--md", "{tmp}/r"], "the same file"),
    "eval --json = --md": Row([*EVAL, "--json", "{tmp}/r", "--md", "{tmp}/./r"], "the same file"),
    "eval --json = --plot": Row([*EVAL, "--json", "{tmp}/r.png", "--plot", "{tmp}/x/../r.png"], "the same file"),
    "bench --json = --md": Row([*BENCH, "--json", "{tmp}/r", "--md", "{tmp}/r"], "the same file"),
    "bench --md = --plot via link": Row([*BENCH, "--md", "{tmp}/r.md", "--plot", "{tmp}/link.md", "--overwrite"],
                                        "the same file",
                                        setup="link to r.md"),
    # an existing file fsa cannot show it wrote
    "segment over a user's photo.png": Row([*SEG, "--out", "{tmp}/pics"], "fsa did not write", setup="user png"),
    "segment over an edited result": Row([*SEG, "--out", "{tmp}/pics"], "fsa did not write", setup="edited result"),
    "segment re-run replaces its own": Row([*SEG, "--out", "{tmp}/pics"], None, setup="own result"),
    "segment --overwrite over a user's": Row([*SEG, "--out", "{tmp}/pics", "--overwrite"], None, setup="user png"),
    "validate --json over a user's": Row([*VAL, "--json", "{user}"], "fsa did not write"),
    "serve --log-file a user's file": Row(["serve", "{art}", "--log-file", "{user}"], "fsa did not write"),
    "triton --overwrite, user file inside": Row(["triton", "{art}", "--out", "{tmp}/repo", "--overwrite"],
                                               "fsa_text/1/notes.txt", setup="repo with user file"),
    "triton into a user's folder": Row(["triton", "{art}", "--out", "{tmp}/mine", "--overwrite"],
                                       "did not write", setup="user folder"),
    "export --overwrite, user file inside": Row(["export", "--model", "tiny", "--random-init", "--proxy",
                                                 "tiny-dino", "--crop", "112", "--out", "{tmp}/art", "--overwrite"],
                                                "mine.txt", setup="artefact with user file"),
    # FSA_* variables: each checked once, before any work
    "FSA_LOCK_TIMEOUT=-1": Row(["doctor"], "FSA_LOCK_TIMEOUT", {"FSA_LOCK_TIMEOUT": "-1"}),
    "FSA_LOCK_TIMEOUT=nan": Row(["doctor"], "FSA_LOCK_TIMEOUT", {"FSA_LOCK_TIMEOUT": "nan"}),
    "FSA_LOCK_TIMEOUT=inf": Row(["doctor"], "FSA_LOCK_TIMEOUT", {"FSA_LOCK_TIMEOUT": "inf"}),
    "FSA_LOCK_TIMEOUT=junk": Row([*SEG, "--out", "{tmp}/o"], "FSA_LOCK_TIMEOUT", {"FSA_LOCK_TIMEOUT": "soon"}),
    "FSA_MAX_PIXELS=0": Row([*SEG, "--out", "{tmp}/o"], "FSA_MAX_PIXELS", {"FSA_MAX_PIXELS": "0"}),
    "FSA_CACHE_DIR a file": Row([*SEG[:-1], "--out", "{tmp}/o"], "FSA_CACHE_DIR", {"FSA_CACHE_DIR": "{user}"}),
}


def _fill(text: str, values: dict[str, str]) -> str:
    for k, v in values.items():
        text = text.replace("{" + k + "}", v)
    return text


def _digests(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p)] = "-> " + os.readlink(p)
        elif p.is_file():
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif not p.is_dir():
            out[str(p)] = "special"
    return out


def _prepare(name: str, tmp: Path, values: dict[str, str], run) -> None:
    pics = tmp / "pics"
    stem = Path(values["photo"]).stem
    if name in ("user png", "edited result", "own result", "fifo result"):
        pics.mkdir()
        if name == "fifo result":
            os.mkfifo(pics / f"{stem}.png")
        elif name == "user png":
            Image.new("RGB", (8, 8), (1, 2, 3)).save(pics / f"{stem}.png")
        else:
            assert run(*_argv(SEG, values), "--out", str(pics)).returncode == 0
            if name == "edited result":
                (pics / f"{stem}.json").write_text("{}\n")
    elif name == "link to r.md":
        (tmp / "r.md").write_text("mine\n")
        (tmp / "link.md").symlink_to(tmp / "r.md")
    elif name == "repo with user file":
        assert run("triton", values["art"], "--out", str(tmp / "repo")).returncode == 0
        (tmp / "repo" / "fsa_text" / "1" / "notes.txt").write_text("mine\n")
    elif name == "user folder":
        (tmp / "mine" / "fsa_text").mkdir(parents=True)
        (tmp / "mine" / "fsa_text" / "config.pbtxt").write_text("mine\n")
    elif name == "artefact with user file":
        shutil.copytree(values["art"], tmp / "art")
        (tmp / "art" / "mine.txt").write_text("mine\n")


def _argv(argv: list[str], values: dict[str, str]) -> list[str]:
    return [_fill(a, values) for a in argv]


@pytest.mark.parametrize("name", list(ROWS))
def test_gate_matrix(name, tiny_artifact, tmp_path, run_here, monkeypatch):
    """Each family refused (one line, exit 2, nothing outside the run's own outputs touched) or handled."""
    row = ROWS[name]
    art = str(tiny_artifact.root)
    link_art = tmp_path / "link-art"
    link_art.mkdir()
    (link_art / META).symlink_to(tiny_artifact.root / META)
    user = tmp_path / "user.txt"
    user.write_text("the user's own file\n")
    os.mkfifo(tmp_path / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "masks").mkdir()
    values = {"art": art, "tmp": str(tmp_path), "photo": photos()[0], "link_art": str(link_art),
              "fifo": str(tmp_path / "fifo"), "sock": str(tmp_path / "sock"), "user": str(user)}
    try:
        _prepare(row.setup, tmp_path, values, run_here)
        before, art_before = _digests(tmp_path), _digests(Path(art))
        for k, v in row.env.items():
            monkeypatch.setenv(k, _fill(v, values))
        t0 = time.monotonic()
        proc = run_here(*_argv(row.argv, values))
    finally:
        sock.close()
    assert "Traceback" not in proc.stderr, proc.stderr
    assert _digests(Path(art)) == art_before, "the artefact folder changed"
    if row.needle is None:
        assert proc.returncode == 0, proc.stderr
        return
    assert_one_line_error(proc, row.needle)
    assert time.monotonic() - t0 < 30, "refused before the work, not after it"
    after = _digests(tmp_path)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert not {k for k in changed if not k.endswith(OUTPUTS_MANIFEST)}, f"touched: {sorted(changed)}"


def test_a_linked_lock_file_is_refused_and_its_target_kept(tiny_artifact, tmp_path):
    """filelock < 3.20.3 truncates what .meta.json.lock links to; the gate opens it without following links."""
    from fsa_deploy.errors import FSAError
    from fsa_deploy.runtime.artifact import Artifact

    art = tmp_path / "art"
    shutil.copytree(tiny_artifact.root, art)
    user = tmp_path / "notes.txt"
    user.write_text("precious\n")
    (art / f".{META}.lock").symlink_to(user)
    with pytest.raises(FSAError, match="lock file"):
        Artifact.load(art).save()
    assert user.read_text() == "precious\n"


def test_folders_we_create_follow_the_umask(tmp_path):
    """A staged folder (export's, triton's) is renamed from mkdtemp's 0700: it must look like any other folder."""
    from fsa_deploy.runtime import gate

    with gate.staging_folder(tmp_path / "made", check=lambda *_: None) as work:
        gate.write_text(work / "f.txt", "x", keep=False)
    mode = (tmp_path / "made").stat().st_mode & 0o777
    assert mode == 0o777 & ~gate.umask(), oct(mode)
    gate.mkdir(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").stat().st_mode & 0o777 == 0o777 & ~gate.umask()


def test_bench_work_keys_copies_by_artefact_content(tiny_artifact, tmp_path):
    """Two artefacts with one base name never share a derived copy in bench's --work (a stale calibration)."""
    from fsa_deploy.runtime.artifact import Artifact
    from fsa_deploy.validation.bench.prepare import writable_copy

    a, b = tmp_path / "one" / "tiny", tmp_path / "two" / "tiny"
    shutil.copytree(tiny_artifact.root, a)
    shutil.copytree(tiny_artifact.root, b)
    art = Artifact.load(b)
    art.meta["note"] = "another export"
    art.save()
    work = tmp_path / "work"
    ca, cb = writable_copy(str(a), work), writable_copy(str(b), work)
    assert ca != cb and ca.parent == cb.parent == work / "derived"
    assert writable_copy(str(a), work) == ca  # the same artefact: its copy is reused


CHILD = """
import subprocess, sys, time
from fsa_deploy.runtime.serve.server import die_with_parent
p = subprocess.Popen(["sleep", "60"], preexec_fn=die_with_parent, start_new_session=True)
print(p.pid, flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_a_server_child_dies_with_a_killed_fsa():
    """What tritonserver gets: SIGKILL the parent, the child (its own session, as tritonserver) goes within 1 s."""
    parent = subprocess.Popen([sys.executable, "-c", CHILD], cwd=REPO, stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{child}/stat") as f:
            if f.read().split(") ")[-1].startswith("Z"):  # reaped by init soon: gone as a server
                break
        time.sleep(0.05)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the child outlived its killed parent")
    assert time.monotonic() < deadline


def _serve(artifact: Path, tmp: Path) -> tuple[subprocess.Popen, list[int]]:
    from benchmarks.ports import free_ports

    ports = free_ports(3)
    proc = subprocess.Popen([sys.executable, "-m", "fsa_deploy", "serve", str(artifact), "--backend", "onnx",
                             "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port",
                             str(ports[2]), "--cache-dir", str(tmp / "cache"), "--log-file", "t.log"],
                            cwd=tmp, stderr=subprocess.PIPE, text=True)
    return proc, ports


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ")[-1].startswith("Z"):
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


def _serve_temp_folders() -> set[str]:
    import tempfile

    return {p.name for p in Path(tempfile.gettempdir()).glob(".fsa-serve.fsa-tmp-*")}


def test_serve_killed_or_stopped_in_any_phase_leaves_nothing(tiny_artifact, tmp_path):
    """SIGKILL of a ready `fsa serve`: tritonserver goes (parent-death signal) and frees its port within 10 s;
    SIGTERM during preparation: exit within 10 s, no server, no temporary repository; a relative --log-file
    lands in the user's folder (the cwd), marked as ours."""
    from fsa_deploy.errors import FSAError
    from fsa_deploy.runtime.serve.env import find_serve_env
    from fsa_deploy.runtime.serve.server import port_free

    try:
        find_serve_env()
    except FSAError as e:
        from conftest import missing

        missing(f"no serve environment: {e}")
    temps = _serve_temp_folders()
    early, early_ports = _serve(tiny_artifact.root, tmp_path)
    time.sleep(1.5)  # importing, the artefact, the repository or tritonserver's start
    t0 = time.monotonic()
    early.send_signal(signal.SIGTERM)
    early.wait(timeout=10)
    assert time.monotonic() - t0 < 10, "fsa serve did not stop within 10 s of SIGTERM"
    assert all(port_free("127.0.0.1", p) for p in early_ports)
    proc, ports = _serve(tiny_artifact.root, tmp_path)
    line = proc.stderr.readline()
    assert "ready" in line, line + proc.stderr.read()
    triton = int(line.split("tritonserver pid ")[1].split(";")[0])
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _gone(triton, 10), "tritonserver outlived a SIGKILLed fsa serve"
    deadline = time.monotonic() + 10
    while not port_free("127.0.0.1", ports[0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert port_free("127.0.0.1", ports[0])
    assert (tmp_path / "t.log").is_file()  # the user's cwd, not the temporary repository
    # the killed run never reached its cleanup: its temporary repository (our marker, a dead PID) is what
    # the next serve sweeps first
    import tempfile

    from fsa_deploy.runtime import gate

    left = _serve_temp_folders() - temps
    assert len(left) <= 1
    gate.sweep_stale(tempfile.gettempdir())
    assert not _serve_temp_folders() & left


@pytest.mark.parametrize("kind", ["fifo", "device", "folder", "pipe"])
def test_class_files_regular_or_a_process_substitution(kind, tiny_artifact, tmp_path, run_here):
    """One reader for class files: a named FIFO (it would block), a device, a folder refused; the pipe of
    `<(printf ...)` (/dev/fd/N) read like a file."""
    path = {"fifo": tmp_path / "fifo", "device": Path("/dev/zero"), "folder": tmp_path}.get(kind)
    r = w = None
    if kind == "fifo":
        os.mkfifo(path)
    if kind == "pipe":
        r, w = os.pipe()
        os.write(w, "\ufeffbackground\ncat; kitty\n".encode())
        os.close(w)
        path = Path(f"/dev/fd/{r}")
    try:
        proc = run_here("segment", photos()[0], "--artifact", tiny_artifact.root, "--out", tmp_path / "o",
                        "--no-cache", "--threads", "1", "--classes-file", path)
    finally:
        if r is not None:
            os.close(r)
    if kind == "pipe":
        assert proc.returncode == 0, proc.stderr
        summary = json.loads((tmp_path / "o" / f"{Path(photos()[0]).stem}.json").read_text())
        assert [c.split(";")[0] for c in summary["vocabulary"]] == ["background", "cat"], summary["vocabulary"]
    else:
        assert_one_line_error(proc, "--classes-file", "not a regular file")

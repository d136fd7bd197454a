"""SIGTERM and SIGINT at several moments of `fsa export`, `fsa segment` and `fsa validate`.

The real script runs in a subprocess; the signal comes once its handlers are installed (the caught
signal mask in /proc, so a death by the signal before that can never pass), at a fixed delay or a
moment the command itself announces (a progress line). Each run must end with 143 (SIGTERM) or 130 (SIGINT) unless
it had already finished, leave no hidden temporary file or folder beside its target, and leave
either nothing or a complete result (an artefact that loads and verifies; all three files of an
image).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, photos

from fsa_deploy.contract import OUTPUTS_MANIFEST
from fsa_deploy.runtime.artifact import Artifact

EXIT = {signal.SIGTERM: 143, signal.SIGINT: 130}
READY_S = 60  # fsa installs its handlers before importing the verb: well under a second
pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads SigCgt from /proc (Linux)")


def handlers_installed(pid: int) -> bool:
    """Whether `fsa`'s handlers are in place: SIGTERM is in the process's caught-signal mask.

    Python catches SIGINT from its start but never SIGTERM; `interrupts.handling()` installs
    SIGINT's handler, then SIGTERM's, so a caught SIGTERM means both are fsa's.
    """
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # the process is gone
        return False
    mask = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("SigCgt:")), 16)
    return bool(mask >> (signal.SIGTERM - 1) & 1)


def run_and_signal(argv: list[str], sig: int, after: str | None, delay: float, timeout: float = 300):
    """Start `fsa ARGV`; once its handlers are installed and stdout/stderr shows `after` (if given),
    wait `delay` s and send `sig`.

    Returns (exit code, output, whether the signal was sent before the process ended).
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "fsa_deploy", *argv], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen, lines = threading.Event(), []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if after is not None and after in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    start = time.monotonic()
    # a signal before the handler would kill the process outright (-15, no cleanup, no message):
    # that moment is Python's own start-up, not fsa's, so every moment here comes after it
    ready = False
    while not ready and proc.poll() is None and time.monotonic() - start < READY_S:
        ready = handlers_installed(proc.pid)
        time.sleep(0.01)
    if not ready:  # the verb's imports alone take seconds: its handler cannot go unseen
        proc.kill()
        proc.wait()
        pytest.fail(f"fsa {argv[0]} installed no SIGTERM handler (exit {proc.returncode})")
    if after is None:
        seen.set()
    while not seen.is_set() and proc.poll() is None and time.monotonic() - start < timeout:
        seen.wait(0.05)
    time.sleep(delay)
    sent = proc.poll() is None
    if sent:
        proc.send_signal(sig)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    reader.join(timeout=10)
    return code, "".join(lines), sent


def hidden(folder: Path) -> list[Path]:
    """Hidden names left (our temporary files); the outputs' manifest is not one."""
    return sorted(p for p in folder.rglob(".*") if p.name != OUTPUTS_MANIFEST)


def assert_interrupted(code: int, out: str, sig: int, sent: bool, verb: str) -> None:
    """The handler ran: exit 130 / 143 (never -2 / -15, a death by the signal) and fsa's own line."""
    assert sent, f"the command ended (exit {code}) before the signal: move the moment earlier\n{out[-3000:]}"
    assert code == EXIT[sig], f"exit {code}, expected {EXIT[sig]} after {signal.Signals(sig).name}:\n{out[-3000:]}"
    assert "Traceback" not in out, out[-3000:]
    assert f"fsa {verb}: interrupted" in out, out[-3000:]


# (signal, progress line to wait for (None: the start), seconds after it)
EXPORT_MOMENTS = [
    (signal.SIGTERM, None, 0.5),  # while Python imports torch
    (signal.SIGINT, None, 2.0),
    (signal.SIGTERM, "exporting image.onnx", 1.5),  # inside torch.onnx.export: raw.onnx in the staging folder
    (signal.SIGINT, "writing meta.json", 0.0),  # late: image.onnx and text.onnx written, around the rename
]


@pytest.mark.parametrize("sig,after,delay", EXPORT_MOMENTS,
                         ids=[f"{signal.Signals(s).name}-{a or 'start'}+{d}s" for s, a, d in EXPORT_MOMENTS])
def test_export_interrupted_leaves_nothing(tmp_path, sig, after, delay):
    target = tmp_path / "art"
    argv = ["export", "--out", str(target), "--model", "tiny", "--proxy", "tiny-dino", "--crop", "112",
            "--random-init", "--no-lint"]
    code, out, sent = run_and_signal(argv, sig, after, delay)
    assert_interrupted(code, out, sig, sent, "export")
    assert hidden(tmp_path) == [], f"temporary files left: {hidden(tmp_path)}"
    if target.exists():  # the signal came after the rename: the artefact is whole
        Artifact.load(target).verify_all()
    else:
        assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def many_images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("many")
    for i in range(40):
        shutil.copy(photos()[i % len(photos())], folder / f"p{i:02d}{Path(photos()[i % len(photos())]).suffix}")
    return folder


SEGMENT_MOMENTS = [
    (signal.SIGTERM, None, 0.5),
    (signal.SIGINT, "backend:", 0.0),  # model loaded, class embeddings being computed
    (signal.SIGTERM, "p02_overlay.png", 0.0),  # while images are written
    (signal.SIGINT, "p05_overlay.png", 0.05),
]


@pytest.mark.parametrize("sig,after,delay", SEGMENT_MOMENTS,
                         ids=[f"{signal.Signals(s).name}-{a or 'start'}+{d}s" for s, a, d in SEGMENT_MOMENTS])
def test_segment_interrupted_leaves_whole_results(tiny_artifact, many_images, tmp_path, sig, after, delay):
    out = tmp_path / "out"
    argv = ["segment", str(many_images), "--artifact", str(tiny_artifact.root), "--out", str(out), "--classes",
            "cat, dog", "--no-cache", "--threads", "1"]
    code, log, sent = run_and_signal(argv, sig, after, delay)
    assert_interrupted(code, log, sig, sent, "segment")
    assert hidden(tmp_path) == [], f"temporary files left: {hidden(tmp_path)}"
    if out.exists():
        names = {p.name for p in out.iterdir()} - {OUTPUTS_MANIFEST}
        stems = {n.removesuffix("_overlay.png").removesuffix(".png").removesuffix(".json") for n in names}
        for stem in stems:  # every image: all three files or none
            assert {f"{stem}.png", f"{stem}_overlay.png", f"{stem}.json"} <= names, (stem, sorted(names))
        if after and "overlay" in after:
            assert 3 <= len(stems) < 40, f"{len(stems)} images written"


def test_validate_interrupted_writes_no_report(tiny_artifact, many_images, tmp_path):
    report = tmp_path / "r.json"
    argv = ["validate", str(tiny_artifact.root), "--classes", "cat, dog", "--images", str(many_images), "--json",
            str(report)]
    code, out, sent = run_and_signal(argv, signal.SIGTERM, "[3/40]", 0.0)
    assert_interrupted(code, out, signal.SIGTERM, sent, "validate")
    assert hidden(tmp_path) == [] and not report.exists()


def test_a_swallowed_signal_still_stops_the_commit(tmp_path):
    """A library's bare `except:` eats the Interrupted; the signal is recorded and no file is published."""
    from fsa_deploy import interrupts
    from fsa_deploy.runtime.gate import atomic, staging_folder

    with interrupts.handling():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler raises in here
        except KeyboardInterrupt:
            pass  # swallowed, as onnxslim's `except:` around `import onnxruntime` would
        assert interrupts.exit_code() == 143
        with pytest.raises(interrupts.Interrupted), atomic(tmp_path / "r.json") as tmp:
            tmp.write_text("{}")
        with pytest.raises(interrupts.Interrupted), staging_folder(tmp_path / "art") as work:
            (work / "meta.json").write_text("{}")
    assert list(tmp_path.iterdir()) == []
    assert interrupts.received() is None  # forgotten: a later run in this process is not stopped
    assert signal.getsignal(signal.SIGTERM) is not interrupts._handler  # the previous handler is back

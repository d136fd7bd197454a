"""`fsa serve`: the bundled tritonserver on a local model repository, until SIGINT/SIGTERM.

tritonserver runs in its own session (process group): its python-backend stubs are its
children and stay in that group, so after it exits the group is swept (polled, then SIGKILLed)
and nothing is left, even after an exit-timeout or a crash. Its log goes to a file (a closed
stdout pipe kills it by SIGPIPE), its shared-memory regions get our own prefix, swept after exit,
and its cwd is the repository (the stub puts its cwd first on sys.path).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path

from fsa_deploy.contract import SEGMENT_MODEL
from fsa_deploy.errors import FSAError
from fsa_deploy.interrupts import Interrupted, shielded
from fsa_deploy.log import logger
from fsa_deploy.runtime import gate, tempnames
from fsa_deploy.runtime.artifact import Artifact
from fsa_deploy.runtime.serve.env import ServeEnv, find_serve_env
from fsa_deploy.runtime.serve.model_config import model_config_pb2
from fsa_deploy.runtime.serve.repository import RepoOptions, write_repository
from fsa_deploy.runtime.text import usable_cache_dir

LOG = logger("runtime")

SHM = Path("/dev/shm")
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> None:
    """In the child before exec: SIGTERM when fsa dies, even by SIGKILL (Linux prctl; elsewhere nothing),
    so a killed `fsa serve` never leaves tritonserver serving on its ports."""
    if not sys.platform.startswith("linux"):
        return

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
READY_TIMEOUT_S = 120.0


def port_free(host: str, port: int) -> bool:
    """Bind test with SO_REUSEADDR, as Triton binds (a TIME_WAIT socket is not "in use")."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def sweep_group(pgid: int, grace_s: float = 5.0) -> None:
    """Wait until no process of the group is left; SIGKILL the group after `grace_s`."""
    deadline = time.monotonic() + grace_s
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            return
        if time.monotonic() > deadline:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + grace_s
        time.sleep(0.05)


def log_errors(log: Path, n: int = 3) -> str:
    """The last error lines of tritonserver's log (E-prefixed lines, else the last lines)."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    errs = [ln for ln in lines if ln.startswith("E") or "error" in ln.lower()]
    return " | ".join((errs or lines)[-n:])[:600]


@dataclass
class Server:
    """One tritonserver for one artefact; `start()` returns once every model is ready."""

    artifact: Path
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    options: RepoOptions = field(default_factory=lambda: RepoOptions(target="local"))
    venv: Path | None = None
    log_file: Path | None = None
    overwrite_log: bool = False  # append to a --log-file that fsa did not write (tritonserver appends)
    log_checked: bool = field(default=False, init=False)
    proc: subprocess.Popen | None = field(default=None, init=False)
    repo: Path | None = field(default=None, init=False)

    @property
    def shm_prefix(self) -> str:
        return f"fsa_serve_{os.getpid()}_{self.http_port}_"

    def prepare(self) -> ServeEnv:
        """Every check that can fail on the user's input, before anything starts (exit 2)."""
        if self.log_file is not None:  # the user's cwd, not the temporary repository tritonserver runs in
            self.log_file = gate.check_file(Path(os.path.abspath(self.log_file)), "--log-file", self.overwrite_log,
                                            action="append to")
            self.log_checked = True
        art = Artifact.load(self.artifact)
        model_config_pb2("fsa serve")  # the repository's configs need the serve extra: say so before anything
        for name, port in (("--http-port", self.http_port), ("--grpc-port", self.grpc_port),
                           ("--metrics-port", self.metrics_port)):
            if not 0 < port < 65536:
                raise FSAError(f"{name} {port}: not a port number")
            if not port_free(self.host, port):
                raise FSAError(f"{name} {port}: {self.host}:{port} is in use (or {self.host} is not this machine)")
        if len({self.http_port, self.grpc_port, self.metrics_port}) < 3:
            raise FSAError("--http-port, --grpc-port and --metrics-port must differ")
        env = find_serve_env(self.venv)
        # fsa segment's cache folder unless told: entries outlive a restart; made (or refused) now
        cache = usable_cache_dir(self.options.cache_dir or None).resolve()
        self.options = replace(self.options, cache_dir=str(cache))
        # our marker and PID in its name: what a SIGKILLed serve left is swept by the next one
        gate.sweep_stale(tempfile.gettempdir())
        self.repo = gate.mkdtemp(tempnames.temp_prefix("fsa-serve"))
        write_repository(art, self.repo, self.options)
        # the serve env must import the runtime copy (numpy < 2, no torch): say so now, not after the load
        probe = ("import fsa_deploy.runtime.segmenter, fsa_deploy.runtime.backends.select, "
                 "fsa_deploy.runtime.serve.bls")
        run_env = env.process_env()
        run_env["PYTHONPATH"] = str(self.repo / SEGMENT_MODEL / "1")
        out = subprocess.run([str(env.python), "-c", probe], capture_output=True, text=True, env=run_env,
                             cwd=self.repo, timeout=120)
        if out.returncode != 0:
            last = (out.stderr.strip().splitlines() or ["?"])[-1]
            self.cleanup()
            raise FSAError(f"the serve environment {env.venv} cannot import the runtime: {last}")
        return env

    def command(self, env: ServeEnv, log: Path) -> list[str]:
        instances = self.options.segment_instances + self.options.image_instances + 1
        return [str(env.tritonserver), "--model-repository", str(self.repo),
                "--backend-directory", str(env.backends), "--cache-directory", str(env.dist / "caches"),
                "--http-address", self.host, "--http-port", str(self.http_port),
                "--grpc-address", self.host, "--grpc-port", str(self.grpc_port),
                "--metrics-address", self.host, "--metrics-port", str(self.metrics_port),
                # python instances unload one after another, ~1.2 s each
                "--exit-timeout-secs", str(int(3 + 1.5 * instances)),
                "--strict-readiness", "true", "--disable-auto-complete-config",
                "--log-file", str(log), "--log-info", "true",
                "--backend-config", f"python,shm-region-prefix-name={self.shm_prefix}"]

    def start(self) -> None:
        env = self.prepare()
        assert self.repo is not None
        log = self.log_file or self.repo / "tritonserver.log"
        self.log_file = log
        self.proc = subprocess.Popen(self.command(env, log), env=env.process_env(), cwd=self.repo,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=die_with_parent)
        url = f"http://{self.host}:{self.http_port}/v2/health/ready"
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                why = log_errors(log)
                self.stop()
                raise FSAError(f"tritonserver stopped before it was ready: {why}")
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise FSAError(f"tritonserver not ready after {READY_TIMEOUT_S:.0f} s")

    def stop(self) -> int | None:
        """SIGTERM (graceful), wait, sweep the group and shared memory; the exit code."""
        rc = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            while rc is None:
                try:
                    rc = self.proc.wait()
                except KeyboardInterrupt:
                    continue
            sweep_group(self.proc.pid)
        self.cleanup()
        return rc

    def cleanup(self) -> None:
        for leftover in SHM.glob(f"{self.shm_prefix}*"):
            gate.unlink(leftover)
        if self.repo is not None:
            if self.log_file is not None and self.log_file.parent == self.repo:
                self.log_file = None
            gate.rmtree(self.repo)
            self.repo = None


def serve(server: Server) -> int:
    """Run until SIGINT/SIGTERM; 0 on a requested stop, 1 when tritonserver died by itself."""
    stop = {"asked": False}

    def on_signal(signum: int, _frame: object) -> None:
        stop["asked"] = True
        if server.proc is None:  # still preparing (the repository, the import probe): stop that now
            raise Interrupted(signum)
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGTERM)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        t0 = time.monotonic()
        try:
            server.start()
        except FSAError:
            if not stop["asked"]:
                raise
            LOG.info("fsa serve: stopped before it was ready")
            return 0
        assert server.proc is not None
        LOG.info(f"fsa serve: ready in {time.monotonic() - t0:.1f} s: http {server.host}:{server.http_port}, "
                 f"grpc {server.host}:{server.grpc_port}, metrics {server.host}:{server.metrics_port}; "
                 f"tritonserver pid {server.proc.pid}; Ctrl-C stops")
        while server.proc.poll() is None:
            try:
                server.proc.wait()
            except KeyboardInterrupt:
                stop["asked"] = True
        why = "" if stop["asked"] else log_errors(server.log_file) if server.log_file else ""
        rc = server.stop()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        with shielded():
            if server.proc is not None and server.proc.poll() is None:
                server.stop()
            server.cleanup()  # the temporary repository, whatever phase we stopped in
            if server.log_checked and server.log_file is not None and server.log_file.is_file():
                gate.record(server.log_file)  # ours now: a later run may append to it
    if stop["asked"]:
        LOG.info("fsa serve: stopped")
        return 0  # rc 1 from Triton then only means its exit timeout expired: the group is swept anyway
    LOG.error(f"fsa serve: tritonserver exited with {rc}: {why}")
    return 1

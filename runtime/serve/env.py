"""The serving environment: a venv with PyTriton's wheel (its tritonserver binary and python
backend) and numpy < 2, kept apart from the project env.

Why apart: the python backend stub that ships in the wheel returns empty tensors with any
numpy 2.x (triton-inference-server/pytriton#93), while the export chain (onnx, ml-dtypes) wants
numpy 2. The stub embeds libpython and takes its interpreter from two places, both set here:
libpython from the dynamic loader (LD_LIBRARY_PATH = the venv interpreter's LIBDIR, else a
system libpython of another patch level is loaded) and site-packages from the first `python3`
on PATH (the venv's bin first, else another numpy is taken silently).

    python -m fsa_deploy.runtime.serve.env [VENV]   # places the stub, prints what it found
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from fsa_deploy.errors import FSAError
from fsa_deploy.runtime import environ, gate

ENV_VAR = "FSA_SERVE_VENV"
DEFAULT_NAME = ".venv-serve"
STUB = "triton_python_backend_stub"

# asked of the serve venv's own interpreter; pytriton is located, never imported (its
# __init__ imports gevent, which the lean env does not have)
_PROBE = """import importlib.util as u, sys, sysconfig
s = u.find_spec('pytriton')
print(s.submodule_search_locations[0] if s else '')
print('%d.%d' % sys.version_info[:2])
print(sysconfig.get_config_var('LIBDIR') or '')
import numpy; print(numpy.__version__)
"""


@dataclass(frozen=True)
class ServeEnv:
    """Where tritonserver and its python backend are, and how the stub must be started."""

    venv: Path
    dist: Path  # site-packages/pytriton/tritonserver
    python_version: str
    libdir: str
    numpy: str

    @property
    def tritonserver(self) -> Path:
        return self.dist / "bin" / "tritonserver"

    @property
    def backends(self) -> Path:
        return self.dist / "backends"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def process_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment tritonserver runs in: the stub's libpython and site-packages pinned."""
        env = dict(os.environ if base is None else base)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (self.libdir, env.get("LD_LIBRARY_PATH")) if p)
        env["PATH"] = os.pathsep.join(p for p in (str(self.venv / "bin"), env.get("PATH")) if p)
        for var in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
            env.pop(var, None)
        return env


def default_venv() -> Path:
    """$FSA_SERVE_VENV, else <source checkout>/.venv-serve (what `make setup` creates)."""
    if environ.is_set(ENV_VAR):
        return environ.value(ENV_VAR)
    return Path(__file__).resolve().parents[2] / DEFAULT_NAME


def find_serve_env(venv: str | os.PathLike[str] | None = None) -> ServeEnv:
    """The serve env at `venv` (default: default_venv()), its python backend stub in place."""
    root = Path(venv) if venv is not None else default_venv()
    root = root.absolute()
    py = root / "bin" / "python"
    if not py.exists():
        raise FSAError(f"no serve environment at {root} (run `make setup`, or set {ENV_VAR})")
    try:
        out = subprocess.run([str(py), "-c", _PROBE], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise FSAError(f"serve environment {root}: its python does not run ({e})") from e
    lines = out.stdout.splitlines()
    if out.returncode != 0 or len(lines) < 4:
        last = (out.stderr.strip().splitlines() or ["?"])[-1]
        raise FSAError(f"serve environment {root}: incomplete (run `make setup`): {last}")
    if not lines[0]:
        raise FSAError(f"serve environment {root}: nvidia-pytriton is not installed (run `make setup`)")
    if int(lines[3].split(".")[0]) >= 2:
        raise FSAError(f"serve environment {root}: numpy {lines[3]}; Triton's python backend needs numpy < 2 "
                       "(pytriton#93)")
    env = ServeEnv(root, Path(lines[0]) / "tritonserver", lines[1], lines[2], lines[3])
    place_stub(env)
    return env


def place_stub(env: ServeEnv) -> Path:
    """Copy the wheel's stub for this Python next to libtriton_python.so (same folder depth, so its
    RPATH $ORIGIN/../../../../nvidia_pytriton.libs still resolves; a symlink would not be safe)."""
    src = env.dist / "python_backend_stubs" / env.python_version / STUB
    dst = env.backends / "python" / STUB
    if not src.is_file():
        raise FSAError(f"nvidia-pytriton has no python backend stub for Python {env.python_version}")
    if not dst.is_file() or dst.read_bytes() != src.read_bytes():
        gate.write_bytes(dst, src.read_bytes(), keep=False, mode=0o755)  # tritonserver may be starting from it now
    return dst


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        env = find_serve_env(args[0] if args else None)
    except FSAError as e:
        print(f"serve env: error: {e}", file=sys.stderr)
        return 2
    print(f"serve env {env.venv}: tritonserver {env.tritonserver}, python {env.python_version}, numpy {env.numpy}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`make lint` inside `make test` (so CI runs it): ruff over the repository, mypy over the whole package and
benchmarks/.

mypy reads tools/typecheck.sh's tree of links (the installed layout) and checks the TensorRT layer
against tensorrt-stubs (TensorRT itself cannot be installed here). Its cache lives in build/typecheck:
a fresh clone pays the cold run once, later runs take seconds.
"""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO, missing, needs


@needs("ruff")  # the dev extra
def test_ruff_clean():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs("mypy")  # the dev extra
def test_package_typechecks():
    proc = subprocess.run(["bash", str(REPO / "tools" / "typecheck.sh")], cwd=REPO, capture_output=True, text=True,
                          env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"}, timeout=600)
    if proc.returncode == 2 and "tensorrt-stubs not installed" in proc.stderr:
        missing("tensorrt-stubs not installed (make setup installs them with --no-deps)")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success: no issues found" in proc.stdout

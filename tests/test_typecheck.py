"""`make lint` inside `make test` (so CI runs it): ruff over the repository, mypy over the whole package and
benchmarks/.

mypy reads tools/typecheck.sh's tree of links (the installed layout) and checks the TensorRT layer
against tensorrt-stubs (TensorRT itself cannot be installed here). Its cache lives in build/typecheck:
a fresh clone pays the cold run once, later runs take seconds.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REPO, missing, needs

try:
    import tomllib
except ImportError:  # Python 3.10: mypy brings tomli
    import tomli as tomllib


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


def test_modules_on_the_heavy_stack_are_imported_lazily():
    """pyproject.toml's TID253 list names what is imported where it is used: a module of the package that
    may import the heavy libraries at its top (per-file-ignores) is on that list too, so ruff refuses it at
    the top of a module that may not (tests/test_layering.py's rooms, `fsa --help`). Reads the toml only."""
    with open(REPO / "pyproject.toml", "rb") as f:
        config = tomllib.load(f)
    lint = config["tool"]["ruff"]["lint"]
    banned = lint["flake8-tidy-imports"]["banned-module-level-imports"]
    folders = {folder: package for package, folder in config["tool"]["setuptools"]["package-dir"].items()}
    unnamed = []
    for pattern, rules in lint["per-file-ignores"].items():
        room, _, rest = pattern.partition("/")
        if "TID253" not in rules or room not in folders:
            continue  # tests/, benchmarks/: nothing imports them
        module = ".".join([folders[room], *Path(rest).with_suffix("").parts]).removesuffix(".__init__")
        module = module.removesuffix(".*")  # export/lint/*.py: the package
        if not any(module == b or module.startswith(b + ".") for b in banned):
            unnamed.append(f"{pattern} ({module})")
    assert not unnamed, "import the export stack at their top but are not on the TID253 list: " + ", ".join(unnamed)

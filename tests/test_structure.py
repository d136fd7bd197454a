"""The repository's structure, read from the source (AST and text, no project import: well under a second).

- Benchmarks have one home, validation/bench/, and each is reachable as a make target: every module
  there with a `main` is named by a Makefile recipe, and every module or script a recipe names exists.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# pyproject.toml's package-dir mapping: installed package -> folder
PACKAGE_DIRS = {"fsa_deploy.models": "models", "fsa_deploy.export": "export", "fsa_deploy.calibration": "calibration",
                "fsa_deploy.runtime": "runtime", "fsa_deploy.validation": "validation", "fsa_deploy": "fsa_deploy"}
BENCH = REPO / "validation" / "bench"
MAKE_MODULE = re.compile(r"python -m (fsa_deploy[\w.]*)")
MAKE_SCRIPT = re.compile(r"(?<![\w/.-])((?:tools|tests|validation|runtime|export|models|calibration)/[\w./-]+"
                         r"\.(?:py|sh))")


def module_file(module: str) -> Path | None:
    """The source file `python -m module` runs, through the package-dir mapping; None if there is none."""
    for package in sorted(PACKAGE_DIRS, key=len, reverse=True):
        if module == package or module.startswith(package + "."):
            rest = module[len(package) + 1:].split(".") if module != package else []
            base = REPO / PACKAGE_DIRS[package] / Path(*rest)
            for path in (base.with_suffix(".py"), base / "__main__.py"):
                if path.is_file():
                    return path
    return None


def has_main(path: Path) -> bool:
    return any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in ast.parse(path.read_text()).body)


def recipes(makefile: str) -> str:
    """The Makefile's recipe lines (tab-indented, continuations joined), comments dropped."""
    text = makefile.replace("\\\n", " ")
    return "\n".join(ln for ln in text.splitlines() if ln.startswith("\t"))


def test_every_benchmark_is_a_make_target():
    named = set(MAKE_MODULE.findall(recipes((REPO / "Makefile").read_text())))
    benchmarks = {f"fsa_deploy.validation.bench.{p.stem}" for p in sorted(BENCH.glob("*.py")) if has_main(p)}
    assert len(benchmarks) >= 7, benchmarks  # export, build, memory, serve, real_stats, eval, app
    assert sorted(benchmarks - named) == [], "benchmarks no make target runs"


def test_every_module_and_script_a_recipe_names_exists():
    text = recipes((REPO / "Makefile").read_text())
    modules = set(MAKE_MODULE.findall(text))
    assert "fsa_deploy.validation.bench.serve" in modules  # the pattern reads the recipes
    assert sorted(m for m in modules if module_file(m) is None) == [], "modules the Makefile runs that do not exist"
    scripts = set(MAKE_SCRIPT.findall(text))
    assert "tools/demo.sh" in scripts
    assert sorted(s for s in scripts if not (REPO / s).is_file()) == [], "scripts the Makefile runs that do not exist"


def test_module_file_follows_the_package_dir_mapping():
    assert module_file("fsa_deploy.validation.bench.serve") == BENCH / "serve.py"
    assert module_file("fsa_deploy") == REPO / "fsa_deploy" / "__main__.py"
    assert module_file("fsa_deploy.validation.bench_serve") is None  # the old home


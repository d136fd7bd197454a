"""The repository's structure, read from the source (AST and text, no project import: well under a second).

- `fsa_deploy/contract.py` is the only spelling of every contract name: no module re-exports one
  (imports it without using it, lists it in `__all__`, or carries a `# noqa: F401` layer), imports
  one from a module other than the contract, reads one as `M.NAME` through another module, or
  binds a contract name to something of its own (a second meaning, or an alias).
- Benchmarks have one home, the top-level benchmarks/ (not installed: the wheel holds the product), and each is
  reachable as a make target: every module there with a `main` is named by a Makefile recipe, and every module or
  script a recipe names exists. `fsa bench`'s library stays in the package (validation/bench/): the verb is part
  of the CLI.
"""

from __future__ import annotations

import ast
import functools
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# pyproject.toml's package-dir mapping: installed package -> folder
PACKAGE_DIRS = {"fsa_deploy.models": "models", "fsa_deploy.export": "export", "fsa_deploy.calibration": "calibration",
                "fsa_deploy.runtime": "runtime", "fsa_deploy.validation": "validation", "fsa_deploy": "fsa_deploy",
                "benchmarks": "benchmarks"}  # the last: run from the checkout, not installed
BENCH = REPO / "benchmarks"
CONTRACT = "fsa_deploy.contract"
SOURCE_ROOTS = ("fsa_deploy", "models", "export", "calibration", "runtime", "validation", "benchmarks", "tools",
                "tests")
MAKE_MODULE = re.compile(r"python -m ((?:fsa_deploy|benchmarks)[\w.]*)")
MAKE_SCRIPT = re.compile(r"(?<![\w/.-])((?:tools|tests|benchmarks|validation|runtime|export|models|calibration)/"
                         r"[\w./-]+"
                         r"\.(?:py|sh))")


@functools.cache
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
    benchmarks = {f"benchmarks.{p.stem}" for p in sorted(BENCH.glob("*.py")) if has_main(p)}
    assert len(benchmarks) >= 7, benchmarks  # export, build, memory, serve, real_stats, eval, app
    assert sorted(benchmarks - named) == [], "benchmarks no make target runs"
    shipped = [p.name for p in (REPO / "validation" / "bench").glob("*.py") if has_main(p)]
    assert shipped == [], "scripts only make runs, inside the shipped package (their home: benchmarks/)"


def test_every_module_and_script_a_recipe_names_exists():
    text = recipes((REPO / "Makefile").read_text())
    modules = set(MAKE_MODULE.findall(text))
    assert "benchmarks.serving_overhead" in modules  # the pattern reads the recipes
    assert sorted(m for m in modules if module_file(m) is None) == [], "modules the Makefile runs that do not exist"
    scripts = set(MAKE_SCRIPT.findall(text))
    assert "tools/demo.sh" in scripts
    assert sorted(s for s in scripts if not (REPO / s).is_file()) == [], "scripts the Makefile runs that do not exist"


def test_the_bench_package_imports_nothing_heavy():
    """`fsa` imports the package for its bench verb (one process): nothing heavy at import. numpy and Pillow
    are base dependencies imported at module top (the verb's parser imported numpy before they were)."""
    heavy = ("torch", "onnxruntime", "onnx", "open_clip")
    code = f"import sys, fsa_deploy.validation.bench; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_module_file_follows_the_package_dir_mapping():
    assert module_file("benchmarks.serving_overhead") == BENCH / "serving_overhead.py"
    assert module_file("fsa_deploy") == REPO / "fsa_deploy" / "__main__.py"
    assert module_file("fsa_deploy.validation.bench_serve") is None  # the old home


# ---------------------------------------------------------------- one spelling per contract name


def contract_names() -> set[str]:
    tree = ast.parse((REPO / "fsa_deploy" / "contract.py").read_text())
    names = set()
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) else []
        for t in targets:
            names |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names


def module_of(path: Path) -> str:
    """The installed name of a source file (tests and tools: their own path)."""
    rel = path.relative_to(REPO)
    for package, folder in PACKAGE_DIRS.items():
        if rel.parts[0] == folder:
            parts = [*package.split("."), *rel.with_suffix("").parts[1:]]
            return ".".join(p for p in parts if p != "__init__")
    return ".".join(rel.with_suffix("").parts)


def is_module(name: str) -> bool:
    return module_file(name) is not None or (module_file(name + ".__init__") is not None)


def contract_violations(source: str, here: str, names: set[str]) -> list[str]:
    """Every way the source of module `here` spells a contract name other than through fsa_deploy.contract."""
    tree = ast.parse(source, here)
    lines = source.splitlines()
    bad: list[str] = []
    modules: dict[str, str] = {}  # local name -> fsa_deploy module it is bound to
    from_contract: dict[str, int] = {}  # local name -> line, imported from the contract
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("fsa_deploy"):  # `import a.b.c` binds `a`; `import a.b.c as m` binds m
                    modules[a.asname or "fsa_deploy"] = a.name if a.asname else "fsa_deploy"
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fsa_deploy"):
            text = "\n".join(lines[node.lineno - 1:node.end_lineno])
            if "noqa" in text and "F401" in text:
                bad.append(f"{node.lineno}: `# noqa: F401` on an import of {node.module} (a re-export layer)")
            for a in node.names:
                local = a.asname or a.name
                if is_module(f"{node.module}.{a.name}"):
                    modules[local] = f"{node.module}.{a.name}"
                elif node.module == CONTRACT:
                    from_contract[local] = node.lineno
                elif a.name in names:
                    bad.append(f"{node.lineno}: imports {a.name} from {node.module}, not from {CONTRACT}")
    if here == CONTRACT:
        return []
    loads = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    bad += [f"{line}: imports {name} from the contract and never uses it (a re-export)"
            for name, line in sorted(from_contract.items()) if name not in loads]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in names:
            chain, value = [], node.value
            while isinstance(value, ast.Attribute):
                chain.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id in modules:
                module = ".".join([modules[value.id], *reversed(chain)])
                if module != CONTRACT and is_module(module):
                    bad.append(f"{node.lineno}: reads {node.attr} through {module}, not {CONTRACT}")
    for node in tree.body:  # module-level bindings: a contract name with a meaning of its own, or an alias
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) else []
        value = getattr(node, "value", None)
        for t in targets:
            for n in ast.walk(t):
                if isinstance(n, ast.Name) and n.id in names:
                    bad.append(f"{node.lineno}: binds {n.id}, a contract name, to something of its own")
        aliased = (value.id if isinstance(value, ast.Name) and value.id in from_contract else
                   value.attr if isinstance(value, ast.Attribute) and value.attr in names
                   and isinstance(value.value, ast.Name) and modules.get(value.value.id) == CONTRACT else None)
        if targets and aliased:
            bad.append(f"{node.lineno}: a second spelling of {aliased}")
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets) and value is not None:
            listed = {c.value for c in ast.walk(value) if isinstance(c, ast.Constant)}
            bad += [f"{node.lineno}: __all__ re-exports {n}" for n in sorted(listed & names)]
    return bad


def source_files() -> list[Path]:
    return [p for root in SOURCE_ROOTS for p in sorted((REPO / root).rglob("*.py")) if "__pycache__" not in p.parts]


def test_contract_names_are_spelled_only_in_the_contract():
    names = contract_names()
    assert {"IMAGE_ONNX", "SEGMENT_MODEL", "PROFILES", "CLIP_MEAN"} <= names
    bad = [f"{path.relative_to(REPO)}:{v}" for path in source_files()
           for v in contract_violations(path.read_text(), module_of(path), names)]
    assert bad == [], "\n".join(bad)


def test_the_check_sees_every_kind_of_re_export():
    """Each way around the contract, as the source of a module of the runtime."""
    names = {"IMAGE_ONNX", "META", "PROFILES"}
    cases = {
        "from fsa_deploy.contract import IMAGE_ONNX  # noqa: F401\n": ["noqa", "never uses it"],
        "from fsa_deploy.runtime.artifact import IMAGE_ONNX\nx = IMAGE_ONNX\n": ["from fsa_deploy.runtime.artifact"],
        "from fsa_deploy.runtime import artifact as A\nx = A.META\n": ["through fsa_deploy.runtime.artifact"],
        "import fsa_deploy.runtime.artifact\nx = fsa_deploy.runtime.artifact.META\n": ["through"],
        "PROFILES = {'fp32': 1}\n": ["binds PROFILES"],
        "from fsa_deploy.contract import PROFILES\nP = PROFILES\n": ["second spelling of PROFILES"],
        "__all__ = ['META']\n": ["__all__ re-exports META"],
        "from fsa_deploy import contract\nfrom fsa_deploy.contract import META\n\n\n"
        "def f():\n    return contract.META, META\n": [],
    }
    for text, needles in cases.items():
        found = contract_violations(text, "fsa_deploy.runtime.probe", names)
        assert len(found) == len(needles) and all(n in f for n, f in zip(needles, found)), (text, found)

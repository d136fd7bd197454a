"""The package's layering, read from the source: the runtime is the base and imports nothing above it.

Every import statement counts, at module level or inside a function (a lazy import is still an
edge: it fails on a runtime-only install the moment it runs).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# folder -> installed package (pyproject.toml's package-dir mapping)
ROOMS = {"fsa_deploy": "fsa_deploy", "runtime": "fsa_deploy.runtime", "models": "fsa_deploy.models",
         "export": "fsa_deploy.export", "calibration": "fsa_deploy.calibration",
         "validation": "fsa_deploy.validation"}
# what each room may import from the project (besides itself and fsa_deploy.{errors,contract})
ALLOWED = {
    "fsa_deploy.runtime": set(),
    "fsa_deploy.models": {"fsa_deploy.runtime"},
    "fsa_deploy.export": {"fsa_deploy.runtime", "fsa_deploy.models"},
    "fsa_deploy.calibration": {"fsa_deploy.runtime", "fsa_deploy.models", "fsa_deploy.export"},
    "fsa_deploy.validation": {"fsa_deploy.runtime", "fsa_deploy.models", "fsa_deploy.export",
                              "fsa_deploy.calibration"},
}
CORE = {"fsa_deploy.errors", "fsa_deploy.contract", "fsa_deploy"}
# third-party packages the runtime (the base install) must never import
RUNTIME_FORBIDDEN = ("open_clip", "timm", "onnxscript", "polygraphy", "onnx_graphsurgeon", "modelopt")


def imports(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in a file, relative imports resolved."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found += [(node.lineno, f"{base}.{a.name}" if base == "fsa_deploy" else base) for a in node.names]
    return found


def room_of(module: str) -> str | None:
    for room in sorted(ALLOWED, key=len, reverse=True):
        if module == room or module.startswith(room + "."):
            return room
    return None


def files_of(folder: str) -> list[Path]:
    return sorted(p for p in (REPO / folder).rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("folder", [f for f in ROOMS if f != "fsa_deploy"])
def test_no_back_edges(folder: str) -> None:
    room = ROOMS[folder]
    bad = []
    for path in files_of(folder):
        package = room + "." + ".".join(path.relative_to(REPO / folder).parent.parts)
        for line, module in imports(path, package.rstrip(".")):
            if not module.startswith("fsa_deploy") or module in CORE or module.split(".")[1] in ("errors", "contract"):
                continue
            target = room_of(module)
            if target is not None and target != room and target not in ALLOWED[room]:
                bad.append(f"{path.relative_to(REPO)}:{line}: {room} imports {module}")
    assert not bad, "\n".join(bad)


def test_runtime_imports_no_export_tool_chain() -> None:
    bad = [f"{path.relative_to(REPO)}:{line}: {module}"
           for path in files_of("runtime") for line, module in imports(path, "fsa_deploy.runtime")
           if module.split(".")[0] in RUNTIME_FORBIDDEN]
    assert not bad, "\n".join(bad)


def test_the_walk_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from fsa_deploy.models.factory import build\n    from ..export import lint\n")
    assert imports(f, "fsa_deploy.runtime.backends") == [(2, "fsa_deploy.models.factory"),
                                                         (3, "fsa_deploy.runtime.export")]

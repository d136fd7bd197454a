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
ROOTS = ("fsa_deploy", "runtime", "export", "calibration", "validation", "models")
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


def raw_writes(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    buffers = _memory_buffers(tree)
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
            if head == "gate":
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

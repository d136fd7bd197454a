"""`fsa lint`: a static check of an ONNX graph against TensorRT's ONNX parser rules.

Why static: the exporter runs where TensorRT may be absent, and a graph that the parser rejects
(or accepts with data-dependent shapes) should fail at export time, not on the edge box. Where
TensorRT-RTX is installed (`make setup`), tests/test_lint.py holds lint to the real parser and
builder on a corpus of crafted graphs, and `fsa lint --parser` runs them on any graph.

Split along its seams: rules.py (the rules as data, per target 10, 11, "rtx"), graph.py (the
graph analysed once), checks.py (generic checks over both), parser.py (the real parser), cli.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import onnx

from fsa_deploy.errors import CheckFailed, FSAError
from fsa_deploy.export.lint.checks import lint_graph
from fsa_deploy.export.lint.graph import LintReport, Violation, analyse, load_structure
from fsa_deploy.export.lint.rules import LABELS, RULES, TABLES, TARGETS, Target, tensorrt_rules

__all__ = ["RULES", "TABLES", "TARGETS", "LintReport", "Violation", "assert_lint_clean", "lint",
           "lint_versions", "load_structure", "merged_lines", "tensorrt_rules"]


def lint_versions(
    model_or_path: onnx.ModelProto | str | Path,
    trt_majors: Iterable[Target] = TARGETS,
    *,
    base_dir: str | Path | None = None,
) -> dict[Target, LintReport]:
    """Lint one graph against several TensorRT targets (10, 11, "rtx"), loading and inferring it once.

    `base_dir` locates external data when a ModelProto is passed (a path brings its own).
    """
    targets = list(trt_majors)
    unknown = [t for t in targets if t not in TABLES]
    if unknown:
        raise FSAError(f"TensorRT {unknown}: no rules for that target (known: {', '.join(map(str, TARGETS))})")
    if isinstance(model_or_path, onnx.ModelProto):
        model = model_or_path
    else:
        model = load_structure(model_or_path)
        base_dir = Path(model_or_path).parent
    g = analyse(model, Path(base_dir) if base_dir is not None else None)
    return {t: lint_graph(g, t) for t in targets}


def lint(
    model_or_path: onnx.ModelProto | str | Path, trt_major: Target = 10, *, base_dir: str | Path | None = None
) -> LintReport:
    """Check a graph against one TensorRT target's ONNX parser rules (10, 11 or "rtx")."""
    return lint_versions(model_or_path, (trt_major,), base_dir=base_dir)[trt_major]


def merged_lines(reports: dict[Target, LintReport]) -> list[str]:
    """Violations of several targets, each once, tagged when not common to all of them."""
    where: dict[Violation, list[Target]] = {}
    for target, report in reports.items():
        for v in report.violations:
            where.setdefault(v, []).append(target)
    tag = lambda ts: "" if len(ts) == len(reports) else f" [{', '.join(LABELS[t] for t in ts)} only]"
    return [v.format() + tag(ts) for v, ts in where.items()]


def assert_lint_clean(path: str | Path, trt_majors: Sequence[Target] = TARGETS) -> None:
    """The exporter's last step: raise CheckFailed listing every violation."""
    lines = merged_lines(lint_versions(path, trt_majors))
    if lines:
        versions = ", ".join(map(str, trt_majors))
        raise CheckFailed(f"{path}: {len(lines)} TensorRT ({versions}) lint violation(s):\n" + "\n".join(lines))

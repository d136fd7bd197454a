"""`fsa lint PATH.onnx...`: exit 0 clean, 1 on a violation, 2 on a bad path or a file that is not ONNX."""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fsa_deploy.contract import META
from fsa_deploy.errors import CheckFailed, FSAError
from fsa_deploy.export.fp16_audit import lint_lines
from fsa_deploy.export.lint import lint_versions, merged_lines
from fsa_deploy.export.lint.parser import available, parser_verdict
from fsa_deploy.export.lint.rules import TARGETS, parse_target
from fsa_deploy.runtime.artifact import Artifact
from fsa_deploy.runtime.gate import check_output_file, write_json


def add_lint(sub: Any, help_text: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "lint",
        help=help_text,
        description="Static check of ONNX graphs against TensorRT's ONNX parser rules (operator table, "
        "TopK/CumSum constants, control flow, dtypes, data-dependent shapes, custom domains). "
        "Exit 0 clean, 1 on a violation, 2 on a bad path or a file that is not ONNX.",
    )
    parser.add_argument(
        "onnx", nargs="+", metavar="PATH.onnx", help="graph(s) to check; external weights are not loaded"
    )
    parser.add_argument("--trt", type=parse_target, choices=TARGETS, metavar="{10,11,rtx}",
                        help="one TensorRT target: 10, 11 or rtx (TensorRT-RTX) (default: all)")
    parser.add_argument("--parser", action="store_true",
                        help="also run the real ONNX parser (TensorRT-RTX: and builder) when installed; "
                        "a refusal fails the graph")
    parser.add_argument("--json", metavar="FILE", help="also write the reports to FILE as JSON")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    parser.set_defaults(func=run_lint)
    return parser


def run_lint(args: argparse.Namespace) -> int:
    majors = (args.trt,) if args.trt else TARGETS
    versions = ", ".join(map(str, majors))
    paths = [Path(p) for p in args.onnx]
    for path in paths:  # bad paths first: exit 2 before any report
        if not path.is_file():
            raise FSAError(f"{path}: {'not a file' if path.exists() else 'no such file'}")
    flavour = None
    if args.parser:
        flavour = available()
        if flavour is None:
            raise FSAError("--parser: neither TensorRT-RTX nor TensorRT is installed (pip install 'fsa-deploy[rtx]')")
    if args.json and not Path(args.json).parent.is_dir():
        raise FSAError(f"--json {args.json}: no such folder")

    check_output_file(args.json, "--json", args.overwrite)  # never over an artefact's file or a user's
    for path in paths:
        check_artifact_graph(path)
    entries, failed = [], 0
    for path in paths:
        reports = lint_versions(path, majors)
        lines = merged_lines(reports)
        real = None
        if flavour is not None:
            real = parser_verdict(path, flavour)
            if not real.accepted:
                what = "parser" if not real.parses else "builder"
                lines.append(f"<graph> ({real.library} {real.version}): {what}: " + "; ".join(real.errors[:3]))

        audit_lines, audit_summary = lint_lines(path)  # an artefact's fp16 graph: its recorded ranges
        lines += audit_lines
        nodes = next(iter(reports.values())).nodes
        status = "FAILED" if lines else "PASSED"
        print(f"{status}: {path} (TensorRT {versions}): {nodes} nodes, {len(lines)} violations")
        if audit_summary:
            print(audit_summary)
        for line in lines:
            print(line)
        failed += bool(lines)
        entries.append(
            {
                "path": str(path),
                "nodes": nodes,
                "passed": not lines,
                "parser": None if real is None else asdict(real),
                "trt": {
                    str(m): {"ok": r.ok, "violations": [asdict(v) for v in r.violations]} for m, r in reports.items()
                },
            }
        )
    if args.json:
        _write_json(Path(args.json), {"passed": not failed, "trt": list(majors), "graphs": entries})
    if failed:
        raise CheckFailed(f"{failed} of {len(paths)} graph(s) break TensorRT's ONNX rules")
    return 0


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    try:
        write_json(path, obj)
    except OSError as e:
        raise FSAError(f"--json {path}: cannot write ({e.strerror or e})") from e


def check_artifact_graph(path: Path) -> None:
    """A graph inside an artefact folder is read as the artefact says: its meta.json must load (no
    name leading out of the folder) and, if it records the graph, the graph's external-data names
    must be recorded plain names (runtime.trust). A graph outside any artefact is linted as given."""
    if not os.path.lexists(path.parent / META):
        return
    art = Artifact.load(path.parent)
    if path.name in art.files():
        art.path(path.name)  # sha256 and external-data locations checked

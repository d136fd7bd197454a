"""`fsa eval`: mIoU of an artefact on a segmentation benchmark under the paper's protocol, one row
per graph / backend, beside the PyTorch reference, with the delta and the pixel agreement.

The protocol (resize, windows, prob_thd, class names) is the official configs' for the artefact's
method (validation/eval/protocol.py); the metric is mmsegmentation's IoUMetric (metrics.py); the
datasets are read in mmsegmentation's layouts (datasets.py); rows run image by image with the
decoding in a thread (runner.py); `--server` sends the images to Triton instead (remote.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from fsa_deploy.contract import (
    BACKENDS,
    EVAL_RESIZES,
    EXPORT_PRECISIONS,
    IMAGE_ONNX,
    PAPER,
    PAPER_BENCHMARKS,
    RESIZE_FLOAT,
    RESIZE_MMCV,
    TOKENIZER_VOCAB,
)
from fsa_deploy.errors import CheckFailed, FSAError
from fsa_deploy.log import logger
from fsa_deploy.ranges import add_ranged
from fsa_deploy.runtime import gate as outputs_gate
from fsa_deploy.runtime.artifact import Artifact, is_artifact
from fsa_deploy.runtime.backends.base import Backend
from fsa_deploy.runtime.backends.graph import open_graph
from fsa_deploy.runtime.backends.select import plugin
from fsa_deploy.runtime.gate import write_json
from fsa_deploy.runtime.images import load_image
from fsa_deploy.runtime.pipeline import postprocess, resize_image, resized_canvas_logits
from fsa_deploy.runtime.schema import refuse_artifact_file
from fsa_deploy.runtime.segmenter import Segmenter
from fsa_deploy.runtime.text import usable_cache_dir
from fsa_deploy.spellings import add_old_spellings
from fsa_deploy.validation.eval import datasets as D
from fsa_deploy.validation.eval import mmcv
from fsa_deploy.validation.eval import report as R
from fsa_deploy.validation.eval.datasets import DATASETS
from fsa_deploy.validation.eval.protocol import Overrides, class_names, declared, resolve
from fsa_deploy.validation.eval.remote import fan_out, server_row
from fsa_deploy.validation.eval.report import EvalReport, PaperReport
from fsa_deploy.validation.eval.runner import Progress, Row, ShowDir, run_rows, work_key

PROG = "fsa eval"
LOG = logger("validation")


def add_eval(sub, help_text: str) -> argparse.ArgumentParser:
    p = sub.add_parser("eval", help=help_text, description=(
        "Score an artefact on a segmentation benchmark as the paper does (mmsegmentation's mIoU, the "
        "official configs' resize, windows, prob_thd and class names for the artefact's method), one row per "
        "--graph, beside the PyTorch reference with --reference. Metrics are fractions in the JSON, points in "
        "the tables (stdout: mmseg's per-class IoU/Acc and aAcc/mIoU/mAcc; --md, --csv, --latex). DATASET paper: "
        "every benchmark found under --root, the paper's row."))
    p.add_argument("dataset", metavar="DATASET",
                   help=f"one of: {', '.join(DATASETS)}; or {PAPER}: every benchmark found under --root, laid out "
                        "as mmsegmentation's data/ folder, one row per model in the paper's column order")
    p.add_argument("--root", required=True, metavar="DIR",
                   help="the dataset's own folder, as the configs' data_root names it (e.g. VOCdevkit/VOC2012)")
    p.add_argument("--artifact", required=True, metavar="DIR", help="artefact folder written by `fsa export`")
    p.add_argument("--graph", action="append", metavar="FILE",
                   help="graph or engine file of the folder, one row each (repeatable; default: --backend's choice)")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="auto: a TensorRT engine when this machine can run it, else ONNX Runtime (default auto)")
    p.add_argument("--reference", action="store_true", help="add the PyTorch reference row (and deltas)")
    p.add_argument("--reference-precision", choices=EXPORT_PRECISIONS, default=EXPORT_PRECISIONS[0],
                   help="fp16: the reference under torch.autocast in fp16 (CUDA; on a CPU, CPU autocast emulates "
                        "it), as the official code runs in fp16 (default fp32)")
    p.add_argument("--server", action="append", metavar="URL",
                   help="Triton server(s) running `fsa serve` on this artefact (repeatable): the artefact row "
                        "runs there")
    add_ranged(p, "--concurrency", "requests in flight per server (default 2)", default=2)
    add_ranged(p, "--server-timeout", "seconds one image may take on a server before the server is dropped and the "
                                      "image retried on another (default: from the largest image's size)", default=None)
    add_ranged(p, "--short-side", "resize: the short side (default: the protocol's)", default=None)
    add_ranged(p, "--long-side", "resize: at most this long side (default: the protocol's, 2048)", default=None)
    add_ranged(p, "--stride", "sliding-window stride (default: the protocol's)", default=None)
    add_ranged(p, "--prob-thd", "pixels below this top probability become class 0 (default: the protocol's)",
               default=None)
    p.add_argument("--classes-file", metavar="FILE",
                   help="class names, one a line in label order, synonyms separated by ';' (required for folder)")
    p.add_argument("--split", metavar="FILE", help="image names, one a line (default: the dataset's val split)")
    add_ranged(p, "--limit", "only the first N images of the split", default=None)
    p.add_argument("--work", metavar="DIR", help="keep each image's confusion matrices here; a rerun resumes")
    add_ranged(p, "--max-miou-drop", "exit 1 when an artefact row's mIoU is further below the reference's",
               default=None)
    p.add_argument("--resize", choices=EVAL_RESIZES, default=None,
                   help="mmcv (default): decode with OpenCV and resize the uint8 image with cv2 as the official "
                        "pipeline (mmcv.imrescale); float: Pillow and fsa segment's float32 resize (its label maps "
                        "are fsa segment's exactly; listed as a difference)")
    p.add_argument("--json", required=True, metavar="F", help="write the report (JSON) here")
    p.add_argument("--md", metavar="F", help="write the report as Markdown here")
    p.add_argument("--csv", metavar="F", help="write the per-class table and the summary as CSV (points) here")
    p.add_argument("--latex", metavar="F", help="write the tables as LaTeX tabulars (points) here")
    p.add_argument("--show-dir", metavar="DIR",
                   help="write each image's label map (the first artefact row's, else the reference's) as a palette "
                        "PNG named after the image, as fsa segment writes NAME.png (pixels under prob_thd: class 0)")
    p.add_argument("--plot", metavar="F.png", help="per-class IoU of the rows, worst deltas first")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing --json / --md / --csv / --latex / --plot files and --show-dir images")
    add_ranged(p, "--batch", "crops per backend call (default 16)", default=16)
    add_ranged(p, "--threads", "ONNX Runtime CPU threads (default: all cores)", default=None)
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--cache-dir", metavar="DIR", help="class-embedding cache (default $FSA_CACHE_DIR or "
                                                          "~/.cache/fsa-deploy)")
    cache.add_argument("--no-cache", action="store_true", help="always recompute the class embeddings")
    add_old_spellings(p, "eval")
    p.set_defaults(func=run_eval)
    return p


def run_eval(args: argparse.Namespace) -> int:
    args.resize_given = args.resize is not None
    args.resize = args.resize or RESIZE_MMCV  # the official pipeline

    outputs = (("--json", args.json), ("--md", args.md), ("--plot", args.plot), ("--csv", args.csv),
               ("--latex", args.latex))
    plan = outputs_gate.Outputs()  # before any work; two options on one file are refused
    for option, path in outputs:
        plan.file(path, option, args.overwrite)
    if args.work:
        outputs_gate.check_folder(args.work, "--work")
    if args.reference_precision != "fp32" and not args.reference:
        raise FSAError("--reference-precision: needs --reference")
    if args.max_miou_drop is not None and not args.reference:
        raise FSAError("--max-miou-drop: needs --reference (the drop is measured against it)")
    if args.server and args.resize == RESIZE_MMCV and args.resize_given:
        raise FSAError("--server with --resize mmcv: fsa_segment decodes with Pillow and resizes in float32; "
                       "give --resize float (or run the rows locally)")
    if args.server:
        args.resize = RESIZE_FLOAT  # what fsa_segment does; declared in differs_from_official
    if args.show_dir:
        _check_show_dir(args.show_dir)
    art = Artifact.load(args.artifact)
    sha = art.sha256(IMAGE_ONNX)
    if not sha:
        raise FSAError(f"{art.root}: meta.json records no {IMAGE_ONNX} hash; re-export")
    if args.dataset == PAPER:
        return run_paper(args, art, sha)
    with _work_dir(args.work) as work:
        report = evaluate(args, args.dataset, args.root, art, sha, work,
                          Path(args.show_dir) if args.show_dir else None)
    _write_outputs(args, report)
    print(R.stdout_text(report), end="", flush=True)
    gate(report, args.max_miou_drop)
    return 0


def _check_show_dir(folder: str) -> None:
    p = Path(folder)
    if p.exists() and not p.is_dir():
        raise FSAError(f"--show-dir {p}: exists and is not a folder")
    refuse_artifact_file(p / "x.png", "--show-dir")
    if is_artifact(p) or is_artifact(p.parent):
        raise FSAError(f"--show-dir {p}: inside an artefact folder; write it elsewhere")


def _write_outputs(args: argparse.Namespace, report: EvalReport) -> None:
    write_json(args.json, report.to_json())
    for path, text in ((args.md, R.markdown), (args.csv, R.csv_text), (args.latex, R.latex_text)):
        if path:
            outputs_gate.write_text(path, text(report))
    if args.plot:
        R.plot(report, args.plot)


def evaluate(args: argparse.Namespace, dataset: str, root: str | Path, art: Any, sha: str, work: Path,
             show_dir: Path | None) -> EvalReport:
    """One benchmark: the rows run (or read back from `work`) and the report (the JSON's object)."""
    lay = D.layout_of(dataset)
    over = Overrides(args.short_side, args.long_side, args.stride, args.prob_thd, args.classes_file, args.resize)
    method, proto, vocab = resolve(art.info, dataset, over)
    k = len(vocab.classes)
    found = D.items(dataset, root, args.split, args.limit)
    bar = Progress(len(found), not args.quiet and len(found) > 1, f"{dataset}: checking masks", "mask")
    try:
        for _ in D.check_all(found, lay.reduce_zero_label, k, proto.ignore_index):
            bar.step()
    finally:
        bar.close()
    rows = open_rows(args, art, sha, proto, vocab, found)
    setup, notes = declared(art, rows, args.reference)
    proto.differs_from_official.extend(notes)
    protocol = proto.as_json()
    classes = ["; ".join(c) for c in vocab.classes]
    if not args.quiet:
        LOG.info(f"{PROG}: {dataset}: {len(found)} images, {k} classes, method {method}; rows: "
             + ", ".join(f"{r.name} ({r.backend})" for r in rows))
    decode = _decoder(proto.resize)
    key_of = lambda item: work_key(sha, rows, protocol, classes, item)
    parallel = None
    if args.server:
        parallel = fan_out(rows, lay.reduce_zero_label, args.concurrency, decode)
    show = None
    if show_dir is not None:
        show = ShowDir(show_dir, next((i for i, r in enumerate(rows) if not r.is_reference), 0))
    failures = run_rows(rows, found, k, proto.ignore_index, lay.reduce_zero_label, work, key_of, decode,
                        progress=not args.quiet, parallel=parallel, show=show, overwrite=args.overwrite,
                        what=f"{dataset}: scoring")
    if failures:
        for line in failures:
            LOG.error(f"{PROG}: error: {line}")
        raise FSAError(f"{len(failures)} of {len(found)} images failed (named above); no report written")
    shown = None if show is None else {"folder": str(show.folder), "row": rows[show.row].name}
    return R.make_report(dataset, method, protocol, classes, class_names(dataset, vocab), len(found), rows,
                           str(art.root), sha, setup, shown)


def _decoder(resize: str):
    """The protocol's decoder: OpenCV as mmcv (mmcv resize), Pillow as `fsa segment` (float)."""
    if resize == RESIZE_MMCV:
        mmcv.cv2()  # a missing OpenCV is one line now, not one per image
        return mmcv.decode

    return load_image


def run_paper(args: argparse.Namespace, art: Any, sha: str) -> int:
    """Every benchmark found under DATA (mmseg's data/ layout), one row per model in the paper's
    column order; each benchmark's report kept in --work (a rerun skips the finished ones)."""
    if args.classes_file or args.split:
        raise FSAError("fsa eval paper: --classes-file and --split apply to one dataset; the paper uses each "
                       "benchmark's own")
    base = Path(args.root)
    if not base.is_dir():
        raise FSAError(f"--root {args.root}: no such folder (expected mmsegmentation's data/ folder)")
    found: list[str] = []
    missing: list[str] = []
    for b in PAPER_BENCHMARKS:
        (found if D.present(b, base / D.PAPER_ROOTS[b]) else missing).append(b)
    if not found:
        raise FSAError(f"--root {args.root}: none of the benchmarks found (expected "
                       + ", ".join(sorted(set(D.PAPER_ROOTS.values()))) + ")")
    if missing and not args.quiet:
        LOG.info(f"{PROG}: not found under --root, not run: " + ", ".join(f"{b} ({D.PAPER_ROOTS[b]})" for b in missing))
    reports: dict[str, EvalReport | None] = {}
    # a finished benchmark is reused only by a run asking the same of it (rows, protocol options)

    asked = {k: getattr(args, k) for k in ("graph", "backend", "reference", "server", "short_side", "long_side",
                                           "stride", "prob_thd", "limit", "resize")}
    tag = hashlib.sha256(json.dumps([sha, asked], sort_keys=True, default=str).encode()).hexdigest()[:12]
    with _work_dir(args.work) as work:
        for b in found:
            done = work / f"{b}.{tag}.json"
            one = _read_report(done, sha) if done.is_file() else None
            if one is None:
                folder = work / b
                outputs_gate.mkdir(folder)
                show = Path(args.show_dir) / b if args.show_dir else None
                one = evaluate(args, b, base / D.PAPER_ROOTS[b], art, sha, folder, show)
                write_json(done, one.to_json())
            elif not args.quiet:
                LOG.info(f"{PROG}: {b}: finished in an earlier run ({done}); reused")
            reports[b] = one
            if not args.quiet:
                print(R.stdout_text(one), end="", flush=True)
    paper = paper_rows(reports, missing, sha)
    write_json(args.json, paper.to_json())
    for path, text in ((args.md, R.paper_markdown), (args.csv, R.paper_csv), (args.latex, R.paper_latex)):
        if path:
            outputs_gate.write_text(path, text(paper))
    print(R.paper_markdown(paper), end="", flush=True)
    for done_report in reports.values():
        if done_report is not None:
            gate(done_report, args.max_miou_drop)
    return 0


def _read_report(path: Path, sha: str) -> EvalReport | None:
    """A finished benchmark's report from --work, or None (one warning line) when damaged or of
    another artefact."""
    try:
        rep = json.loads(path.read_text(encoding="utf-8"))
        if rep.get("artifact_sha256") != sha or not isinstance(rep.get("rows"), list):
            raise ValueError("another artefact's report")
        for r in rep["rows"]:
            if not all(k in r for k in ("name", "backend", "miou")):
                raise ValueError("rows without mIoU")
        return EvalReport.from_json(rep)
    except (OSError, ValueError, AttributeError, TypeError) as e:
        LOG.warning(f"{PROG}: warning: --work {path}: {str(e)[:80]}; running that benchmark again")
        return None


def paper_rows(reports: dict[str, EvalReport | None], missing: list[str], sha: str) -> PaperReport:
    """{rows: [{name, backend, cells {benchmark: mIoU}, avg}], missing}: one row per model, the
    cells in the paper's column order, avg the mean of the cells found."""
    out: list[dict[str, Any]] = []
    for b in PAPER_BENCHMARKS:
        one = reports.get(b)
        for r in one.rows if one is not None else []:
            row = next((o for o in out if o["name"] == r["name"] and o["backend"] == r["backend"]), None)
            if row is None:
                row = {"name": r["name"], "backend": r["backend"], "cells": {}, "avg": None}
                out.append(row)
            row["cells"][b] = r["miou"]
    for row in out:
        vals = [v for v in row["cells"].values() if v is not None]
        row["avg"] = sum(vals) / len(vals) if vals else None
    return PaperReport(out, missing, sha)


def gate(report: EvalReport, max_drop: float | None) -> None:
    if max_drop is None:
        return
    bad = [f"{r['name']} ({r['backend']}) mIoU {R.delta_text(r['miou_delta'])} points"
           for r in report.rows if r.get("miou_delta") is not None and r["miou_delta"] < -max_drop]
    if bad:
        raise CheckFailed(f"below the reference by more than {max_drop * 100:.2f} points: " + "; ".join(bad))


class _work_dir:
    """--work DIR (kept), or a temporary folder removed at the end."""

    def __init__(self, path: str | None):
        self.path = path
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        if self.path is None:
            self.tmp = outputs_gate.mkdtemp("fsa-eval-")
            return self.tmp
        p = outputs_gate.check_folder(self.path, "--work")  # never inside an artefact folder
        return p

    def __exit__(self, *exc: object) -> None:
        if self.tmp is not None:
            outputs_gate.rmtree(self.tmp)


def open_rows(args: argparse.Namespace, art: Any, sha: str, proto: Any, vocab: Any, found: list) -> list:
    """The reference row (first) and one row per --graph (or the --backend choice) or per server."""
    cache = None if args.no_cache else usable_cache_dir(args.cache_dir)
    rows = []
    if args.reference:
        backend = plugin("torch")(art, device="auto")
        ident = "pytorch"
        if args.reference_precision == "fp16":
            from fsa_deploy.validation.eval.precision import Autocast

            backend = Autocast(backend)
            ident = backend.name
        rows.append(Row("reference", "pytorch", None, _segment_fn(backend, art, sha, proto, vocab, args, cache),
                        ident, is_reference=True, precision=args.reference_precision))
    if args.server:
        if args.graph:
            raise FSAError("--server with --graph: the servers run their own graph; give one or the other")

        rows.append(server_row(args.server, art, sha, proto, vocab, args.server_timeout, found))
        return rows
    for graph in args.graph or [None]:
        if graph is None and args.backend == "torch":
            backend, name = plugin("torch")(art, device="auto"), "torch"
            ident = "pytorch"
        else:
            backend, name, _ = open_graph(art, graph, args.backend, threads=args.threads)
            ident = f"{name}:{art.sha256(name)}"
        if any(r.name == name for r in rows):
            name = f"{name} ({backend.name})"
        rows.append(Row(name, backend.name, None if args.backend == "torch" and graph is None else name,
                        _segment_fn(backend, art, sha, proto, vocab, args, cache), ident))
    return rows


def _segment_fn(backend: Backend, art: Any, sha: str, proto: Any, vocab: Any, args: argparse.Namespace, cache: Any):
    """(item, image) -> the label map under the protocol: mmcv's resize of the uint8 image (or
    `fsa segment`'s float one), then the runtime's windows, stitching and post-processing; pixels
    under prob_thd are class 0, the official rule (whatever `fsa segment` draws for them)."""
    vocab_file = art.path(TOKENIZER_VOCAB) if TOKENIZER_VOCAB in art.files() else None
    seg = Segmenter(backend, crop=proto.crop, logit_scale=proto.logit_scale, templates=art.info.templates,
                    model_key=sha, batch=args.batch, cache_dir=cache, prob_thd=proto.prob_thd, below_thd=0,
                    stride=proto.stride, short_side=proto.short_side, long_side=proto.long_side,
                    vocab_file=vocab_file, artifact_sha256=sha)
    seg.set_classes(vocab)
    assert seg.vocabulary is not None
    query_class = seg.vocabulary.query_class
    n_classes = len(seg.vocabulary.classes)

    def run(item: Any, img: np.ndarray) -> np.ndarray:
        if proto.resize == RESIZE_MMCV:
            resized = mmcv.imrescale(img, proto.short_side, proto.long_side)
        else:
            resized = resize_image(img, seg.geometry)
        canvas = resized_canvas_logits(resized, seg._forward, seg.geometry, seg.batch)
        if not np.isfinite(canvas).all():
            raise FSAError(f"{item.image}: the {backend.name} backend gave NaN or infinite logits")
        labels = postprocess(canvas, img.shape[-2:], query_class, proto.logit_scale, proto.prob_thd).labels
        labels[labels >= n_classes] = 0  # the official rule: under prob_thd is class 0, not "unlabelled"
        return labels

    return run

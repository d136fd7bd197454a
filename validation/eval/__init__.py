"""`fsa eval`: mIoU of an artefact on a segmentation benchmark under the paper's protocol, one row
per graph / backend, beside the PyTorch reference, with the delta and the pixel agreement.

The protocol (resize, windows, prob_thd, class names) is the official configs' for the artefact's
method (validation/eval/protocol.py); the metric is mmsegmentation's IoUMetric (metrics.py); the
datasets are read in mmsegmentation's layouts (datasets.py); rows run image by image with the
decoding in a thread (runner.py); `--server` sends the images to Triton instead (remote.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from fsa_deploy.errors import CheckFailed, FSAError
from fsa_deploy.ranges import add_ranged
from fsa_deploy.spellings import add_old_spellings

PROG = "fsa eval"


def add_eval(sub, help_text: str) -> argparse.ArgumentParser:
    from fsa_deploy.validation.eval.datasets import DATASETS

    from fsa_deploy.contract import BACKENDS

    p = sub.add_parser("eval", help=help_text, description=(
        "Score an artefact on a segmentation benchmark as the paper does (mmsegmentation's mIoU, the "
        "official configs' resize, windows, prob_thd and class names for the artefact's method), one row per "
        "--graph, beside the PyTorch reference with --reference. Metrics are fractions in the JSON, points in "
        "the Markdown."))
    p.add_argument("dataset", metavar="DATASET", help=f"one of: {', '.join(DATASETS)}")
    p.add_argument("--root", required=True, metavar="DIR",
                   help="the dataset's own folder, as the configs' data_root names it (e.g. VOCdevkit/VOC2012)")
    p.add_argument("--artifact", required=True, metavar="DIR", help="artefact folder written by `fsa export`")
    p.add_argument("--graph", action="append", metavar="FILE",
                   help="graph or engine file of the folder, one row each (repeatable; default: --backend's choice)")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="auto: a TensorRT engine when this machine can run it, else ONNX Runtime (default auto)")
    p.add_argument("--reference", action="store_true", help="add the PyTorch reference row (and deltas)")
    p.add_argument("--server", action="append", metavar="URL",
                   help="Triton server(s) running `fsa serve` on this artefact (repeatable): the artefact row "
                        "runs there")
    add_ranged(p, "--concurrency", "requests in flight per server (default 2)", default=2)
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
    p.add_argument("--json", required=True, metavar="F", help="write the report (JSON) here")
    p.add_argument("--md", metavar="F", help="write the report as Markdown here")
    p.add_argument("--plot", metavar="F.png", help="per-class IoU of the rows, worst deltas first")
    p.add_argument("--overwrite", action="store_true", help="replace existing --json / --md / --plot files")
    add_ranged(p, "--batch", "crops per backend call (default 16)", default=16)
    add_ranged(p, "--threads", "ONNX Runtime CPU threads (default: all cores)", default=None)
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--cache-dir", metavar="DIR", help="class-embedding cache (default $FSA_CACHE_DIR or "
                                                          "~/.cache/fsa-deploy)")
    cache.add_argument("--no-cache", action="store_true", help="always recompute the class embeddings")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_old_spellings(p, "eval")
    p.set_defaults(func=run_eval)
    return p


def _say(line: str) -> None:
    print(f"{PROG}: {line}", file=sys.stderr, flush=True)


def run_eval(args: argparse.Namespace) -> int:
    from fsa_deploy.runtime.artifact import Artifact, check_output_file, write_json_atomic
    from fsa_deploy.validation.eval import datasets as D
    from fsa_deploy.validation.eval import report as R
    from fsa_deploy.validation.eval.protocol import Overrides, resolve
    from fsa_deploy.validation.eval.runner import run_rows, work_key

    from fsa_deploy.contract import IMAGE_ONNX

    for path, option in ((args.json, "--json"), (args.md, "--md"), (args.plot, "--plot")):
        check_output_file(path, option, args.overwrite)
    if args.max_miou_drop is not None and not args.reference:
        raise FSAError("--max-miou-drop: needs --reference (the drop is measured against it)")
    lay = D.layout_of(args.dataset)
    art = Artifact.load(args.artifact)
    sha = art.files().get(IMAGE_ONNX, {}).get("sha256")
    if not sha:
        raise FSAError(f"{art.root}: meta.json records no {IMAGE_ONNX} hash; re-export")
    over = Overrides(args.short_side, args.long_side, args.stride, args.prob_thd, args.classes_file)
    method, proto, vocab = resolve(art.meta, args.dataset, over)
    k = len(vocab.classes)
    found = D.items(args.dataset, args.root, args.split, args.limit)
    if not args.quiet and len(found) > 100:
        _say(f"checking {len(found)} masks before the first image runs")
    for _ in D.check_all(found, lay.reduce_zero_label, k, proto.ignore_index):
        pass
    protocol = proto.as_json()
    classes = ["; ".join(c) for c in vocab.classes]
    rows = open_rows(args, art, sha, proto, vocab)
    if not args.quiet:
        _say(f"{args.dataset}: {len(found)} images, {k} classes, method {method}; rows: "
             + ", ".join(f"{r.name} ({r.backend})" for r in rows))
    with _work_dir(args.work) as work:
        key_of = lambda item: work_key(sha, rows, protocol, classes, item)
        parallel = None
        if args.server:
            from fsa_deploy.validation.eval.remote import fan_out

            parallel = fan_out(rows, lay.reduce_zero_label, args.concurrency)
        failures = run_rows(rows, found, k, proto.ignore_index, lay.reduce_zero_label, work, key_of,
                            progress=not args.quiet, parallel=parallel)
    if failures:
        for line in failures:
            print(f"{PROG}: error: {line}", file=sys.stderr)
        raise FSAError(f"{len(failures)} of {len(found)} images failed (named above); no report written")
    extra = {"artifact": str(art.root), "artifact_sha256": sha}
    report = R.build(args.dataset, method, protocol, classes, len(found), rows, extra)
    write_json_atomic(args.json, report)
    if args.md:
        from fsa_deploy.runtime.artifact import atomic_file

        with atomic_file(args.md) as tmp:
            tmp.write_text(R.markdown(report))
    if args.plot:
        R.plot(report, args.plot)
    _print_summary(report)
    gate(report, args.max_miou_drop)
    return 0


def gate(report: dict[str, Any], max_drop: float | None) -> None:
    if max_drop is None:
        return
    bad = [f"{r['name']} ({r['backend']}) mIoU {r['miou_delta'] * 100:+.2f} points"
           for r in report["rows"] if r.get("miou_delta") is not None and r["miou_delta"] < -max_drop]
    if bad:
        raise CheckFailed(f"below the reference by more than {max_drop * 100:.2f} points: " + "; ".join(bad))


def _print_summary(report: dict[str, Any]) -> None:
    for r in report["rows"]:
        parts = [f"{r['name']:<16} {r['backend']:<20} mIoU {100 * (r['miou'] or 0):6.2f}"]
        if r.get("miou_delta") is not None:
            parts.append(f"delta {100 * r['miou_delta']:+.2f}")
        if r.get("pixel_agreement") is not None:
            parts.append(f"agreement {100 * r['pixel_agreement']:.2f}%")
        if r["images_per_s"]:
            parts.append(f"{r['images_per_s']:.2f} images/s")
        print("  ".join(parts), flush=True)


class _work_dir:
    """--work DIR (kept), or a temporary folder removed at the end."""

    def __init__(self, path: str | None):
        self.path, self.tmp = path, None

    def __enter__(self) -> Path:
        if self.path is None:
            self.tmp = tempfile.TemporaryDirectory(prefix="fsa-eval-")
            return Path(self.tmp.name)
        p = Path(self.path)
        if p.exists() and not p.is_dir():
            raise FSAError(f"--work {p}: exists and is not a folder")
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise FSAError(f"--work {p}: cannot create the folder ({e.strerror or e})") from e
        return p

    def __exit__(self, *exc: object) -> None:
        if self.tmp is not None:
            self.tmp.cleanup()


def open_rows(args: argparse.Namespace, art: Any, sha: str, proto: Any, vocab: Any) -> list:
    """The reference row (first) and one row per --graph (or the --backend choice) or per server."""
    from fsa_deploy.runtime.backends.graph import open_graph
    from fsa_deploy.runtime.backends.select import plugin
    from fsa_deploy.runtime.text import usable_cache_dir
    from fsa_deploy.validation.eval.runner import Row

    cache = None if args.no_cache else usable_cache_dir(args.cache_dir)
    rows = []
    if args.reference:
        backend = plugin("torch")(art, device="auto")
        rows.append(Row("reference", "pytorch", None, _segment_fn(backend, art, sha, proto, vocab, args, cache),
                        "pytorch", is_reference=True))
    if args.server:
        if args.graph:
            raise FSAError("--server with --graph: the servers run their own graph; give one or the other")
        from fsa_deploy.validation.eval.remote import server_row

        rows.append(server_row(args.server, art.meta, sha, proto, vocab))
        return rows
    for graph in args.graph or [None]:
        if graph is None and args.backend == "torch":
            backend, name = plugin("torch")(art, device="auto"), "torch"
            ident = "pytorch"
        else:
            backend, name, _ = open_graph(art, graph, args.backend, threads=args.threads)
            ident = f"{name}:{art.files().get(name, {}).get('sha256')}"
        if any(r.name == name for r in rows):
            name = f"{name} ({backend.name})"
        rows.append(Row(name, backend.name, None if args.backend == "torch" and graph is None else name,
                        _segment_fn(backend, art, sha, proto, vocab, args, cache), ident))
    return rows


def _segment_fn(backend: Any, art: Any, sha: str, proto: Any, vocab: Any, args: argparse.Namespace, cache: Any):
    from fsa_deploy.runtime.segmenter import Segmenter

    from fsa_deploy.contract import TOKENIZER_VOCAB

    vocab_file = art.path(TOKENIZER_VOCAB) if TOKENIZER_VOCAB in art.files() else None
    seg = Segmenter(backend, crop=proto.crop, logit_scale=proto.logit_scale, templates=list(art.meta["templates"]),
                    model_key=sha, max_batch=args.batch, cache_dir=cache, prob_thd=proto.prob_thd, below_thd=0,
                    stride=proto.stride, short_side=proto.short_side, long_side=proto.long_side,
                    vocab_file=vocab_file, artifact_sha256=sha)
    seg.set_classes(vocab)
    return lambda item, img: seg.segment(img).labels

"""Explicit quantization of image.onnx with NVIDIA ModelOpt: image.int8.onnx, image.fp8.onnx.

Why explicit (Q/DQ in the graph) rather than TensorRT's implicit calibration: TensorRT 11
removed implicit INT8 calibration, and a Q/DQ graph states which tensors run in low
precision, so the FSA feedback block (steps 8-13, node names under meta["feedback_scope"])
and everything after it stay in fp32 by construction, as in the fp16 export.

Calibration data are crops cut exactly as the pipeline cuts them (resize_image + crops_of),
with the text embeddings of a real vocabulary encoded by the artefact's text.onnx, so the
logits-side activations see realistic ranges. They are cached in the artefact folder as an
.npz keyed by the images' contents, the crop count and the text side.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from fsa_deploy.calibration.data import CalibrationData, calibration_data, image_files
from fsa_deploy.calibration.graph import QdqSummary, summarize
from fsa_deploy.calibration.meta import record
from fsa_deploy.calibration.modelopt_call import METHODS, link_source, require_modelopt, run_modelopt
from fsa_deploy.calibration.rules import EXCLUDED_OP_TYPES, Where, fp32_rules
from fsa_deploy.calibration.smooth import outlier_matmuls, smooth
from fsa_deploy.contract import (
    CALIBRATE_PRECISIONS,  # also ModelOpt's quantize_mode names
    IMAGE,
    IMAGE_ONNX,
    META,
    TEXT_EMBEDDINGS,
)
from fsa_deploy.errors import FSAError
from fsa_deploy.log import logger
from fsa_deploy.ranges import CALIBRATION_COUNT, CROPS_PER_CALL
from fsa_deploy.runtime import artifact as A
from fsa_deploy.runtime import gate, tempnames

if TYPE_CHECKING:
    from fsa_deploy.runtime.text import Vocabulary

LOG = logger("calibration")
REGIONS = ("proxy", "backbones")  # --quantize: the proxy's backbone only, or CLIP's trunk too


def output_name(precision: str) -> str:
    return f"image.{precision}.onnx"


@dataclass(frozen=True)
class CalibrationOptions:
    """What `fsa calibrate` was asked for."""

    precision: str = "int8"
    images: tuple[str, ...] = ()  # files or folders; empty: scikit-image's sample photos
    count: int = 64  # crops (the first `count` crops of the images, in order)
    batch: int = 1  # crops per calibration step: every calibrated activation of a batch is held at once
    method: str = "entropy"
    op_types: tuple[str, ...] = ()  # ops to quantize; empty: ModelOpt's placement (Add, LayerNorm, ... too)
    region: str | None = None  # REGIONS; None: the proxy where the model has one, else CLIP's trunk
    cache: bool = True
    classes: Vocabulary | None = None  # None: the default vocabulary (models/data/voc21.txt)
    lint: bool = True
    fp32_rules: bool = True  # False (debug, tests): quantize all but the FSA head and block, Softmax too

    def check(self) -> None:
        if self.precision not in CALIBRATE_PRECISIONS:
            raise FSAError(f"--precision {self.precision!r}: choose from {', '.join(CALIBRATE_PRECISIONS)}")
        if self.method not in METHODS:
            raise FSAError(f"--method {self.method!r}: choose from {', '.join(METHODS)}")
        CALIBRATION_COUNT.check(self.count)
        if self.region is not None and self.region not in REGIONS:
            raise FSAError(f"--quantize {self.region!r}: choose from {', '.join(REGIONS)}")
        CROPS_PER_CALL.check(self.batch)  # crops per calibration step


@dataclass(frozen=True)
class CalibrationResult:
    path: Path
    precision: str
    summary: QdqSummary
    fp32_nodes: dict[str, int]  # nodes each rule kept out of quantization (a node may match two rules)
    seconds: float
    data: CalibrationData


# ---------------------------------------------------------------- the verb


def quantized_region(art: A.Artifact, region: str | None) -> str:
    """--quantize: as asked, or the proxy where the model has one (CLIP's trunk otherwise)."""
    has_proxy = bool(art.info.proxy)
    if region == "proxy" and not has_proxy:
        raise FSAError(f"--quantize proxy: {art.root} has no proxy (attention {art.info.attention}); "
                       "use --quantize backbones")
    return region or ("proxy" if has_proxy else "backbones")


def source_graph(art: A.Artifact) -> Path:
    """image.onnx, hash-checked; it must be the fp32 export (ModelOpt calibrates in fp32)."""
    if IMAGE_ONNX not in art.files():
        raise FSAError(f"{art.root}: no {IMAGE_ONNX} recorded in {META} (calibrate needs the fp32 image graph "
                       "written by `fsa export`)")
    precision = art.file(IMAGE_ONNX).precision or "fp32"
    if precision != "fp32":
        raise FSAError(f"{art.root / IMAGE_ONNX}: precision {precision}; calibrate needs an fp32 export "
                       "(re-export without --precision)")
    return art.path(IMAGE_ONNX)


def calibrate(root: str | os.PathLike[str], opts: CalibrationOptions, progress: bool = True) -> CalibrationResult:
    """Write image.<precision>.onnx into the artefact folder and record it in meta.json.

    Every check that needs neither ModelOpt nor the graph comes first, so bad usage fails
    in a second, before any calibration work.
    """
    opts.check()
    art = A.Artifact.load(root)
    source_graph(art)
    opts = replace(opts, region=quantized_region(art, opts.region))
    if opts.op_types:
        import onnx

        present = {n.op_type for n in onnx.load(str(art.path(IMAGE_ONNX)), load_external_data=False).graph.node}
        if absent := sorted(set(opts.op_types) - present):
            raise FSAError(f"--op-types {','.join(absent)}: no such node in {art.root / IMAGE_ONNX}")
    files = image_files(opts.images)
    quantize = require_modelopt()
    t0 = time.perf_counter()
    data = calibration_data(art, files, opts)
    if progress:
        LOG.info(f"fsa calibrate: {len(data.crops)} crops from {len(data.images)} image(s), K = {len(data.text)}"
                 + (f" ({'cached' if data.cache_hit else 'saved'}: {data.cache})" if data.cache else ""))
        if len(data.crops) < opts.count:
            LOG.info(f"fsa calibrate: --calibration-count {opts.count}: the images give only {len(data.crops)} crops; "
                     "using them all")
    name = output_name(opts.precision)
    summary, fp32_nodes, written = quantize_into(art, name, quantize, data, opts, progress)
    seconds = time.perf_counter() - t0
    record(art, name, opts, data, summary, fp32_nodes, seconds, has_data=len(written) > 1)
    return CalibrationResult(art.root / name, opts.precision, summary, fp32_nodes, seconds, data)


def smooth_outliers(src: Path, work: Path, data: CalibrationData, progress: bool) -> tuple[Path, list[str]]:
    """The graph ModelOpt calibrates: LayerNorm spread smoothed into the next MatMuls, and the MatMuls
    whose input still has outlier channels (kept in fp32). A graph without them comes back as it was."""
    feeds = [{IMAGE: data.crops[i:i + 1], TEXT_EMBEDDINGS: data.text} for i in range(min(8, len(data.crops)))]
    smoothed = work / "smoothed.onnx"
    n = smooth(src, smoothed, feeds)
    src = smoothed if n else src
    outliers = outlier_matmuls(src, feeds)
    if progress and (n or outliers):
        LOG.info(f"fsa calibrate: {n} LayerNorm(s) smoothed into their MatMuls; {len(outliers)} node(s) with outlier "
                 "input channels kept in fp32")
    return src, outliers


@contextlib.contextmanager
def owned_tempdir(folder: Path) -> Iterator[None]:
    """Point tempfile (and TMPDIR, for child code) at `folder` inside the block: libraries that make
    temporary files (ModelOpt writes intermediate ONNX models) make them in a folder we remove."""
    gate.mkdir(folder)
    saved, env = tempfile.tempdir, {k: os.environ.get(k) for k in ("TMPDIR", "TEMP", "TMP")}
    tempfile.tempdir = str(folder)
    os.environ.update({k: str(folder) for k in env})
    try:
        yield
    finally:
        tempfile.tempdir = saved
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def quantize_into(art: A.Artifact, name: str, quantize: Callable[..., None], data: CalibrationData,
                  opts: CalibrationOptions, progress: bool) -> tuple[QdqSummary, dict[str, int], list[str]]:
    """ModelOpt in a temporary folder inside the artefact; checks (fp32 block untouched, lint)
    before the result is renamed into place, so a failed run leaves nothing behind."""
    import onnx

    scope = art.info.feedback_scope
    gate.sweep_stale(art.root)  # what a killed calibration left (our marker, its PID gone)
    with gate.writing_into(art.root), gate.temp_dir(tempnames.temp_prefix("calibrate"), where=art.root) as tmp, \
            owned_tempdir(Path(tmp) / "tmp"):  # ModelOpt's and ORT's own temp files: in ours, gone with it
        work = Path(tmp)
        src, external = link_source(art, work)
        graph = onnx.load(str(src), load_external_data=False).graph
        rules = fp32_rules(graph, Where(scope, art.info.stages, opts.region))
        if not opts.fp32_rules:  # only what keeps Q/DQ off the feedback block's boundary
            rules = {k: v if k == "tail_and_boundary" else [] for k, v in rules.items()}
        else:  # post-LN channel spread and outlier channels (calibration/smooth.py), external data or not
            src, rules["outlier_inputs"] = smooth_outliers(src, work, data, progress)
        exclude = sorted(set().union(*rules.values()))
        fp32_nodes = {k: len(v) for k, v in rules.items()}
        if progress:
            LOG.info(f"fsa calibrate: ModelOpt {opts.precision} ({opts.method}, CPU) on the {opts.region}; fp32 kept: "
                     f"{scope or '(no scope)'}* + {len(exclude)} nodes ({fp32_nodes}) + {', '.join(EXCLUDED_OP_TYPES)}")
        run_modelopt(quantize, src, work / name, data, opts, exclude, external, scope, progress)
        summary = summarize(onnx.load(str(work / name), load_external_data=False).graph, scope)
        if summary.in_scope:
            raise FSAError(f"{name}: ModelOpt put Q/DQ next to the fp32 block ({', '.join(summary.in_scope[:3])}); "
                           "not written")
        if opts.lint:
            from fsa_deploy.export.lint import assert_lint_clean

            assert_lint_clean(str(work / name))
        written = [n for n in (name, name + "_data") if (work / n).is_file()]
        for n in written:
            gate.replace(work / n, art.root / n)  # same file system: a rename, never a half-written file
    return summary, fp32_nodes, written



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
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from fsa_deploy.runtime import artifact as A

from fsa_deploy.contract import CALIBRATE_PRECISIONS  # also ModelOpt's quantize_mode names
from fsa_deploy.errors import FSAError

if TYPE_CHECKING:
    import onnx
    from fsa_deploy.runtime.text import Vocabulary

REGIONS = ("proxy", "backbones")  # --quantize: the proxy's backbone only, or CLIP's trunk too
METHODS = {"entropy": "entropy", "max": "max"}  # --method -> ModelOpt's calibration_method
EXCLUDED_OP_TYPES = ("Softmax",)  # never quantized: a Softmax in int8/fp8 flattens attention
CALIBRATION_EPS = ["cpu"]  # ORT execution providers for calibration (no GPU needed)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
CACHE_PREFIX = "calibration-"
CACHE_ROLE = "calibration-cache"
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
MODELOPT_HINT = "NVIDIA ModelOpt is not installed: pip install 'fsa-deploy[quant]' (see README)"


def output_name(precision: str) -> str:
    return f"image.{precision}.onnx"


@dataclass(frozen=True)
class Options:
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

    def check(self) -> None:
        if self.precision not in CALIBRATE_PRECISIONS:
            raise FSAError(f"--precision {self.precision!r}: choose from {', '.join(CALIBRATE_PRECISIONS)}")
        if self.method not in METHODS:
            raise FSAError(f"--method {self.method!r}: choose from {', '.join(METHODS)}")
        if self.count < 1:
            raise FSAError(f"--count {self.count}: must be >= 1 (crops used for calibration)")
        if self.region is not None and self.region not in REGIONS:
            raise FSAError(f"--quantize {self.region!r}: choose from {', '.join(REGIONS)}")
        if self.batch < 1:
            raise FSAError(f"--batch {self.batch}: must be >= 1 (crops per calibration step)")


@dataclass(frozen=True)
class CalibrationData:
    crops: np.ndarray  # float32 [N, 3, S, S], RGB 0-255, as fed to image.onnx
    text: np.ndarray  # float32 [K, D], rows L2-normalised
    images: list[str]  # the image files the crops came from
    cache: str | None = None  # name of the .npz in the artefact folder
    cache_hit: bool = False


@dataclass
class QdqSummary:
    """What a Q/DQ graph quantizes; `in_scope` lists Q/DQ nodes that touch the fp32 block (must be empty)."""

    pairs: int = 0
    quantized_ops: Counter = field(default_factory=Counter)  # op type -> nodes fed by a DQ
    in_scope: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Result:
    path: Path
    precision: str
    summary: QdqSummary
    fp32_nodes: dict[str, int]  # nodes each rule kept out of quantization (a node may match two rules)
    seconds: float
    data: CalibrationData


# ---------------------------------------------------------------- calibration images and crops


def image_files(sources: Sequence[str]) -> list[Path]:
    """--images: files as given, folders expanded to their image files (sorted); none is an error."""
    if not sources:
        from fsa_deploy.runtime.images import sample_photos

        sources = sample_photos()
    files: list[Path] = []
    for s in sources:
        p = Path(s)
        if p.is_dir():
            files.extend(sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES))
        elif p.is_file():
            files.append(p)
        else:
            raise FSAError(f"--images {s}: no such file or folder")
    if not files:
        raise FSAError(f"--images {' '.join(map(str, sources))}: no calibration images "
                       f"(looked for {', '.join(IMAGE_SUFFIXES)})")
    return files


def pipeline_crops(files: Iterable[Path], crop: int, count: int) -> tuple[np.ndarray, list[str]]:
    """The first `count` crops of the images, cut as `fsa segment` cuts them (default geometry)."""
    import torch
    from fsa_deploy.runtime.images import load_image
    from fsa_deploy.runtime.pipeline import Geometry, crops_of, resize_image

    geo, crops, used, have = Geometry(crop=crop), [], [], 0
    with torch.no_grad():
        for f in files:
            batch, _ = crops_of(resize_image(load_image(f), geo), geo)
            crops.append(batch[: count - have])
            used.append(str(f))
            have += len(crops[-1])
            if have >= count:
                break
    return torch.cat(crops).float().numpy(), used


# ---------------------------------------------------------------- text embeddings


def vocabulary_text(art: A.Artifact, vocab: Vocabulary) -> np.ndarray:
    """T [K, D] of the vocabulary, encoded by the artefact's text.onnx with the recorded templates.

    Real class embeddings rather than random vectors: the logits and the feedback inputs
    then have the ranges they have in use, which is what the calibrator measures.
    """
    import onnxruntime as ort
    import torch
    from fsa_deploy.models.text import openai_templates
    from fsa_deploy.runtime.text import classifier

    session = ort.InferenceSession(str(art.path(A.TEXT_ONNX)), providers=["CPUExecutionProvider"])

    def encode(tokens: torch.Tensor) -> torch.Tensor:
        out = session.run([A.EMBEDDINGS], {A.TOKENS: tokens.numpy().astype(np.int32)})[0]
        return torch.from_numpy(out)

    templates = art.meta.get("templates") or openai_templates()
    return classifier(encode, vocab.queries, templates).numpy().astype(np.float32)


def default_vocabulary() -> Vocabulary:
    from fsa_deploy.runtime.text import DEFAULT_CLASSES, Vocabulary

    return Vocabulary.from_file(DEFAULT_CLASSES)


# ---------------------------------------------------------------- the cache (.npz in the artefact folder)


def data_key(art: A.Artifact, files: Sequence[Path], count: int, vocab: Vocabulary) -> str:
    """What the calibration tensors depend on: image contents, count, crop size, text side."""
    blob = json.dumps({
        "images": [A.sha256_file(f) for f in files],
        "count": count,
        "crop": art.meta.get("crop"),
        "text": art.files().get(A.TEXT_ONNX, {}).get("sha256"),
        "queries": vocab.queries,
    })
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_cached(art: A.Artifact, name: str) -> CalibrationData | None:
    """The cached tensors, or None when absent or changed (a damaged cache is recomputed, not trusted)."""
    if name not in art.files() or not (art.root / name).is_file():
        return None
    try:
        with np.load(art.path(name)) as z:
            return CalibrationData(z["crops"], z["text_embeddings"], [str(x) for x in z["images"]], name, True)
    except (FSAError, OSError, KeyError, ValueError):
        return None


def save_cache(art: A.Artifact, name: str, data: CalibrationData) -> None:
    """Write the .npz atomically, drop older caches (they hold crops: tens of MB each), record it."""
    for old in [n for n, info in art.files().items() if info.get("role") == CACHE_ROLE and n != name]:
        (art.root / old).unlink(missing_ok=True)
        del art.files()[old]
    with A.atomic_file(art.root / name) as tmp, open(tmp, "wb") as f:
        np.savez(f, crops=data.crops, text_embeddings=data.text, images=np.array(data.images))
    art.record(name, role=CACHE_ROLE, crops=int(len(data.crops)), images=data.images)
    art.save()


def calibration_data(art: A.Artifact, files: Sequence[Path], opts: Options) -> CalibrationData:
    vocab = opts.classes or default_vocabulary()
    name = f"{CACHE_PREFIX}{data_key(art, files, opts.count, vocab)}.npz"
    if opts.cache and (hit := load_cached(art, name)):
        return hit
    crops, used = pipeline_crops(files, int(art.meta["crop"]), opts.count)
    data = CalibrationData(crops, vocabulary_text(art, vocab), used, name if opts.cache else None)
    if opts.cache:
        save_cache(art, name, data)
    return data


class DataReader:
    """ModelOpt's calibration reader protocol (get_next/get_first/rewind): batches of crops, each
    with the whole text matrix. ModelOpt's own provider would split text_embeddings along K."""

    def __init__(self, data: CalibrationData, batch: int):
        self.feeds = [{A.IMAGE: data.crops[i : i + batch], A.TEXT_EMBEDDINGS: data.text}
                      for i in range(0, len(data.crops), batch)]
        self.i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        self.i += 1
        return self.feeds[self.i - 1] if self.i <= len(self.feeds) else None

    def get_first(self) -> dict[str, np.ndarray]:
        return self.feeds[0]

    def rewind(self) -> None:
        self.i = 0


# ---------------------------------------------------------------- what stays in fp32


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for t in n.input:
            out.setdefault(t, []).append(n)
    return out


def _reach(start: Iterable[onnx.NodeProto], step: Callable[[onnx.NodeProto], Iterable[onnx.NodeProto]]) -> set[str]:
    """Names of the nodes reached from `start` by following `step` (a walk over the graph)."""
    seen: set[str] = set()
    todo = list(start)
    while todo:
        node = todo.pop()
        if node.name not in seen:
            seen.add(node.name)
            todo.extend(step(node))
    return seen


def downstream(graph: onnx.GraphProto, tensors: list[str]) -> set[str]:
    """Names of the nodes that read the given tensors, directly or through other nodes."""
    consumers = _consumers(graph)
    return _reach((c for t in tensors for c in consumers.get(t, [])),
                  lambda n: (c for t in n.output for c in consumers.get(t, [])))


def upstream(graph: onnx.GraphProto, tensors: list[str]) -> set[str]:
    """Names of the nodes the given tensors are computed from, directly or through other nodes."""
    producer = {t: n for n in graph.node for t in n.output}
    return _reach((producer[t] for t in tensors if t in producer),
                  lambda n: (producer[t] for t in n.input if t in producer))


def clip_trunk_nodes(graph: onnx.GraphProto, stages: dict[str, str]) -> list[str]:
    """CLIP's trunk: what the values V' are computed from and the proxy features are not.

    `--quantize proxy` keeps it in fp32. CLIP's patch features are matched against the text
    directly, so their int8 noise lands on class margins; the proxy only shapes attention.
    Measured on ViT-B-16 + DINO B/8 at 336 (random init, one crop): with CLIP's trunk in int8,
    crop logits rel L2 0.046 and pixel agreement 0.59; the proxy alone, 0.0044 and 0.997. The
    proxy is 415 of the 521 GFLOP of a crop.
    """
    if "values" not in stages or "proxy_features" not in stages:
        return []
    return sorted(upstream(graph, [stages["values"]]) - upstream(graph, [stages["proxy_features"]]))


def excluded_nodes(graph: onnx.GraphProto, scope: str, head_inputs: tuple[str, ...] = ()) -> list[str]:
    """Nodes kept out of quantization besides the block itself (the names under `scope`).

    - the FSA head: everything downstream of `head_inputs` (the stage tensors proxy_features
      and values: steps 6-15). The proxy attention thresholds a cosine similarity at its
      mean and the feedback sharpens it with exp(lamda * Sim); quantization noise there
      flips masks (measured on the tiny config: 1,526 proxy-mask flips, pixel agreement
      0.69 with it quantized). The fp16 export keeps the head in fp32 too;
    - downstream of the block (steps 14-15, the tail), for the same reason;
    - outside nodes that read a tensor the block reads: ModelOpt quantizes a shared tensor
      once and feeds the DQ output to every consumer, the block's node included.
    """
    head = downstream(graph, list(head_inputs))
    block = {n.name for n in graph.node if n.name.startswith(scope)}
    if not block:
        return sorted(head)
    consumers = _consumers(graph)
    block_out = {t for n in graph.node if n.name in block for t in n.output}
    block_in = {t for n in graph.node if n.name in block for t in n.input if t and t not in block_out}
    neighbours = {c.name for t in block_in for c in consumers.get(t, []) if c.name not in block}
    def readers_outside(tensors: Iterable[str]) -> Iterable[onnx.NodeProto]:
        return (c for t in tensors for c in consumers.get(t, []) if c.name not in block)

    tail = _reach(readers_outside(block_out), lambda n: readers_outside(n.output))
    return sorted((neighbours | tail | head) - block)


def probability_matmuls(graph: onnx.GraphProto) -> list[str]:
    """MatMuls that read a Softmax output: attention probabilities times values.

    Per-tensor int8 cannot hold a probability row: its scale follows the row's largest
    entry, so the near-uniform rows of a flat attention (1 / N each, N = 442 at ViT-B-16 336)
    land on a handful of levels and A V comes out scaled. Measured on ViT-B-16 + DINO B/8
    (random init): quantizing them took CLIP's residual stream from 0.6% to 9% relative error
    in the first block and the values to 35%. They are 5% (CLIP, 442 tokens) to 16% (DINO B/8,
    1765 tokens) of a backbone's matmul work.
    """
    softmax_out = {t for n in graph.node if n.op_type == "Softmax" for t in n.output}
    return sorted(n.name for n in graph.node if n.op_type == "MatMul" and softmax_out & set(n.input))


def summarize(graph: onnx.GraphProto, scope: str) -> QdqSummary:
    """Count Q/DQ pairs and the ops they feed; list any Q/DQ next to a node of the fp32 block."""
    producer = {t: n for n in graph.node for t in n.output}
    consumers = _consumers(graph)
    s = QdqSummary()
    for n in graph.node:
        if n.op_type not in QDQ_OPS:
            continue
        s.pairs += n.op_type == "QuantizeLinear"
        after = [c for t in n.output for c in consumers.get(t, [])]
        before = [producer[t] for t in n.input if t in producer]
        if n.op_type == "DequantizeLinear":
            s.quantized_ops.update(c.op_type for c in after if c.op_type not in QDQ_OPS)
        if scope and any(m.name.startswith(scope) for m in (*before, *after)):
            s.in_scope.append(n.name)
    return s


# ---------------------------------------------------------------- ModelOpt


def _hide_stub_tensorrt() -> None:
    """`tensorrt-stubs` leaves an importable, empty namespace package `tensorrt`; ModelOpt takes
    the successful import for TensorRT and calls trt.Logger. Where the real module is absent,
    make the import fail as it would without the stubs (a None entry raises ImportError)."""
    try:
        import tensorrt
    except (ImportError, OSError):
        return
    if not hasattr(tensorrt, "Builder"):
        sys.modules["tensorrt"] = None  # type: ignore[assignment]
        trt_utils = sys.modules.get("modelopt.onnx.trt_utils")
        if trt_utils is not None:  # imported before us: correct its flag too
            trt_utils.TRT_PYTHON_AVAILABLE = False  # type: ignore[attr-defined]


def require_modelopt() -> Callable[..., None]:
    """modelopt.onnx.quantization.quantize, or one line naming the install command."""
    _hide_stub_tensorrt()
    try:
        from modelopt.onnx.quantization import quantize
    except ImportError as e:
        raise FSAError(MODELOPT_HINT) from e
    return quantize


def modelopt_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nvidia-modelopt")
    except PackageNotFoundError:
        return "absent"


def _link_source(art: A.Artifact, work: Path) -> tuple[Path, bool]:
    """image.onnx (and its external data) linked into the work folder: ModelOpt writes its
    intermediate files beside the input and output, never into the artefact folder."""
    names = [A.IMAGE_ONNX] + [n for n, i in art.files().items()
                              if i.get("role") == "external-data" and n.startswith(A.IMAGE_ONNX)]
    for n in names:
        src = art.path(n).resolve()
        try:
            os.symlink(src, work / n)
        except OSError:
            import shutil

            shutil.copy2(src, work / n)
    return work / A.IMAGE_ONNX, len(names) > 1


def run_modelopt(quantize: Callable[..., None], src: Path, out: Path, data: CalibrationData, opts: Options,
                 exclude: list[str], external: bool, scope: str, progress: bool = True) -> None:
    patterns = ([f"^{re.escape(scope)}"] if scope else []) + [re.escape(n) + "$" for n in exclude]
    try:
        # ORT's calibrator prints and tqdm draws bars: on stderr with progress, nowhere with --quiet;
        # stdout is for the result either way
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(sys.stderr if progress else null), \
                contextlib.redirect_stderr(sys.stderr if progress else null):
            quantize(str(src), quantize_mode=opts.precision, calibration_data_reader=DataReader(data, opts.batch),
                     calibration_method=METHODS[opts.method], calibration_eps=list(CALIBRATION_EPS),
                     output_path=str(out), high_precision_dtype="fp32", nodes_to_exclude=patterns,
                     op_types_to_exclude=list(EXCLUDED_OP_TYPES), use_external_data_format=external,
                     op_types_to_quantize=list(opts.op_types) or None,
                     log_level="WARNING")
    except Exception as e:  # ModelOpt/ORT raise many types (asserts included); one line, cause chained
        msg = (str(e).strip().splitlines() or [""])[0][:200]
        raise FSAError(f"ModelOpt {opts.precision} quantization of {src.name} failed on the CPU "
                       f"({type(e).__name__}: {msg})") from e
    if not out.is_file():
        raise FSAError(f"ModelOpt {opts.precision} quantization of {src.name} wrote no model")


# ---------------------------------------------------------------- the verb


def quantized_region(art: A.Artifact, region: str | None) -> str:
    """--quantize: as asked, or the proxy where the model has one (CLIP's trunk otherwise)."""
    has_proxy = bool(art.meta.get("proxy"))
    if region == "proxy" and not has_proxy:
        raise FSAError(f"--quantize proxy: {art.root} has no proxy (attention {art.meta.get('attention')}); "
                       "use --quantize backbones")
    return region or ("proxy" if has_proxy else "backbones")


def source_graph(art: A.Artifact) -> Path:
    """image.onnx, hash-checked; it must be the fp32 export (ModelOpt calibrates in fp32)."""
    if A.IMAGE_ONNX not in art.files():
        raise FSAError(f"{art.root}: no {A.IMAGE_ONNX} recorded in {A.META} (calibrate needs the fp32 image graph "
                       "written by `fsa export`)")
    precision = art.files()[A.IMAGE_ONNX].get("precision", "fp32")
    if precision != "fp32":
        raise FSAError(f"{art.root / A.IMAGE_ONNX}: precision {precision}; calibrate needs an fp32 export "
                       "(re-export without --precision)")
    return art.path(A.IMAGE_ONNX)


def say(msg: str) -> None:
    print(f"fsa calibrate: {msg}", file=sys.stderr, flush=True)


def calibrate(root: str | os.PathLike[str], opts: Options, progress: bool = True) -> Result:
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

        present = {n.op_type for n in onnx.load(str(art.path(A.IMAGE_ONNX)), load_external_data=False).graph.node}
        if absent := sorted(set(opts.op_types) - present):
            raise FSAError(f"--op-types {','.join(absent)}: no such node in {art.root / A.IMAGE_ONNX}")
    files = image_files(opts.images)
    quantize = require_modelopt()
    t0 = time.perf_counter()
    data = calibration_data(art, files, opts)
    if progress:
        say(f"{len(data.crops)} crops from {len(data.images)} image(s), K = {len(data.text)}"
            + (f" ({'cached' if data.cache_hit else 'saved'}: {data.cache})" if data.cache else ""))
        if len(data.crops) < opts.count:
            say(f"--count {opts.count}: the images give only {len(data.crops)} crops; using them all")
    name = output_name(opts.precision)
    summary, fp32_nodes, written = quantize_into(art, name, quantize, data, opts, progress)
    seconds = time.perf_counter() - t0
    record(art, name, opts, data, summary, fp32_nodes, seconds, has_data=len(written) > 1)
    return Result(art.root / name, opts.precision, summary, fp32_nodes, seconds, data)


def quantize_into(art: A.Artifact, name: str, quantize: Callable[..., None], data: CalibrationData, opts: Options,
                  progress: bool) -> tuple[QdqSummary, dict[str, int], list[str]]:
    """ModelOpt in a temporary folder inside the artefact; checks (fp32 block untouched, lint)
    before the result is renamed into place, so a failed run leaves nothing behind."""
    import onnx

    scope = str(art.meta.get("feedback_scope") or "")
    with tempfile.TemporaryDirectory(prefix=".calibrate-", dir=art.root) as tmp:
        work = Path(tmp)
        src, external = _link_source(art, work)
        stages = art.meta.get("stages", {})
        head = tuple(stages[n] for n in ("proxy_features", "values") if n in stages)
        graph = onnx.load(str(src), load_external_data=False).graph
        rules = {"tail_and_boundary": excluded_nodes(graph, scope, head),
                 "probability_matmuls": probability_matmuls(graph),
                 "clip_trunk": clip_trunk_nodes(graph, stages) if opts.region == "proxy" else []}
        exclude = sorted(set().union(*rules.values()))
        fp32_nodes = {k: len(v) for k, v in rules.items()}
        if progress:
            say(f"ModelOpt {opts.precision} ({opts.method}, CPU) on the {opts.region}; fp32 kept: "
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
            os.replace(work / n, art.root / n)  # same file system: a rename, never a half-written file
    return summary, fp32_nodes, written


def record(art: A.Artifact, name: str, opts: Options, data: CalibrationData, summary: QdqSummary,
           fp32_nodes: dict[str, int], seconds: float, has_data: bool) -> None:
    if has_data:
        art.record(name + "_data", role="external-data")
    art.record(name, role="image-qdq", precision=opts.precision, source=A.IMAGE_ONNX,
               source_sha256=art.files()[A.IMAGE_ONNX]["sha256"],
               calibration={"method": opts.method, "region": opts.region, "count": int(len(data.crops)),
                            "batch": opts.batch, "op_types": list(opts.op_types) or "modelopt", "images": data.images,
                            "classes": int(len(data.text)), "cache": data.cache, "seconds": round(seconds, 1)},
               qdq_pairs=summary.pairs, quantized_ops=dict(summary.quantized_ops),
               fp32_nodes={"scope": art.meta.get("feedback_scope"), **fp32_nodes,
                           "op_types": list(EXCLUDED_OP_TYPES)},
               modelopt=modelopt_version())
    art.save()

"""The fp16 range audit: which nodes of a graph would leave a safe fp16 range, from measured ranges.

Why an audit and not a run: ONNX Runtime's CPU kernels evaluate an fp16 graph in fp32 arithmetic
between Casts, so an fp16 graph that passes validation there proves only the rounding at tensor
boundaries. TensorRT (and any GPU fp16 kernel) computes inside the node in fp16: LayerNorm's sum
of squares, a reduction's sum, attention logits. A model with massive activations (a residual
channel at ~1000, docs/PRECISION.md) overflows exactly there: 2 * 1000^2 > 65504.

So: run the fp32 graph on calibration crops, record every float tensor's absmax and every
reducing node's internal sum (`measure`), then flag each low-precision node whose inputs, outputs
or internal sum pass SAFE_FP16 (`audit`). `fsa export --precision fp16` keeps the flagged nodes and
the policy's (`structural_islands`: the input normalisation, the FSA head, the feedback; `precision_policy`:
LayerNorms, square sums, softmax inputs) in fp32: the fp32 islands (`fp32_islands`),
converts the rest with ModelOpt's AutoCast from the fp32 graph, so the audit's tensor names are the
graph's own (`to_fp16`), and records islands and ranges in meta.json; `fsa lint` re-runs the audit
on an artefact's fp16 graph from those ranges.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np

from fsa_deploy.contract import IMAGE, META, TEXT_EMBEDDINGS
from fsa_deploy.errors import FSAError
from fsa_deploy.export.graph_probe import ort_session, probe_options, with_absmax_outputs
from fsa_deploy.export.graph_walk import Walk
from fsa_deploy.models.text import openai_templates
from fsa_deploy.runtime.artifact import Artifact
from fsa_deploy.runtime.backends.trt_lib import hide_stub_tensorrt
from fsa_deploy.runtime.images import expand_images, load_image, sample_photos
from fsa_deploy.runtime.pipeline import Geometry, crops_of, resize_image
from fsa_deploy.runtime.text import DEFAULT_CLASSES, Vocabulary, classifier

SAFE_FP16 = 16384.0  # a quarter of fp16's largest value: headroom for inputs the calibration did not see
FLOAT, FLOAT16 = 1, 10  # onnx.TensorProto elem types
EXTERNAL = 1  # onnx.TensorProto.EXTERNAL: an initializer whose data lies in another file
SQUARE_SUMS = ("LayerNormalization", "ReduceL2", "ReduceSumSquare")  # sum of squares inside the node
FP32_MAX = float(np.finfo(np.float32).max)  # a LayerNorm's hidden fp32 sum of squares past this: inf in the fp32 graph
PLAIN_SUMS = ("ReduceMean", "ReduceSum")  # sum of |x| before any division
SHAPE_ONLY = {"Shape", "Cast", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Gather", "Concat",
              "Expand", "Split", "Identity", "Constant", "ConstantOfShape", "Not", "Where", "Equal",
              "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "TopK", "ReduceMax", "ReduceMin"}


@dataclass
class Ranges:
    """What the fp32 graph did on the calibration crops."""

    absmax: dict[str, float] = field(default_factory=dict)  # float tensor -> largest |value|
    sums: dict[str, float] = field(default_factory=dict)  # node -> largest internal sum (see SQUARE_SUMS)
    crops: int = 0

    def describe(self) -> dict[str, Any]:
        return {"crops": self.crops, "absmax": {k: _finite(v) for k, v in self.absmax.items()},
                "sums": {k: _finite(v) for k, v in self.sums.items()}}

    @classmethod
    def from_description(cls, d: dict[str, Any]) -> Ranges:
        return cls({str(k): float(v) for k, v in d.get("absmax", {}).items()},
                   {str(k): float(v) for k, v in d.get("sums", {}).items()}, int(d.get("crops", 0)))


def _finite(v: float) -> float:
    return float(v) if math.isfinite(v) else 1e38  # strict JSON; still far past any bound


@dataclass(frozen=True)
class Finding:
    """One low-precision node past the bound: `what` names the tensor or the internal sum."""

    node: str
    op: str
    what: str
    value: float
    bound: float = SAFE_FP16

    def line(self) -> str:
        return f"{self.node} ({self.op}): {self.what} reaches {self.value:.4g} > {self.bound:g}"


# ---------------------------------------------------------------- measuring the fp32 graph


def _axes(node, consts: dict[str, np.ndarray], rank: int) -> tuple[int, ...] | None:
    if node.op_type == "LayerNormalization":
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        return tuple(range(axis % rank, rank))
    axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
    if axes is None and len(node.input) > 1 and node.input[1] in consts:
        axes = consts[node.input[1]].astype(int).ravel().tolist()
    if axes is None:
        return tuple(range(rank))
    return tuple(a % rank for a in axes)


def _constants(model) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type in (6, 7)
           and t.data_location != EXTERNAL}  # stored outside (over 1 KB): a weight, never a shape or an exponent
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and a.t.data_type in (6, 7):
                    out[n.output[0]] = numpy_helper.to_array(a.t)
    return out


def float_tensors(model) -> list[str]:
    """Every float32 tensor a node writes (graph outputs included), by shape inference's types."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in
             (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input)}
    return [t for n in model.graph.node for t in n.output if t and types.get(t) == FLOAT]


class NonFinite(FSAError):
    """The fp32 graph itself is not finite on calibration data: no precision decision can rest on it."""


def measure(path: str | Path, feeds: Iterable[dict[str, np.ndarray]], labels: list[str] | None = None) -> Ranges:
    """Run the fp32 graph once per feed; keep each float tensor's absmax (reduced in the graph) and each reducing
    node's internal sum (from its input, in float64). Fails closed: a NaN or inf anywhere but in a mask built on
    purpose (+-inf there, never NaN) raises NonFinite naming the first such tensor in graph order and the crop
    (`labels[i]` for feed i). A LayerNorm whose own sum of squares (fp32, its stash_type) passes fp32's largest
    value is refused too: its output is then finite (0) but wrong, and no tensor shows it.

    Memory, one full-size ViT-B-16 + DINO B/8 crop: 24 GB (killed) with every tensor as an output, 11.4 GB with the
    in-graph absmax in ONNX Runtime's default order (which runs the whole forward before the absmax chains), 4 GB
    in its priority-based order (node order: each chain right after its tensor)."""
    import onnx

    model = onnx.load(str(path))
    names = [i.name for i in model.graph.input if i.type.tensor_type.elem_type == FLOAT] + float_tensors(model)
    walk = Walk(model.graph)
    consts = _constants(model)
    reducing = [n for n in model.graph.node if n.op_type in SQUARE_SUMS + PLAIN_SUMS]
    probes = with_absmax_outputs(model, names)
    existing = {o.name for o in model.graph.output}
    for t in dict.fromkeys(n.input[0] for n in reducing):  # LayerNorm / reduction inputs: [B, N, d] at most
        if t not in existing:
            model.graph.output.append(onnx.ValueInfoProto(name=t))
    sess = ort_session(model, probe_options())  # priority-based order: see the docstring
    wanted = list(dict.fromkeys([*probes.absmax.values(), *probes.bad.values(), *(n.input[0] for n in reducing)]))
    r = Ranges()
    for i, feed in enumerate(feeds):
        values = dict(zip(wanted, sess.run(wanted, feed)))
        first = next((t for t in names if values[probes.bad[t]] != 0), None)
        if first is not None:
            crop = labels[i] if labels and i < len(labels) else f"feed {i}"
            node = walk.producer_of(first)
            raise NonFinite(f"{Path(path).name}: tensor {first} "
                            + (f"({node.op_type} {node.name}) " if node is not None else "(graph input) ")
                            + f"is NaN or inf in fp32 on calibration crop {crop}: the model overflows before any "
                            "precision choice; refused")
        for t, o in probes.absmax.items():
            r.absmax[t] = max(r.absmax.get(t, 0.0), float(values[o]))
        for n in reducing:
            x = values.get(n.input[0])
            if x is None or not x.size:
                continue
            x = x.astype(np.float64)
            axes = _axes(n, consts, x.ndim)
            if n.op_type == "LayerNormalization":
                s = ((x - x.mean(axis=axes, keepdims=True)) ** 2).sum(axis=axes)
            elif n.op_type in SQUARE_SUMS:
                s = (x ** 2).sum(axis=axes)
            else:
                s = np.abs(x).sum(axis=axes)
            r.sums[n.name] = max(r.sums.get(n.name, 0.0), _at_least_inf(float(np.max(s))))
            if n.op_type == "LayerNormalization" and not r.sums[n.name] <= FP32_MAX:
                crop = labels[i] if labels and i < len(labels) else f"feed {i}"
                raise NonFinite(f"{Path(path).name}: LayerNormalization {n.name}'s sum of squares reaches "
                                f"{r.sums[n.name]:.3g}, inf in fp32, on calibration crop {crop}: the model overflows "
                                "before any precision choice; refused")
        r.crops += len(next(iter(feed.values())))
    return r


def _at_least_inf(v: float) -> float:
    """NaN (a float64 sum of finite fp32 values never is one, but) counts as past every bound."""
    return v if not math.isnan(v) else math.inf


# ---------------------------------------------------------------- the audit


def _types(model) -> dict[str, int]:
    import onnx

    try:
        g = onnx.shape_inference.infer_shapes(model).graph
    except (onnx.shape_inference.InferenceError, ValueError):  # past 2 GB (ValueError) or a graph it cannot type:
        g = model.graph  # the types the graph itself declares
    out = {vi.name: vi.type.tensor_type.elem_type for vi in (*g.value_info, *g.output, *g.input)}
    out.update({t.name: t.data_type for t in model.graph.initializer})
    return out


def low_precision_nodes(model) -> list[str]:
    """Nodes computing in fp16: a float16 input or output (Casts and shape plumbing aside)."""
    types = _types(model)
    return [n.name for n in model.graph.node if n.op_type != "Cast"
            and any(types.get(t) == FLOAT16 for t in (*n.input, *n.output) if t)]


def _origin(model) -> dict[str, str]:
    """A Cast's output -> the tensor it casts (so an fp16 graph's names resolve to the fp32 ranges)."""
    links = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Cast"}

    def root(t: str) -> str:
        seen = 0
        while t in links and seen < 8:
            t, seen = links[t], seen + 1
        return t
    return {t: root(t) for t in links}


def _range_of(model, ranges: Ranges) -> Callable[[str], float | None]:
    """Tensor -> its measured absmax in the fp32 graph, through AutoCast's Casts both ways: a Cast's output has
    its input's range, and a tensor a Cast reads (AutoCast renames a graph output's producer's output and casts it
    back to the output's name, also when other nodes read it: FSA's stage outputs) has the range of what it
    writes."""
    origin = _origin(model)
    casts: dict[str, list[str]] = {}
    for n in model.graph.node:  # a Cast carries its input's values: its range is its input's, whoever else reads it
        if n.op_type == "Cast":
            casts.setdefault(n.input[0], []).append(n.output[0])

    def of(t: str, depth: int = 0) -> float | None:
        v = ranges.absmax.get(t, ranges.absmax.get(origin.get(t, t)))
        if v is None and depth < 8:
            found = [x for x in (of(o, depth + 1) for o in casts.get(t, ())) if x is not None]
            v = max(found) if found else None
        return v
    return of


def _past(v: float | None, bound: float) -> TypeGuard[float]:
    return v is not None and not v <= bound  # NaN is past every bound


def audit(model, ranges: Ranges, low: Iterable[str] | None = None, bound: float = SAFE_FP16) -> list[Finding]:
    """Each node of `low` (default: the graph's fp16 nodes) whose inputs, outputs or internal sum pass
    `bound`, from `ranges` measured on the fp32 graph. Shape-only nodes are checked on their outputs; a NaN
    range fails like an infinite one."""
    low = set(low_precision_nodes(model) if low is None else low)
    range_of = _range_of(model, ranges)
    origin = _origin(model)
    init = {t.name for t in model.graph.initializer}
    found: list[Finding] = []
    for n in model.graph.node:
        if n.name not in low:
            continue
        tensors = n.output if n.op_type in SHAPE_ONLY else (*n.input, *n.output)
        worst: tuple[float, str] | None = None
        for t in tensors:
            if not t or t in init:
                continue
            v = range_of(t)
            if _past(v, bound) and (worst is None or not v <= worst[0]):
                worst = (v if v == v else math.inf, f"tensor {origin.get(t, t)}")
        s = ranges.sums.get(n.name)
        if _past(s, bound) and (worst is None or not s <= worst[0]):
            what = "sum of squares" if n.op_type in SQUARE_SUMS else "sum"
            worst = (s if s == s else math.inf, f"internal {what}")
        if worst is not None:
            found.append(Finding(n.name, n.op_type, worst[1], worst[0], bound))
    return found


# data movement, no arithmetic
MOVERS = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Expand", "Slice", "Gather", "Concat", "Split", "Resize")


def fp32_islands(model, ranges: Ranges, policy_islands: Iterable[str] = ()) -> list[str]:
    """The fp32 islands (the nodes kept in fp32; meta.json's `fp32_islands`): `policy_islands` (fp32 whatever
    the ranges) plus every node the audit flags were all in fp16, plus the data-movement nodes that feed them
    (`_with_movers`)."""
    flagged = {f.node for f in audit(model, ranges, [n.name for n in model.graph.node])}
    return sorted(_with_movers(model, flagged | set(policy_islands)))


def _with_movers(model, keep: set[str]) -> set[str]:
    """An island also takes the Transposes / Reshapes that feed it, so AutoCast's Cast sits before them:
    ONNX Runtime 1.2x crashes at session creation (ORT_ENABLE_ALL, MatmulTransposeFusion) on a
    Transpose -> Cast -> MatMul chain (found on the tiny export: eight fp32 MatMuls of the head)."""
    walk = Walk(model.graph)
    out, todo = set(keep), list(keep)
    by_name = {n.name: n for n in model.graph.node}
    while todo:
        node = by_name.get(todo.pop())
        for t in node.input if node is not None else ():
            p = walk.producer_of(t)
            if p is not None and p.op_type in MOVERS and p.name not in out:
                out.add(p.name)
                todo.append(p.name)
    return out


# elementwise steps between the image input and the first layer: (x - mean) / std, and SAM's resize to 1024
NORMALISING = ("Sub", "Div", "Mul", "Add", "Resize", "Pad", "Clip")


def input_normalisation(walk, image: str) -> set[int]:
    """The nodes from the image input (RGB 0-255) to the patch embeddings: CLIP's and the proxy's normalisation.

    Why fp32: in fp16 the input is rounded before the mean is subtracted (spacing 1/8 above 128, and the mean
    122.77 itself to 122.75), a bias shared by every patch; after the subtraction the values lie in [-2, 3], where
    fp16's spacing is at most 1/512. Measured on the tiny model (fsa validate, 5 photos): 99.76% of the pixels
    with it in fp16, 99.94% in fp32 (plain init 99.68% / 99.96%); nothing else in the trunk or the proxy moved the
    figure past 99.9% (docs/BENCHMARKS.md)."""
    others = [i for i, n in enumerate(walk.nodes) if n.op_type not in NORMALISING]
    return walk.downstream([image], avoid=others)


def structural_islands(model, stages: dict[str, str], scope: str) -> list[str]:
    """What stays in fp32 whatever the ranges: the input normalisation (`input_normalisation`), the FSA head
    (downstream of the proxy features, the values and the text embeddings: thresholds and the feedback's
    exp(lamda * Sim) flip on rounding), CLIP's last block up to the values, and the feedback block: the split the
    fp16 export always had (trunk and proxy fp16) plus the normalisation."""
    walk = Walk(model.graph)
    heads = [stages[k] for k in ("proxy_features", "values") if k in stages] + [TEXT_EMBEDDINGS]
    head = walk.downstream(heads) | input_normalisation(walk, IMAGE)
    if "values" in stages:  # and CLIP's last block up to V: its LayerNorm, in_proj and the resize to the grid
        up = walk.upstream([stages["values"]])
        lns = sorted(i for i in up if walk.nodes[i].op_type == "LayerNormalization")
        if lns:
            head |= {lns[-1]} | (walk.downstream(walk.nodes[lns[-1]].output) & up)
    return sorted(walk.names(head) | {n.name for n in model.graph.node if scope and n.name.startswith(scope)})


# ---------------------------------------------------------------- the precision policy: fp32 whatever the ranges

SQUARING = ("Pow", "Mul")  # Pow(x, 2) or Mul(x, x): a square that a following ReduceMean / ReduceSum sums
LOGIT_STEPS = ("Mul", "Div", "Add", "Sub", "Where", "MatMul")  # what forms a softmax's input: scale, mask, QK^T
POLICY_RULES = ("layernorm", "square_sums", "softmax")


def _is_square(node, consts: dict[str, np.ndarray]) -> bool:
    if node.op_type == "Mul":
        return len(node.input) == 2 and node.input[0] == node.input[1]
    if node.op_type == "Pow" and node.input[1] in consts:
        e = consts[node.input[1]]
        return e.size == 1 and float(e.reshape(-1)[0]) == 2.0
    return False


def _float_constants(model) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type in (FLOAT, FLOAT16, 11)
           and t.data_location != EXTERNAL}  # `fsa lint` loads a graph over 2 GB without its weights
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and a.t.data_type in (FLOAT, FLOAT16, 11):
                    out[n.output[0]] = numpy_helper.to_array(a.t)
    return out


def precision_policy(model) -> dict[str, list[str]]:
    """The nodes that stay fp32 in the fp16 graph whatever the calibration ranges say, by rule:
    `layernorm`: every LayerNormalization (a sum of squares inside: 768 channels at |d| = 10 reach 7.7e4);
    `square_sums`: every ReduceSumSquare / ReduceL2 and every ReduceMean / ReduceSum of a square (Pow(x, 2),
    Mul(x, x)), the square included; `softmax`: every Softmax and the steps that form its input back to and
    including the MatMul (QK^T; scale, mask): a logit rounded in fp16 moves every probability of its row by exp.
    A photo unlike the calibration crops cannot push these past fp16: they never run in it."""
    consts = {**_constants(model), **_float_constants(model)}
    walk = Walk(model.graph)
    out: dict[str, list[str]] = {k: [] for k in POLICY_RULES}
    for n in model.graph.node:
        if n.op_type == "LayerNormalization":
            out["layernorm"].append(n.name)
        elif n.op_type in ("ReduceSumSquare", "ReduceL2"):
            out["square_sums"].append(n.name)
        elif n.op_type in ("ReduceMean", "ReduceSum"):
            p = walk.producer_of(n.input[0])
            if p is not None and p.op_type in SQUARING and _is_square(p, consts):
                out["square_sums"] += [p.name, n.name]
        elif n.op_type == "Softmax":
            out["softmax"].append(n.name)
            todo = [n.input[0]]
            while todo:
                p = walk.producer_of(todo.pop())
                if p is None or p.op_type not in LOGIT_STEPS or p.name in out["softmax"]:
                    continue
                out["softmax"].append(p.name)
                if p.op_type != "MatMul":  # the MatMul is where the logits are formed: the walk stops there
                    todo += [t for t in p.input if t and t not in consts]
    return {k: sorted(set(v)) for k, v in out.items()}


def policy_violations(model) -> list[str]:
    """`fsa lint`: the policy's own nodes (LayerNorm, square sums, Softmax) of an fp16 graph that compute in fp16."""
    low = set(low_precision_nodes(model))
    ops = {n.name: n.op_type for n in model.graph.node}
    rule = {name: k for k, names in precision_policy(model).items() for name in names}
    return [f"{name} ({ops[name]}): computes in fp16; the precision policy ({rule[name]}) keeps it fp32 "
            "[fp16 policy]" for name in sorted(set(rule) & low)]


# ---------------------------------------------------------------- the fp16 graph


@contextlib.contextmanager
def _quiet_modelopt() -> Iterator[None]:
    loggers = [logging.getLogger(n) for n in ("", "modelopt", "modelopt.onnx", "modelopt.onnx.autocast")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def to_fp16(fp32_path: str | Path, fp32_islands: Iterable[str]):
    """ModelOpt AutoCast: every node in fp16 but the `fp32_islands` (exact names), inputs and outputs fp32.

    AutoCast's own range rule (data_max) is off: the audit decided, on the crops it was given."""
    hide_stub_tensorrt()
    try:
        from modelopt.onnx.autocast import convert_to_mixed_precision
    except ImportError as e:
        raise FSAError("--precision fp16 converts with NVIDIA ModelOpt's AutoCast, which is not installed: "
                       "pip install 'fsa-deploy[quant]'") from e

    patterns = ["^" + re.escape(n) + "$" for n in fp32_islands]
    import onnx

    with _quiet_modelopt():
        model = convert_to_mixed_precision(str(fp32_path), "fp16", nodes_to_exclude=patterns or None,
                                           data_max=float("inf"), keep_io_types=True)
    # AutoCast's value_info can tie dims that differ (ORT then fails to reuse a buffer): infer afresh
    del model.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model)


def record(ranges: Ranges, fp32_islands: list[str], findings_all_fp16: list[Finding],
           policy: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """meta.json's `fp16_audit` on the fp16 image graph's file record: `policy` (precision_policy's nodes by
    rule, fp32 whatever the ranges), the measured audit (`flagged_if_all_fp16`, `ranges`) and every fp32 node
    (`fp32_islands`)."""
    return {"bound": SAFE_FP16, "fp32_islands": fp32_islands, "policy": policy or {},
            "flagged_if_all_fp16": [asdict(f) for f in findings_all_fp16], "ranges": ranges.describe()}


# ---------------------------------------------------------------- fsa export --precision fp16, fsa lint


CALIBRATION_CROPS = 8  # crops the ranges are measured on (one feed each: every tensor of a crop is held)


@dataclass
class Fp16Plan:
    """How `fsa export --precision fp16` makes its graph; `record` is filled for meta.json."""

    images: tuple[str, ...] = ()  # calibration images (files / folders); empty: fsa calibrate's defaults
    count: int = CALIBRATION_CROPS
    islands: bool = True  # False: every node in fp16 (a debug switch: what the audit exists to catch)
    record: dict[str, Any] | None = None


def calibration_feeds(ref, images: tuple[str, ...], count: int) -> tuple[list[dict[str, np.ndarray]], list[str]]:
    """Crops cut as `fsa segment` cuts them (fsa calibrate's images and defaults), text from the
    reference's text tower on the default vocabulary (first prompt template); and each crop's label
    (`FILE crop i`) for the non-finite refusal."""
    import torch

    from fsa_deploy.models.dump import numpy_encoder

    files, errors = expand_images(list(images) or sample_photos(), "--images")
    if errors or not files:
        raise FSAError(errors[0] if errors else "--images: no calibration images (scikit-image's sample photos "
                       "are not installed)")
    geo, parts, have, labels = Geometry(crop=ref.spec.crop), [], 0, []
    for f in files:  # the first `count` crops, cut as `fsa segment` cuts them (fsa calibrate does the same)
        batch, _ = crops_of(resize_image(load_image(f), geo), geo)
        parts.append(batch[: count - have])
        labels += [f"{f} crop {i}" for i in range(len(parts[-1]))]
        have += len(parts[-1])
        if have >= count:
            break
    crops = np.concatenate(parts).astype(np.float32)
    with torch.no_grad():
        text = classifier(numpy_encoder(ref), Vocabulary.from_file(DEFAULT_CLASSES).queries, openai_templates()[:1])
    return [{"image": crops[i:i + 1], "text_embeddings": np.asarray(text, dtype=np.float32)}
            for i in range(len(crops))], labels


def export_fp16(ref, path: Path, stages: dict[str, str], scope: str, plan: Fp16Plan,
                external_data_bytes: int) -> int:
    """The fp32 image graph at `path` -> its fp16 graph, in place; returns the node count."""
    import onnx

    from fsa_deploy.export.onnx_export import save_onnx

    ranges = measure(path, *calibration_feeds(ref, plan.images, plan.count))
    fp32 = onnx.load(str(path))
    flagged = audit(fp32, ranges, [n.name for n in fp32.graph.node])
    policy = precision_policy(fp32) if plan.islands else {}
    policy_islands = structural_islands(fp32, stages, scope) + [n for names in policy.values() for n in names]
    islands = fp32_islands(fp32, ranges, policy_islands) if plan.islands else []
    model = to_fp16(path, islands)
    save_onnx(model, path, external_data_bytes)
    plan.record = record(ranges, islands, flagged, policy)
    return len(model.graph.node)


def lint_lines(path: Path) -> tuple[list[str], str | None]:
    """`fsa lint` on an artefact's fp16 graph: the precision policy (its nodes must compute in fp32) and the
    measured audit from the ranges meta.json recorded at export.

    Returns (violations, summary lines); ([], None) for a graph without a recorded audit."""
    import onnx

    if not (path.parent / META).is_file():
        return [], None
    try:
        info = Artifact.load(path.parent).file_records().get(path.name)
    except FSAError:
        return [], None  # a meta.json that is not an artefact's: the ONNX lint alone
    rec = info.fp16_audit if info is not None else None
    if not isinstance(rec, dict):
        return [], None
    ranges = Ranges.from_description(rec.get("ranges") or {})
    model = onnx.load(str(path), load_external_data=False)
    bound = float(rec.get("bound", SAFE_FP16))
    low = low_precision_nodes(model)
    found = audit(model, ranges, low, bound)
    policy = precision_policy(model)
    broken = policy_violations(model)
    by_rule = ", ".join(f"{k} {len(v)}" for k, v in policy.items())
    summary = (f"fp16 policy: {sum(map(len, policy.values()))} nodes fp32 whatever the ranges ({by_rule}); "
               f"{len(broken)} in fp16\n"
               f"fp16 audit (measured): {len(low)} fp16 nodes against |x| <= {bound:g} on {ranges.crops} calibration "
               f"crops; {len(found)} past it; {len(rec.get('fp32_islands') or [])} fp32 islands")
    return broken + [f"{f.line()} [fp16 audit]" for f in found], summary

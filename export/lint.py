"""`fsa lint`: a static check of an ONNX graph against TensorRT's ONNX parser rules.

Why static: the exporter runs where TensorRT is absent, and a graph that the
parser rejects (or accepts with data-dependent shapes) should fail at export
time, not on the edge box. The rules are data (`TABLES`, `DATA_DEPENDENT`, ...)
transcribed from onnx-tensorrt's docs/operators.md; the checks below are generic.

Sources:
- TensorRT 10: onnx-tensorrt docs/operators.md as of TensorRT 10.15 (opset 9-24).
  Earlier 10.x releases support fewer ops and opsets (10.0: opset <= 20).
- TensorRT 11: the same table plus the parser changes in the 11.x release notes
  (github.com/NVIDIA/TensorRT/releases v11.0-v11.5): Swish (11.0), DFT via a
  cuFFT plugin and 5D GridSample (11.2), opset 25 (11.5). No operator was removed
  from the table that we could find. 11.x is strongly typed only (weak-typing
  builder flags and implicit INT8 calibration removed, docs.nvidia.com
  "Migrating from TensorRT 10.x to 11.x"). That changes no rule we can check on the
  graph alone: its own dtypes are what runs, so the dtype rules apply to both alike.

Rule ids: op-unsupported, op-attribute, op-output, op-rank, const-input, topk-k,
cumsum-axis, qdq-zero-point, control-flow, data-dependent-op, custom-domain, opset,
dtype-float64, dtype-int64, dtype-string, dtype-unsupported, dynamic-shape,
shape-inference.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto

from fsa_deploy.contract import TOPK_MAX_K
from fsa_deploy.errors import CheckFailed, FSAError

# ---------------------------------------------------------------- rules as data


@dataclass(frozen=True)
class ConstInput:
    """An input that must be a build-time constant (initializer or Constant node)."""

    index: int
    name: str
    rule: str = "const-input"
    below: int | None = None  # every element must be < below
    equals: int | None = None  # every element must == equals


@dataclass(frozen=True)
class AttrRule:
    """An attribute restricted to `allowed` values (empty: must be absent)."""

    name: str
    allowed: frozenset[Any] = frozenset()
    default: Any = None
    all_ones: bool = False  # a list attribute that must be empty or all ones


@dataclass(frozen=True)
class OpRule:
    """One supported op: its data types (doc spelling) and documented restrictions."""

    types: frozenset[str]
    const_inputs: tuple[ConstInput, ...] = ()
    attrs: tuple[AttrRule, ...] = ()
    max_outputs: int | None = None  # optional outputs TensorRT does not produce
    ranks: frozenset[int] | None = None  # allowed ranks of input 0


def _t(spec: str) -> frozenset[str]:
    return frozenset(spec.split())


def _names(spec: str) -> tuple[str, ...]:
    return tuple(spec.split())


F, F2 = _t("FP32 FP16 BF16"), _t("FP32 FP16")
FI = F | _t("INT32 INT64")
FIB = FI | _t("BOOL")
B = _t("BOOL")
CAST = FIB | _t("UINT8")
CONST = FIB | _t("FP8 FP4 INT4")
QUANT = _t("INT8 FP8 FP4 INT4")

DILATIONS = AttrRule("dilations", all_ones=True)
AXES = ConstInput(1, "axes")
REDUCE = OpRule(FI, (AXES,))
RESIZE = (
    AttrRule("mode", frozenset({"nearest", "linear"}), "nearest"),
    AttrRule(
        "coordinate_transformation_mode",
        frozenset({"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}),
        "half_pixel",
    ),
    AttrRule(
        "nearest_mode",
        frozenset({"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}),
        "round_prefer_floor",
    ),
    AttrRule("keep_aspect_ratio_policy", frozenset({"stretch"}), "stretch"),
    AttrRule("antialias", frozenset({0}), 0),
)

# Default-domain ops. None: listed as unsupported. Missing: not in the table at all.
_SUPPORTED_10: dict[str, OpRule] = {
    **{
        op: OpRule(F)
        for op in _names(
            "Acos Acosh Asin Asinh Atan Atanh BatchNormalization Ceil Celu Clip Conv ConvTranspose Cos Cosh "
            "Einsum Elu Erf Exp Floor Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool GroupNormalization "
            "GRU HardSigmoid HardSwish Hardmax ImageScaler InstanceNormalization IsInf LeakyRelu Log "
            "LogSoftmax LRN LpNormalization MatMul MeanVarianceNormalization ParametricSoftplus PRelu "
            "RandomNormal RandomNormalLike RandomUniform RandomUniformLike Reciprocal RMSNormalization RNN "
            "RotaryEmbedding Round ScaledTanh Scan Selu Sigmoid Sin Sinh Softmax Softplus Softsign Sqrt Tan "
            "Tanh ThresholdedRelu Upsample"
        )
    },
    **{
        op: OpRule(F2)
        for op in _names("BlackmanWindow HammingWindow HannWindow DeformConv Mish NonMaxSuppression NonZero RoiAlign")
    },
    **{
        op: OpRule(FI)
        for op in _names(
            "Abs Add ArgMax ArgMin DepthToSpace Div Equal Greater GreaterOrEqual "
            "IsNaN Less LessOrEqual Max Mean Min Mod Mul Neg Pad Pow Range Relu Scatter ScatterElements "
            "Shrink Sign SpaceToDepth Sub Sum"
        )
    },
    **{
        op: OpRule(FIB)
        for op in _names(
            "Concat Expand EyeLike Flatten Gather GatherElements GatherND Identity "
            "If Loop Reshape ReverseSequence Shape Size Slice Split Tile Transpose Trilu Where"
        )
    },
    **{op: OpRule(B) for op in _names("And Not Or Xor")},
    **{
        op: REDUCE
        for op in _names(
            "ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean "
            "ReduceMin ReduceProd ReduceSum ReduceSumSquare"
        )
    },
    "Attention": OpRule(F | _t("INT8 FP8"), ranks=frozenset({4})),
    "AveragePool": OpRule(F, attrs=(DILATIONS,), ranks=frozenset({4, 5})),
    "MaxPool": OpRule(F, attrs=(DILATIONS,), max_outputs=1, ranks=frozenset({4, 5})),
    "LpPool": OpRule(F, attrs=(DILATIONS,)),
    "Cast": OpRule(CAST),
    "CastLike": OpRule(CAST),
    "Constant": OpRule(CONST, attrs=(AttrRule("sparse_value"),)),
    "ConstantOfShape": OpRule(CONST),
    "CumSum": OpRule(F, (ConstInput(1, "axis", "cumsum-axis"),)),
    "DequantizeLinear": OpRule(QUANT, (ConstInput(2, "x_zero_point", "qdq-zero-point", equals=0),)),
    "QuantizeLinear": OpRule(F, (ConstInput(2, "y_zero_point", "qdq-zero-point", equals=0),)),
    "Dropout": OpRule(F, (ConstInput(2, "training_mode", equals=0),)),
    "Gelu": OpRule(FI | _t("INT8")),
    "GridSample": OpRule(F2, ranks=frozenset({4})),
    "LayerNormalization": OpRule(F, max_outputs=1),
    "LSTM": OpRule(F, attrs=(AttrRule("input_forget", frozenset({0}), 0), AttrRule("layout", frozenset({0}), 0))),
    "OneHot": OpRule(FIB, (ConstInput(1, "depth"),)),
    "Resize": OpRule(F, attrs=RESIZE),
    "ScatterND": OpRule(FI, attrs=(AttrRule("reduction", frozenset({"none"}), "none"),)),
    "Squeeze": OpRule(FIB, (AXES,)),
    "Unsqueeze": OpRule(FIB, (AXES,)),
    "STFT": OpRule(_t("FP32"), (ConstInput(1, "frame_step"), ConstInput(2, "window"))),
    "TensorScatter": OpRule(F | _t("INT32")),
    "TopK": OpRule(
        FI, (ConstInput(1, "K", "topk-k", below=TOPK_MAX_K + 1),), attrs=(AttrRule("sorted", frozenset({1}), 1),)
    ),
}
_UNSUPPORTED = _names(
    "AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor Col2Im CenterCropPad Compress "
    "ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear ImageDecoder MatMulInteger MaxRoiPool "
    "MaxUnpool MelWeightMatrix Multinomial NegativeLogLikelihoodLoss Optional OptionalGetElement "
    "OptionalHasElement QLinearConv QLinearMatMul RegexFullMatch SequenceAt SequenceConstruct SequenceEmpty "
    "SequenceErase SequenceInsert SequenceLength SequenceMap SoftmaxCrossEntropyLoss SplitToSequence "
    "StringConcat StringNormalizer StringSplit TfIdfVectorizer Unique"
)
TABLE_10: dict[str, OpRule | None] = {**dict.fromkeys(_UNSUPPORTED), **_SUPPORTED_10}
TABLE_11: dict[str, OpRule | None] = {
    **TABLE_10,
    "Swish": OpRule(F),  # 11.0
    "DFT": OpRule(F),  # 11.2, cuFFT plugin; types not documented yet, assumed floating point
    "GridSample": OpRule(F, ranks=frozenset({4, 5})),  # 11.2.1: 3D (rank-5) added, BF16 included
}
TABLES: dict[int, dict[str, OpRule | None]] = {10: TABLE_10, 11: TABLE_11}
OPSETS: dict[int, tuple[int, int]] = {10: (9, 24), 11: (9, 25)}  # default-domain opset, inclusive

# Project policy, not TensorRT's: our graphs are unrolled, so any control flow is a violation.
CONTROL_FLOW = frozenset({"Loop", "If", "Scan"})
# Ops whose output shape depends on tensor values; TensorRT support noted for the message.
DATA_DEPENDENT: dict[str, str] = {
    "NonZero": "TensorRT runs it, but its output shape depends on the data",
    "NonMaxSuppression": "TensorRT runs it, but its output shape depends on the data",
    "Unique": "not supported by TensorRT, and its output shape depends on the data",
    "Compress": "not supported by TensorRT, and its output shape depends on the data",
    "StringSplit": "not supported by TensorRT, and its output shape depends on the data",
}
DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})
# (domain, op_type) of TensorRT plugins we accept per major version. Empty on purpose:
# a plugin must be added here deliberately (11.0 removed several, e.g. nms, proposal).
PLUGIN_ALLOWLIST: dict[int, frozenset[tuple[str, str]]] = {10: frozenset(), 11: frozenset()}

# Inputs whose *values* set an op's output shape. When they derive only from Shape/Size and
# constants, an unknown output dim is shape arithmetic (B*K, ...), which shape inference cannot
# name but TensorRT resolves at build time; when they derive from tensor values it is data.
SHAPE_INPUTS: dict[str, tuple[int, ...]] = {
    **dict.fromkeys(_names("Reshape Expand Tile TopK Upsample OneHot Squeeze Unsqueeze Split DFT"), (1,)),
    **dict.fromkeys([op for op, r in _SUPPORTED_10.items() if r is REDUCE], (1,)),
    "Range": (0, 1, 2),
    "ConstantOfShape": (0,),
    "Slice": (1, 2, 3, 4),
    "Resize": (2, 3),
    "Pad": (1, 3),
    "STFT": (1, 3),
}
SHAPE_ONLY_OPS = frozenset({"Shape", "Size"})  # outputs depend on input shapes, never values

# Tensor dtypes TensorRT accepts (docs/operators.md header). DOUBLE and STRING have their
# own rules; UINT8 only as a network input or output; FP8 is E4M3, FP4 is E2M1.
TRT_DTYPES = frozenset(
    getattr(TensorProto, n) for n in _names("FLOAT FLOAT16 BFLOAT16 INT32 INT64 INT8 INT4 BOOL FLOAT8E4M3FN FLOAT4E2M1")
)
FLOAT_TYPE_STRS = frozenset({"tensor(float)", "tensor(float16)", "tensor(bfloat16)", "tensor(double)"})
# INT64 decision. Since TensorRT 9.0 INT64 is a native type and the parser no longer casts it
# down to INT32 (onnx-tensorrt docs/Changelog.md, "9.0 EA"). The operator table lists INT64 per
# op. So an int64 tensor is accepted when (a) the ONNX spec fixes that input/output to int64
# (shapes, axes, indices, TopK's K and indices, Shape's output), or the type variable it binds
# cannot be floating point (e.g. Gather's Tind); or (b) it is the op's data type and the op's
# row lists INT64. Flagged: int64 data through an op whose row lacks it (MatMul, Softmax, ...).

# ---------------------------------------------------------------- report


@dataclass(frozen=True)
class Violation:
    """One broken rule at one node (or graph input / initializer, named as the node)."""

    node: str
    op_type: str
    rule: str
    message: str

    def format(self) -> str:
        return f"{self.node} ({self.op_type}): {self.rule}: {self.message}"


@dataclass
class LintReport:
    """The violations of one graph against one TensorRT major version."""

    trt_major: int
    nodes: int
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def format(self) -> str:
        return "\n".join(v.format() for v in self.violations)


# ---------------------------------------------------------------- the graph, analysed once

_PROTO_LIMIT = 2**31 - 1


@dataclass
class _Graph:
    """A shape-inferred graph and the lookups every check needs."""

    model: onnx.ModelProto
    base_dir: Path | None
    nodes: list[tuple[str, onnx.NodeProto]]  # (label, node), in graph order
    dtypes: dict[str, int]
    shapes: dict[str, list[onnx.TensorShapeProto.Dimension] | None]  # None: rank unknown
    inits: dict[str, TensorProto]
    consts: dict[str, onnx.NodeProto]  # Constant node outputs
    inputs: list[str]  # graph inputs that are not initializers
    notes: list[Violation]  # problems found while preparing (shape inference)

    @property
    def opset(self) -> int:
        return next((o.version for o in self.model.opset_import if o.domain in DEFAULT_DOMAINS), 1)

    def const_value(self, name: str) -> tuple[bool, np.ndarray | None]:
        """(is a build-time constant, its value or None if unreadable). Reads only this tensor."""
        from onnx import external_data_helper, numpy_helper

        if name in self.consts:
            attr = self.consts[name].attribute
            if not attr:
                return True, None
            value = onnx.helper.get_attribute_value(attr[0])
            return True, numpy_helper.to_array(value) if isinstance(value, TensorProto) else np.asarray(value)
        if name not in self.inits:
            return False, None
        tensor = TensorProto()
        tensor.CopyFrom(self.inits[name])
        try:
            if external_data_helper.uses_external_data(tensor):
                if self.base_dir is None:
                    return True, None
                external_data_helper.load_external_data_for_tensor(tensor, str(self.base_dir))
            return True, numpy_helper.to_array(tensor)
        except (OSError, ValueError):
            return True, None


def load_structure(path: str | Path) -> onnx.ModelProto:
    """The graph without external weights: cheap for graphs over 2 GB."""
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.exists():
        raise FSAError(f"{path}: no such file")
    if not path.is_file():
        raise FSAError(f"{path}: not a file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (OSError, DecodeError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FSAError(f"{path}: not an ONNX model ({reason})") from e
    if model.ir_version == 0 or not model.HasField("graph"):
        raise FSAError(f"{path}: not an ONNX model (no IR version or no graph)")
    return model


def _infer(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[Violation]]:
    """Inline local functions (the parser expands them too), then infer shapes with data propagation."""
    import onnx.inliner

    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    errors = []
    for data_prop in (True, False):
        try:
            return onnx.shape_inference.infer_shapes(model, data_prop=data_prop), []
        except (onnx.shape_inference.InferenceError, ValueError, RuntimeError, TypeError) as e:
            errors.append(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    return model, [Violation("<graph>", "Model", "shape-inference", "; ".join(errors))]


def _analyse(model: onnx.ModelProto, base_dir: Path | None) -> _Graph:
    if model.ByteSize() > _PROTO_LIMIT:
        raise FSAError("graph over 2 GB in memory: save it with external data and lint the path")
    model, notes = _infer(model)
    g = model.graph
    dtypes: dict[str, int] = {}
    shapes: dict[str, list[onnx.TensorShapeProto.Dimension] | None] = {}
    for vi in (*g.input, *g.value_info, *g.output):
        if not vi.type.HasField("tensor_type"):
            continue
        tt = vi.type.tensor_type
        if tt.elem_type:
            dtypes[vi.name] = tt.elem_type
        shapes[vi.name] = list(tt.shape.dim) if tt.HasField("shape") else None
    inits = {t.name: t for t in g.initializer}
    for t in g.initializer:
        dtypes[t.name] = t.data_type
        shapes[t.name] = [onnx.TensorShapeProto.Dimension(dim_value=d) for d in t.dims]
    nodes = [(n.name or f"<{n.op_type}#{i}>", n) for i, n in enumerate(g.node)]
    consts = {n.output[0]: n for _, n in nodes if n.op_type == "Constant" and n.domain in DEFAULT_DOMAINS}
    inputs = [i.name for i in g.input if i.name not in inits]
    return _Graph(model, base_dir, nodes, dtypes, shapes, inits, consts, inputs, notes)


# ---------------------------------------------------------------- checks


def _attr(node: onnx.NodeProto, name: str) -> onnx.AttributeProto | None:
    return next((a for a in node.attribute if a.name == name), None)


def _check_op(g: _Graph, node: onnx.NodeProto, major: int) -> list[tuple[str, str]]:
    """(rule, message) pairs for the op itself: domain, support, control flow, restrictions."""
    op = node.op_type
    if node.domain not in DEFAULT_DOMAINS:
        if (node.domain, op) in PLUGIN_ALLOWLIST[major]:
            return []
        return [("custom-domain", f"domain '{node.domain}' is not ONNX's; no TensorRT plugin is allowed for it")]
    if op in CONTROL_FLOW:
        return [("control-flow", f"{op} must be unrolled at export (project rule)")]
    if op in DATA_DEPENDENT:
        return [("data-dependent-op", DATA_DEPENDENT[op])]
    if op not in TABLES[major]:
        return [("op-unsupported", f"{op} is not in TensorRT's ONNX operator table")]
    rule = TABLES[major][op]
    if rule is None:
        return [("op-unsupported", f"TensorRT's ONNX parser does not support {op}")]
    found = [r for ci in rule.const_inputs if (r := _check_const_input(g, node, ci))]
    found += [("op-attribute", m) for ar in rule.attrs if (m := _check_attr(node, ar))]
    extra = [o for o in node.output[rule.max_outputs or len(node.output) :] if o]
    if extra:
        found.append(("op-output", f"outputs {extra} unsupported (TensorRT: first {rule.max_outputs} only)"))
    shape = g.shapes.get(node.input[0]) if node.input else None
    if rule.ranks and shape is not None and len(shape) not in rule.ranks:
        found.append(("op-rank", f"input rank {len(shape)}, TensorRT accepts {sorted(rule.ranks)}"))
    return found


def _check_const_input(g: _Graph, node: onnx.NodeProto, ci: ConstInput) -> tuple[str, str] | None:
    name = node.input[ci.index] if len(node.input) > ci.index else ""
    if name:
        is_const, value = g.const_value(name)
        if not is_const:
            return ci.rule, f"{ci.name} ('{name}') must be a build-time constant (initializer or Constant)"
        if value is None and (ci.below is not None or ci.equals is not None):
            return ci.rule, f"{ci.name} ('{name}') is a constant whose value cannot be read (external data?)"
    else:  # older opsets carry it as an attribute (TopK-1's k, Squeeze-1's axes)
        attr = _attr(node, ci.name.lower())
        if attr is None:
            return None
        value = np.asarray(onnx.helper.get_attribute_value(attr))
    if value is None or value.size == 0:
        return None
    if ci.below is not None and (value >= ci.below).any():
        return ci.rule, f"{ci.name} = {value.tolist()} must be < {ci.below}"
    if ci.equals is not None and (value != ci.equals).any():
        return ci.rule, f"{ci.name} must be all {ci.equals}"
    return None


def _check_attr(node: onnx.NodeProto, ar: AttrRule) -> str | None:
    attr = _attr(node, ar.name)
    if ar.all_ones:
        if attr is not None and any(v != 1 for v in attr.ints):
            return f"{ar.name} = {list(attr.ints)} must be empty or all ones"
        return None
    if not ar.allowed:
        return f"attribute {ar.name} is not supported" if attr is not None else None
    value = onnx.helper.get_attribute_value(attr) if attr is not None else ar.default
    value = value.decode() if isinstance(value, bytes) else value
    if value not in ar.allowed:
        return f"{ar.name} = {value!r} is not supported (TensorRT: {', '.join(map(str, sorted(ar.allowed)))})"
    return None


def _check_int64(g: _Graph, node: onnx.NodeProto, major: int) -> tuple[str, str] | None:
    """int64 bound to an op's floating-or-integer data type where its row lacks INT64."""
    rule = TABLES[major].get(node.op_type) if node.domain in DEFAULT_DOMAINS else None
    if rule is None or "INT64" in rule.types:
        return None
    try:
        schema = onnx.defs.get_schema(node.op_type, g.opset, "")
    except onnx.defs.SchemaError:
        return None
    vars_ = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    for names, params in ((node.input, schema.inputs), (node.output, schema.outputs)):
        for i, name in enumerate(names):
            if not name or not params or g.dtypes.get(name) != TensorProto.INT64:
                continue
            param = params[min(i, len(params) - 1)]  # the last formal may be variadic
            if vars_.get(param.type_str, set()) & FLOAT_TYPE_STRS:
                types = ", ".join(sorted(rule.types))
                return "dtype-int64", f"int64 '{name}' as {param.name}; TensorRT {node.op_type} takes {types}"
    return None


def _dtype_rule(dtype: int, graph_io: bool) -> str | None:
    if dtype == TensorProto.DOUBLE:
        return "dtype-float64"
    if dtype == TensorProto.STRING:
        return "dtype-string"
    if dtype in TRT_DTYPES or (dtype == TensorProto.UINT8 and graph_io):
        return None
    return "dtype-unsupported"


def _check_dtypes(g: _Graph) -> list[Violation]:
    """float64 / string / other non-TensorRT dtypes on any tensor, Cast target or constant attribute."""
    found: dict[tuple[str, str, str], list[str]] = {}
    io = {*g.inputs, *(o.name for o in g.model.graph.output)}
    owners = [(n, "input", [n]) for n in g.inputs] + [(n, "initializer", [n]) for n in g.inits]
    owners += [(label, node.op_type, list(node.output)) for label, node in g.nodes]
    for label, op, names in owners:
        for name in names:
            rule = _dtype_rule(g.dtypes.get(name, TensorProto.FLOAT), name in io)
            if rule:
                type_name = TensorProto.DataType.Name(g.dtypes[name])
                found.setdefault((label, op, rule), []).append(f"'{name}' is {type_name}")
    for label, node in g.nodes:
        for attr in node.attribute:
            types = [attr.i] if node.op_type == "Cast" and attr.name == "to" else []
            types += [t.data_type for t in (attr.t, *attr.tensors) if t.data_type]
            if attr.name in ("value_string", "value_strings"):
                types.append(TensorProto.STRING)
            for dtype in types:
                if rule := _dtype_rule(dtype, False):
                    detail = f"attribute {attr.name} is {TensorProto.DataType.Name(dtype)}"
                    found.setdefault((label, node.op_type, rule), []).append(detail)
    return [Violation(label, op, rule, "; ".join(dict.fromkeys(d))) for (label, op, rule), d in found.items()]


_EXPR = re.compile(r"[\w\s+\-*/%().,]+")
_NAME = re.compile(r"[A-Za-z_]\w*(?![\w(])")  # identifiers that are not function calls


def _symbol_ok(symbol: str, allowed: set[str]) -> bool:
    """An input symbol, or an expression over them (the dynamo exporter writes 'K*B')."""
    if symbol in allowed:
        return True
    names = _NAME.findall(symbol)
    return bool(names) and _EXPR.fullmatch(symbol) is not None and set(names) <= allowed


def _unknown_dims(shape: list[onnx.TensorShapeProto.Dimension] | None, allowed: set[str]) -> tuple[set[str], int]:
    """(symbols not derived from graph-input symbols, count of unnamed dims; -1: rank unknown)."""
    if shape is None:
        return set(), -1
    symbols, unnamed = set(), 0
    for d in shape:
        if d.HasField("dim_value") and d.dim_value >= 0:
            continue
        if not d.dim_param:
            unnamed += 1
        elif not _symbol_ok(d.dim_param, allowed):
            symbols.add(d.dim_param)
    return symbols, unnamed


def _value_tainted(g: _Graph) -> set[str]:
    """Tensors whose values depend on graph-input values (not only on their shapes)."""
    tainted = set(g.inputs)
    for _, node in g.nodes:
        if node.op_type not in SHAPE_ONLY_OPS and any(i in tainted for i in node.input):
            tainted.update(node.output)
    return tainted


def _graph_input_symbols(g: _Graph) -> tuple[set[str], list[Violation]]:
    allowed: set[str] = set()
    found = []
    for name in g.inputs:
        shape = g.shapes.get(name)
        if shape is None:
            found.append(Violation(name, "input", "dynamic-shape", "graph input has no shape"))
            continue
        allowed |= {d.dim_param for d in shape if d.dim_param}
        if any(not d.dim_param and not d.HasField("dim_value") for d in shape):
            found.append(Violation(name, "input", "dynamic-shape", "a dynamic dim has no symbol name"))
    return allowed, found


def _check_shapes(g: _Graph, skip: set[str]) -> list[Violation]:
    """Dims neither static nor derived from graph-input symbols, reported where they first appear.

    Shape inference names an unknown dim with a fresh symbol (unk__N) that propagates; each
    is reported once, at its origin, and only when it comes from tensor values. Nodes in
    `skip` already carry a violation (unsupported op, non-constant K, ...) that explains them.
    """
    allowed, found = _graph_input_symbols(g)
    tainted = _value_tainted(g)
    accounted = {v.node for v in found}  # tensors whose unknown dims are explained already
    seen: set[str] = set()
    for label, node in g.nodes:
        inputs_accounted = any(i in accounted for i in node.input)
        problems = []
        for out in filter(None, node.output):
            symbols, unnamed = _unknown_dims(g.shapes.get(out), allowed)
            if symbols or unnamed:
                accounted.add(out)
            fresh, seen = symbols - seen, seen | symbols
            if fresh:
                problems.append(f"'{out}' has dims {sorted(fresh)}")
            elif unnamed and not inputs_accounted:
                problems.append(f"'{out}' has " + ("no inferred shape" if unnamed < 0 else "unknown dims"))
        if node.op_type in SHAPE_INPUTS:
            data = any(node.input[i] in tainted for i in SHAPE_INPUTS[node.op_type] if i < len(node.input))
        else:
            data = not inputs_accounted
        if problems and data and label not in skip:
            why = "not static and not derived from graph-input dims (a data-dependent shape)"
            found.append(Violation(label, node.op_type, "dynamic-shape", f"{'; '.join(problems)}: {why}"))
    return found


def _check_opset(g: _Graph, major: int) -> list[Violation]:
    low, high = OPSETS[major]
    if low <= g.opset <= high:
        return []
    return [Violation("<graph>", "opset_import", "opset", f"opset {g.opset}, TensorRT {major}: {low}-{high}")]


def _lint_graph(g: _Graph, major: int) -> LintReport:
    found = [*g.notes, *_check_opset(g, major)]
    for label, node in g.nodes:
        found += [Violation(label, node.op_type, r, m) for r, m in _check_op(g, node, major)]
        if hit := _check_int64(g, node, major):
            found.append(Violation(label, node.op_type, *hit))
    found += _check_dtypes(g) + _check_shapes(g, skip={v.node for v in found})
    return LintReport(major, len(g.nodes), found)


# ---------------------------------------------------------------- API


def lint_versions(
    model_or_path: onnx.ModelProto | str | Path,
    trt_majors: Iterable[int] = (10, 11),
    *,
    base_dir: str | Path | None = None,
) -> dict[int, LintReport]:
    """Lint one graph against several TensorRT majors, loading and inferring it once.

    `base_dir` locates external data when a ModelProto is passed (a path brings its own).
    """
    majors = list(trt_majors)
    unknown = [m for m in majors if m not in TABLES]
    if unknown:
        raise FSAError(f"TensorRT {unknown}: no rules for that major version (known: {sorted(TABLES)})")
    if isinstance(model_or_path, onnx.ModelProto):
        model = model_or_path
    else:
        model = load_structure(model_or_path)
        base_dir = Path(model_or_path).parent
    g = _analyse(model, Path(base_dir) if base_dir is not None else None)
    return {m: _lint_graph(g, m) for m in majors}


def lint(
    model_or_path: onnx.ModelProto | str | Path, trt_major: int = 10, *, base_dir: str | Path | None = None
) -> LintReport:
    """Check a graph against TensorRT `trt_major`'s ONNX parser rules (see the module docstring)."""
    return lint_versions(model_or_path, (trt_major,), base_dir=base_dir)[trt_major]


def merged_lines(reports: dict[int, LintReport]) -> list[str]:
    """Violations of several versions, each once, tagged when not common to all of them."""
    where: dict[Violation, list[int]] = {}
    for major, report in reports.items():
        for v in report.violations:
            where.setdefault(v, []).append(major)
    tag = lambda ms: "" if len(ms) == len(reports) else f" [TensorRT {', '.join(map(str, ms))} only]"
    return [v.format() + tag(ms) for v, ms in where.items()]


def assert_lint_clean(path: str | Path, trt_majors: Sequence[int] = (10, 11)) -> None:
    """The exporter's last step: raise CheckFailed listing every violation."""
    lines = merged_lines(lint_versions(path, trt_majors))
    if lines:
        versions = ", ".join(map(str, trt_majors))
        raise CheckFailed(f"{path}: {len(lines)} TensorRT ({versions}) lint violation(s):\n" + "\n".join(lines))


# ---------------------------------------------------------------- CLI


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
    parser.add_argument("--trt", type=int, choices=sorted(TABLES), help="one TensorRT major version (default: all)")
    parser.add_argument("--json", metavar="FILE", help="also write the reports to FILE as JSON")
    parser.set_defaults(func=run_lint)
    return parser


def run_lint(args: argparse.Namespace) -> int:
    majors = (args.trt,) if args.trt else tuple(sorted(TABLES))
    versions = ", ".join(map(str, majors))
    paths = [Path(p) for p in args.onnx]
    for path in paths:  # bad paths first: exit 2 before any report
        if not path.is_file():
            raise FSAError(f"{path}: {'not a file' if path.exists() else 'no such file'}")
    if args.json and not Path(args.json).parent.is_dir():
        raise FSAError(f"--json {args.json}: no such folder")
    entries, failed = [], 0
    for path in paths:
        reports = lint_versions(path, majors)
        lines = merged_lines(reports)
        nodes = next(iter(reports.values())).nodes
        status = "FAILED" if lines else "PASSED"
        print(f"{status}: {path} (TensorRT {versions}): {nodes} nodes, {len(lines)} violations")
        for line in lines:
            print(line)
        failed += bool(lines)
        entries.append(
            {
                "path": str(path),
                "nodes": nodes,
                "passed": not lines,
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
    from fsa_deploy.runtime.artifact import write_json_atomic

    try:
        write_json_atomic(path, obj)
    except OSError as e:
        raise FSAError(f"--json {path}: cannot write ({e.strerror or e})") from e

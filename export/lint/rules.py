"""The rules `fsa lint` checks, as data: operator tables per TensorRT target, rule ids and their origin.

Targets: 10 and 11 (TensorRT 10/11, `tensorrt`) and "rtx" (TensorRT-RTX 1.x, `tensorrt_rtx`).
Sources:
- TensorRT 10: onnx-tensorrt docs/operators.md as of TensorRT 10.15 (opset 9-24).
  Earlier 10.x releases support fewer ops and opsets (10.0: opset <= 20).
- TensorRT 11: the same table plus the parser changes in the 11.x release notes
  (github.com/NVIDIA/TensorRT/releases v11.0-v11.5): Swish (11.0), DFT via a cuFFT plugin and 5D
  GridSample (11.2), opset 25 (11.5). 11.x is strongly typed only; that changes no rule we can
  check on the graph alone (its own dtypes are what runs).
- TensorRT-RTX: measured. tests/trt_corpus.py holds small graphs and what the parser and builder
  of tensorrt_rtx 1.7 said about them; tests/test_lint.py checks that lint agrees with them. RTX
  has no plugins for DeformConv and NonZero, which TensorRT 10/11 run.

Every rule id has an origin: "tensorrt" (the parser or builder refuses such a graph: lint's
verdict must match theirs) or "project" (our own policy on top: unrolled graphs, no float64,
no data-dependent shapes; TensorRT may accept such a graph).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from onnx import TensorProto

from fsa_deploy.contract import TOPK_MAX_K

Target = int | str  # 10, 11 or "rtx"
TARGETS: tuple[Target, ...] = (10, 11, "rtx")
LABELS: dict[Target, str] = {10: "TensorRT 10", 11: "TensorRT 11", "rtx": "TensorRT-RTX"}


def parse_target(text: str) -> Target:
    """'10' -> 10, 'rtx' -> 'rtx' (argparse type)."""
    return int(text) if text.isdigit() else text.lower()


# ---------------------------------------------------------------- rule ids


@dataclass(frozen=True)
class Rule:
    origin: str  # "tensorrt" | "project"
    what: str


RULES: dict[str, Rule] = {
    "op-unsupported": Rule("tensorrt", "op not in the target's ONNX operator table (or listed as unsupported)"),
    "op-attribute": Rule("tensorrt", "attribute value the parser refuses"),
    "op-output": Rule("tensorrt", "optional output TensorRT does not produce"),
    "op-rank": Rule("tensorrt", "input rank the op's TensorRT layer does not take"),
    "const-input": Rule("tensorrt", "input that must be a build-time constant"),
    "topk-k": Rule("tensorrt", f"TopK's K: constant or derived from shapes, <= {TOPK_MAX_K}"),
    "cumsum-axis": Rule("tensorrt", "CumSum's axis: constant or derived from shapes"),
    "qdq-zero-point": Rule("tensorrt", "Q/DQ zero point must be 0"),
    "custom-domain": Rule("tensorrt", "op outside ONNX's domains without an allowed plugin"),
    "opset": Rule("tensorrt", "default-domain opset outside the parser's range"),
    "dtype-int32": Rule("tensorrt", "int32 data through an op whose row lacks INT32"),
    "dtype-int64": Rule("tensorrt", "int64 data through an op whose row lacks INT64"),
    "dtype-string": Rule("tensorrt", "string tensors"),
    "dtype-unsupported": Rule("tensorrt", "a dtype TensorRT has no type for"),
    "control-flow": Rule("project", "Loop/If/Scan: our graphs are unrolled"),
    "data-dependent-op": Rule("project", "op whose output shape depends on the data"),
    "dtype-float64": Rule("project", "float64 anywhere (TensorRT casts it down)"),
    "dynamic-shape": Rule("project", "a dim neither static nor derived from graph-input dims"),
    "shape-inference": Rule("project", "ONNX shape inference failed"),
}


def tensorrt_rules(rule_ids: set[str]) -> set[str]:
    """The rule ids among `rule_ids` that mean the parser or builder refuses the graph."""
    return {r for r in rule_ids if RULES[r].origin == "tensorrt"}


# ---------------------------------------------------------------- rule shapes


@dataclass(frozen=True)
class ConstInput:
    """An input that must be a build-time constant (initializer or Constant node)."""

    index: int
    name: str
    rule: str = "const-input"
    below: int | None = None  # every element must be < below
    equals: int | None = None  # every element must == equals
    from_shapes: bool = False  # also fine when computed from shapes only (Shape/Size arithmetic)


@dataclass(frozen=True)
class AttrRule:
    """An attribute restricted to `allowed` values (empty: must be absent)."""

    name: str
    allowed: frozenset[Any] = frozenset()
    default: Any = None
    all_ones: bool = False  # a list attribute that must be empty or all ones
    float_only: bool = False  # applies only when the op's input 0 is floating point


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
# measured with TensorRT-RTX 1.7 (tests/trt_corpus.py), the same ONNX importer as TensorRT 10/11:
NO_REDUCTION = AttrRule("reduction", frozenset({"none"}), "none")  # add/mul/min/max: UNSUPPORTED_NODE_ATTR
FMOD_FLOAT = AttrRule("fmod", frozenset({1}), 0, float_only=True)  # float Mod needs fmod=1

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
            "IsNaN Less LessOrEqual Max Mean Min Mul Neg Pad Pow Range Relu Scatter "
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
    "Mod": OpRule(FI, attrs=(FMOD_FLOAT,)),
    "ScatterElements": OpRule(FI, attrs=(NO_REDUCTION,)),
    "Attention": OpRule(F | _t("INT8 FP8"), ranks=frozenset({4})),
    "AveragePool": OpRule(F, attrs=(DILATIONS,), ranks=frozenset({4, 5})),
    "MaxPool": OpRule(F, attrs=(DILATIONS,), max_outputs=1, ranks=frozenset({4, 5})),
    "LpPool": OpRule(F, attrs=(DILATIONS,)),
    "Cast": OpRule(CAST),
    "CastLike": OpRule(CAST),
    "Constant": OpRule(CONST, attrs=(AttrRule("sparse_value"),)),
    "ConstantOfShape": OpRule(CONST),
    "CumSum": OpRule(F, (ConstInput(1, "axis", "cumsum-axis", from_shapes=True),)),
    "DequantizeLinear": OpRule(QUANT, (ConstInput(2, "x_zero_point", "qdq-zero-point", equals=0),)),
    "QuantizeLinear": OpRule(F, (ConstInput(2, "y_zero_point", "qdq-zero-point", equals=0),)),
    "Dropout": OpRule(F, (ConstInput(2, "training_mode", equals=0),)),
    "Gelu": OpRule(FI | _t("INT8")),
    "GridSample": OpRule(F2, ranks=frozenset({4})),
    "LayerNormalization": OpRule(F, max_outputs=1),
    "LSTM": OpRule(F, attrs=(AttrRule("input_forget", frozenset({0}), 0), AttrRule("layout", frozenset({0}), 0))),
    "OneHot": OpRule(FIB, (ConstInput(1, "depth"),)),
    "Resize": OpRule(F, attrs=RESIZE),
    "ScatterND": OpRule(FI, attrs=(NO_REDUCTION,)),
    "Squeeze": OpRule(FIB, (AXES,)),
    "Unsqueeze": OpRule(FIB, (AXES,)),
    "STFT": OpRule(_t("FP32"), (ConstInput(1, "frame_step"), ConstInput(2, "window"))),
    "TensorScatter": OpRule(F | _t("INT32")),
    # K: a constant <= 3840, or computed from shapes (the builder checks it against the profile's max);
    # `sorted` may be 0 (measured: the parser accepts it).
    "TopK": OpRule(FI, (ConstInput(1, "K", "topk-k", below=TOPK_MAX_K + 1, from_shapes=True),)),
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
# TensorRT-RTX 1.7: TensorRT 10's table less the ops TensorRT 10 runs through plugins that RTX lacks
# ("Plugin not found" / "NonZero plugin creator"): rules known to be TensorRT 10/11-only are these rows.
TABLE_RTX: dict[str, OpRule | None] = {**TABLE_10, "DeformConv": None, "NonZero": None}
TABLES: dict[Target, dict[str, OpRule | None]] = {10: TABLE_10, 11: TABLE_11, "rtx": TABLE_RTX}
OPSETS: dict[Target, tuple[int, int]] = {10: (9, 24), 11: (9, 25), "rtx": (9, 24)}  # default-domain, inclusive

# Project policy, not TensorRT's: our graphs are unrolled, so any control flow is a violation.
CONTROL_FLOW = frozenset({"Loop", "If", "Scan"})
# Ops whose output shape depends on tensor values; TensorRT support noted for the message.
DATA_DEPENDENT: dict[str, str] = {
    "NonZero": "its output shape depends on the data",
    "NonMaxSuppression": "its output shape depends on the data",
    "Unique": "its output shape depends on the data",
    "Compress": "its output shape depends on the data",
    "StringSplit": "its output shape depends on the data",
}
DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})
# (domain, op_type) of TensorRT plugins we accept per target. Empty on purpose:
# a plugin must be added here deliberately (11.0 removed several, e.g. nms, proposal).
PLUGIN_ALLOWLIST: dict[Target, frozenset[tuple[str, str]]] = {t: frozenset() for t in TARGETS}

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
FLOAT_DTYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE})
# Integer data through an op's floating-or-integer type variable, and the row entry it needs.
# Since TensorRT 9.0 INT64 is a native type and the parser no longer casts it down to INT32
# (onnx-tensorrt docs/Changelog.md, "9.0 EA"). So an integer tensor is accepted when (a) the ONNX
# spec fixes that input/output to an integer type (shapes, axes, indices, TopK's K, Shape's
# output), or the type variable it binds cannot be floating point (e.g. Gather's Tind); or (b) it
# is the op's data type and the op's row lists it. Flagged: int32/int64 data through MatMul,
# Softmax, ... (measured: "[MatMul] Found unsupported input type of INT32").
INT_ROWS: dict[int, tuple[str, str]] = {TensorProto.INT32: ("INT32", "dtype-int32"),
                                        TensorProto.INT64: ("INT64", "dtype-int64")}

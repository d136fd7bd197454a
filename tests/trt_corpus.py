"""Small crafted ONNX graphs and what TensorRT-RTX's ONNX parser and builder say about them.

The lint/parser agreement corpus (tests/test_lint.py). CASES is a list of Case(name, make, parses,
builds, lint_before, note): `make()` returns an onnx.ModelProto; `parses`/`builds` are the
verdicts measured with tensorrt_rtx 1.7.1.116 (parser 200) on a CPU machine, default targets;
`lint_before` is what fsa lint said with its first, TensorRT 10 rules: "pass" or its rule id.
`build_only` cases fail in the builder for reasons a static check cannot see (kernel coverage).

Run: python tests/trt_corpus.py [--only NAME] -> a table; exit 1 when a verdict differs from the
recorded one (a regression check on TensorRT-RTX upgrades).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

# ---------------------------------------------------------------- graph helpers


def vi(name: str, dtype: int, shape) -> onnx.ValueInfoProto:
    return h.make_tensor_value_info(name, dtype, shape)


def const(name: str, value, dtype=None) -> onnx.TensorProto:
    return nh.from_array(np.asarray(value, dtype=dtype), name)


def model(nodes, inputs, outputs, inits=(), opset: int = 17, domains=()) -> onnx.ModelProto:
    g = h.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    ops = [h.make_opsetid("", opset), *(h.make_opsetid(d, 1) for d in domains)]
    m = h.make_model(g, opset_imports=ops)
    m.ir_version = min(m.ir_version, 10)
    return m


def unary(op: str, dtype=T.FLOAT, shape=("B", 16), opset=17, **attrs) -> onnx.ModelProto:
    return model([h.make_node(op, ["x"], ["y"], **attrs)], [vi("x", dtype, list(shape))],
                 [vi("y", dtype, None)], opset=opset)


def matmul(dtype: int, np_dtype) -> onnx.ModelProto:
    return model([h.make_node("MatMul", ["x", "w"], ["y"])], [vi("x", dtype, ["B", 8])],
                 [vi("y", dtype, ["B", 4])], [const("w", np.ones((8, 4)), np_dtype)])


def mod(dtype: int, np_dtype, fmod: int) -> onnx.ModelProto:
    return model([h.make_node("Mod", ["x", "d"], ["y"], fmod=fmod)], [vi("x", dtype, ["B", 8])],
                 [vi("y", dtype, ["B", 8])], [const("d", np.full((8,), 3), np_dtype)])


def scatter_elements(reduction: str | None) -> onnx.ModelProto:
    attrs = {"axis": 1} | ({"reduction": reduction} if reduction else {})
    return model(
        [h.make_node("ScatterElements", ["x", "idx", "upd"], ["y"], **attrs)],
        [vi("x", T.FLOAT, ["B", 8])], [vi("y", T.FLOAT, ["B", 8])],
        [const("idx", [[0, 2, 4]], np.int64), const("upd", [[1.0, 2.0, 3.0]], np.float32)],
        opset=18,
    )


def deform_conv() -> onnx.ModelProto:
    # 1x1 kernel: offsets [B, 2*1*1, H, W]
    return model(
        [h.make_node("DeformConv", ["x", "w", "off"], ["y"], kernel_shape=[1, 1])],
        [vi("x", T.FLOAT, [1, 4, 8, 8]), vi("off", T.FLOAT, [1, 2, 8, 8])],
        [vi("y", T.FLOAT, [1, 4, 8, 8])], [const("w", np.ones((4, 4, 1, 1)), np.float32)], opset=19,
    )


def topk(k: int, width: int, sorted_: int = 1, dtype=T.FLOAT) -> onnx.ModelProto:
    return model(
        [h.make_node("TopK", ["x", "k"], ["v", "i"], axis=-1, sorted=sorted_)],
        [vi("x", dtype, ["B", width])], [vi("v", dtype, ["B", k]), vi("i", T.INT64, ["B", k])],
        [const("k", [k], np.int64)],
    )


def topk_k_from_shape() -> onnx.ModelProto:
    """K = x.shape[1] (a full sort, as torch.sort exports); static width 16."""
    nodes = [
        h.make_node("Shape", ["x"], ["s"]),
        h.make_node("Gather", ["s", "one"], ["k"], axis=0),
        h.make_node("TopK", ["x", "k"], ["v", "i"], axis=-1),
    ]
    return model(nodes, [vi("x", T.FLOAT, ["B", 16])], [vi("v", T.FLOAT, ["B", 16]), vi("i", T.INT64, ["B", 16])],
                 [const("one", [1], np.int64)])


def topk_k_from_dynamic_shape() -> onnx.ModelProto:
    """K = x.shape[1] where that dim is dynamic (N): K only known at run time."""
    nodes = [
        h.make_node("Shape", ["x"], ["s"]),
        h.make_node("Gather", ["s", "one"], ["k"], axis=0),
        h.make_node("TopK", ["x", "k"], ["v", "i"], axis=-1),
    ]
    return model(nodes, [vi("x", T.FLOAT, ["B", "N"])], [vi("v", T.FLOAT, None), vi("i", T.INT64, None)],
                 [const("one", [1], np.int64)])


def cumsum_axis_from_shape() -> onnx.ModelProto:
    """axis = rank(x) - 1, computed as Size(Shape(x)) - 1."""
    nodes = [
        h.make_node("Shape", ["x"], ["s"]),
        h.make_node("Size", ["s"], ["r"]),
        h.make_node("Sub", ["r", "one"], ["axis"]),
        h.make_node("CumSum", ["x", "axis"], ["y"]),
    ]
    return model(nodes, [vi("x", T.FLOAT, ["B", 16])], [vi("y", T.FLOAT, ["B", 16])],
                 [const("one", 1, np.int64)])


def cumsum_const_axis() -> onnx.ModelProto:
    return model([h.make_node("CumSum", ["x", "axis"], ["y"])], [vi("x", T.FLOAT, ["B", 16])],
                 [vi("y", T.FLOAT, ["B", 16])], [const("axis", 1, np.int64)])


def group_norm(opset: int) -> onnx.ModelProto:
    c, g = 8, 2
    shape = [c] if opset >= 21 else [g]
    return model(
        [h.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=g)],
        [vi("x", T.FLOAT, ["B", c, 4, 4])], [vi("y", T.FLOAT, ["B", c, 4, 4])],
        [const("s", np.ones(shape), np.float32), const("b", np.zeros(shape), np.float32)], opset=opset,
    )


def conv_relu() -> onnx.ModelProto:
    return model(
        [h.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), h.make_node("Relu", ["c"], ["y"])],
        [vi("x", T.FLOAT, ["B", 3, 16, 16])], [vi("y", T.FLOAT, ["B", 8, 16, 16])],
        [const("w", np.random.default_rng(0).normal(size=(8, 3, 3, 3)), np.float32)],
    )


def einsum_softmax() -> onnx.ModelProto:
    return model(
        [h.make_node("Einsum", ["x", "t"], ["l"], equation="bdn,kd->bkn"),
         h.make_node("Softmax", ["l"], ["y"], axis=1)],
        [vi("x", T.FLOAT, ["B", 8, 16]), vi("t", T.FLOAT, ["K", 8])], [vi("y", T.FLOAT, ["B", "K", 16])],
    )


def layer_norm() -> onnx.ModelProto:
    return model([h.make_node("LayerNormalization", ["x", "s", "b"], ["y"], axis=-1)],
                 [vi("x", T.FLOAT, ["B", 5, 16])], [vi("y", T.FLOAT, ["B", 5, 16])],
                 [const("s", np.ones(16), np.float32), const("b", np.zeros(16), np.float32)])


def resize_linear() -> onnx.ModelProto:
    return model([h.make_node("Resize", ["x", "", "sc"], ["y"], mode="linear")],
                 [vi("x", T.FLOAT, ["B", 3, 8, 8])], [vi("y", T.FLOAT, ["B", 3, 16, 16])],
                 [const("sc", [1, 1, 2, 2], np.float32)], opset=19)


def qdq(dtype: int, opset: int) -> onnx.ModelProto:
    zp = h.make_tensor("zp", dtype, [], [0])
    nodes = [
        h.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"]),
        h.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"]),
        h.make_node("QuantizeLinear", ["w", "s", "zp"], ["wq"]),
        h.make_node("DequantizeLinear", ["wq", "s", "zp"], ["wd"]),
        h.make_node("MatMul", ["xd", "wd"], ["y"]),
    ]
    inits = [const("w", np.random.default_rng(0).random((8, 4)), np.float32), const("s", 0.1, np.float32), zp]
    return model(nodes, [vi("x", T.FLOAT, ["B", 8])], [vi("y", T.FLOAT, ["B", 4])], inits, opset=opset)


def nonzero() -> onnx.ModelProto:
    return model([h.make_node("NonZero", ["x"], ["y"])], [vi("x", T.FLOAT, ["B", 8])], [vi("y", T.INT64, None)])


def unique() -> onnx.ModelProto:
    return model([h.make_node("Unique", ["x"], ["y"], sorted=1)], [vi("x", T.FLOAT, [8])], [vi("y", T.FLOAT, None)])


def custom_domain() -> onnx.ModelProto:
    return model([h.make_node("FancyOp", ["x"], ["y"], domain="com.example")], [vi("x", T.FLOAT, ["B", 8])],
                 [vi("y", T.FLOAT, ["B", 8])], domains=["com.example"])


def float64_add() -> onnx.ModelProto:
    return model([h.make_node("Add", ["x", "x"], ["y"])], [vi("x", T.DOUBLE, ["B", 8])], [vi("y", T.DOUBLE, ["B", 8])])


def gather_where_expand() -> onnx.ModelProto:
    nodes = [
        h.make_node("Gather", ["table", "tok"], ["e"]),
        h.make_node("ReduceMean", ["e", "ax"], ["m"], keepdims=0),
        h.make_node("Greater", ["m", "zero"], ["pos"]),
        h.make_node("Where", ["pos", "m", "zero"], ["y"]),
    ]
    inits = [const("table", np.random.default_rng(0).normal(size=(50, 8)), np.float32),
             const("ax", [1], np.int64), const("zero", 0.0, np.float32)]
    return model(nodes, [vi("tok", T.INT32, ["T", 77])], [vi("y", T.FLOAT, ["T", 8])], inits, opset=18)


def gelu_20() -> onnx.ModelProto:
    return unary("Gelu", opset=20)


def attention_23() -> onnx.ModelProto:
    return model([h.make_node("Attention", ["q", "k", "v"], ["y"])],
                 [vi(n, T.FLOAT, ["B", 2, 5, 8]) for n in "qkv"], [vi("y", T.FLOAT, ["B", 2, 5, 8])], opset=23)


def loop_control_flow() -> onnx.ModelProto:
    body = h.make_graph(
        [h.make_node("Identity", ["cond_in"], ["cond_out"]), h.make_node("Add", ["acc_in", "one"], ["acc_out"])],
        "body",
        [vi("i", T.INT64, []), vi("cond_in", T.BOOL, []), vi("acc_in", T.FLOAT, ["B", 8])],
        [vi("cond_out", T.BOOL, []), vi("acc_out", T.FLOAT, ["B", 8])],
        [const("one", 1.0, np.float32)],
    )
    return model([h.make_node("Loop", ["n", "c", "x"], ["y"], body=body)], [vi("x", T.FLOAT, ["B", 8])],
                 [vi("y", T.FLOAT, ["B", 8])], [const("n", 3, np.int64), const("c", True, np.bool_)])


# ---------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[], onnx.ModelProto]
    parses: bool  # TensorRT-RTX's ONNX parser accepts it
    builds: bool  # ... and build_serialized_network returns a plan (default targets)
    lint_before: str  # fsa lint's verdict with its first, TensorRT 10 rules: "pass" or the rule id
    note: str = ""
    build_only: bool = False  # the builder refuses it for a reason lint cannot see

    @property
    def accepted(self) -> bool:
        return self.parses and self.builds


CASES: list[Case] = [
    # ordinary graphs that pass
    Case("matmul_fp32", lambda: matmul(T.FLOAT, np.float32), True, True, "pass"),
    Case("matmul_fp16", lambda: matmul(T.FLOAT16, np.float16), True, True, "pass"),
    Case("conv_relu", conv_relu, True, True, "pass"),
    Case("einsum_softmax_dynK", einsum_softmax, True, True, "pass"),
    Case("layernorm", layer_norm, True, True, "pass"),
    Case("resize_linear", resize_linear, True, True, "pass"),
    Case("gelu_opset20", gelu_20, True, True, "pass"),
    Case("gather_reduce_where_int32_tokens", gather_where_expand, True, True, "pass"),
    Case("cumsum_const_axis", cumsum_const_axis, True, True, "pass"),
    Case("qdq_int8", lambda: qdq(T.INT8, 17), True, True, "pass"),
    Case("qdq_fp8", lambda: qdq(T.FLOAT8E4M3FN, 19), True, True, "pass", "default targets include SM89+"),
    Case("scatter_elements_none", lambda: scatter_elements(None), True, True, "pass"),
    Case("mod_int32_fmod0", lambda: mod(T.INT32, np.int32, 0), True, True, "pass"),
    Case("mod_int64_fmod0", lambda: mod(T.INT64, np.int64, 0), True, True, "pass"),
    Case("mod_float_fmod1", lambda: mod(T.FLOAT, np.float32, 1), True, True, "pass"),
    Case("topk_k5", lambda: topk(5, 16), True, True, "pass"),
    # where lint and TensorRT disagreed: lint passed, TensorRT refuses
    Case("matmul_int32", lambda: matmul(T.INT32, np.int32), False, False, "pass",
         "lint passed it; parser: unsupported input type INT32"),
    Case("mod_float_fmod0", lambda: mod(T.FLOAT, np.float32, 0), False, False, "pass", "lint passed it"),
    Case("scatter_elements_max", lambda: scatter_elements("max"), False, False, "pass", "lint passed it"),
    Case("scatter_elements_add", lambda: scatter_elements("add"), False, False, "pass",
         "any reduction but none is refused (add/mul/min/max)"),
    Case("deform_conv", deform_conv, False, False, "pass", "lint passed it"),
    # where lint and TensorRT disagreed: lint refused, TensorRT accepts
    Case("topk_k3840", lambda: topk(3840, 4096), True, True, "topk-k", "lint refused it; the limit is K <= 3840"),
    Case("topk_k3841", lambda: topk(3841, 4096), True, False, "topk-k", "parser accepts; the BUILDER refuses K > 3840"),
    Case("topk_sorted0", lambda: topk(5, 16, sorted_=0), True, True, "op-attribute", "lint refused it"),
    Case("group_norm_21", lambda: group_norm(21), True, True, "pass",
         "reported refused by lint; not reproduced with this graph"),
    Case("group_norm_18", lambda: group_norm(18), True, True, "pass"),
    Case("topk_k_from_static_shape", topk_k_from_shape, True, True, "topk-k", "lint refused it"),
    Case("topk_k_from_dynamic_shape", topk_k_from_dynamic_shape, True, True, "topk-k", "lint refused it"),
    Case("cumsum_axis_from_shape", cumsum_axis_from_shape, True, True, "cumsum-axis", "lint refused it"),
    # refused by both (or project policy)
    Case("unique", unique, False, False, "data-dependent-op"),
    Case("custom_domain", custom_domain, False, False, "custom-domain"),
    Case("float64_add", float64_add, True, True, "dtype-float64",
         "TensorRT-RTX accepts DOUBLE I/O (casts); keep lint rule as project policy"),
    Case("nonzero", nonzero, False, False, "data-dependent-op",
         "RTX: NonZero plugin creator missing (TensorRT 10 runs it)"),
    Case("loop", loop_control_flow, True, True, "control-flow", "project policy, TensorRT runs it"),
    Case("attention_opset23", attention_23, True, False, "pass", "fp32 [B,2,5,8]: no dedicated kernel, Myelin refuses",
         build_only=True),
]

# ---------------------------------------------------------------- running it


def main(argv: list[str] | None = None) -> int:
    """Print each case's verdict from the installed library; exit 1 when one differs from the recorded."""
    from fsa_deploy.export.lint import lint
    from fsa_deploy.export.lint.parser import parser_verdict

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="one case by name")
    args = ap.parse_args(argv)
    mismatches = 0
    for c in CASES:
        if args.only and c.name != args.only:
            continue
        m = c.make()
        v = parser_verdict(m)
        ok = (v.parses, bool(v.builds)) == (c.parses, c.builds)
        mismatches += not ok
        rules = sorted({x.rule for x in lint(m, "rtx").violations}) or ["pass"]
        print(f"{c.name:34} {'yes' if v.parses else 'NO':5} {'yes' if v.builds else 'NO':5} "
              f"{'ok' if ok else 'DIFF':6} {','.join(rules):24} {(v.errors or [''])[0][:110]}")
    print(f"{mismatches} verdict(s) differ from the recorded ones")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())

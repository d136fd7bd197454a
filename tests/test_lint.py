"""`fsa lint`: each small graph breaks one TensorRT rule; the clean one passes.

Graphs are built with onnx.helper here so that each test shows the exact pattern it
guards against. CLI tests run the real dispatcher in a subprocess (exit codes, stderr).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import RTX_ENV, require
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper
from trt_corpus import CASES

from fsa_deploy.contract import TOPK_MAX_K
from fsa_deploy.errors import CheckFailed, FSAError
from fsa_deploy.export.lint import assert_lint_clean, lint, lint_versions, tensorrt_rules

REPO = Path(__file__).resolve().parents[1]


def _model(nodes, inputs, outputs, inits=(), opset: int = 17) -> onnx.ModelProto:
    graph = h.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])


def _vi(name: str, dtype: int, shape) -> onnx.ValueInfoProto:
    return h.make_tensor_value_info(name, dtype, shape)


def _const(name: str, value, dtype=None) -> T:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def _topk(k: int, width: int = 16) -> onnx.ModelProto:
    return _model(
        [h.make_node("TopK", ["x", "k"], ["v", "i"], axis=-1, name="topk")],
        [_vi("x", T.FLOAT, ["B", width])],
        [_vi("v", T.FLOAT, ["B", k]), _vi("i", T.INT64, ["B", k])],
        [_const("k", [k], np.int64)],
    )


def clean_model() -> onnx.ModelProto:
    """MatMul + Softmax + TopK(K=5) + a Reshape with a constant shape; B dynamic."""
    nodes = [
        h.make_node("MatMul", ["x", "w"], ["mm"], name="matmul"),
        h.make_node("Softmax", ["mm"], ["p"], axis=-1, name="softmax"),
        h.make_node("TopK", ["p", "k"], ["v", "i"], axis=-1, name="topk"),
        h.make_node("Reshape", ["v", "shape"], ["flat"], name="reshape"),
    ]
    inits = [
        _const("w", np.ones((8, 16)), np.float32),
        _const("k", [5], np.int64),
        _const("shape", [-1, 5], np.int64),
    ]
    outputs = [_vi("flat", T.FLOAT, ["B", 5]), _vi("i", T.INT64, ["B", 5])]
    return _model(nodes, [_vi("x", T.FLOAT, ["B", 8])], outputs, inits)


def rules(model_or_path, major: int | str = 10) -> set[str]:
    return {v.rule for v in lint(model_or_path, major).violations}


def test_clean_graph_passes_every_target():
    reports = lint_versions(clean_model())
    assert set(reports) == {10, 11, "rtx"}
    assert all(r.ok for r in reports.values()), {m: r.format() for m, r in reports.items()}
    assert reports[10].nodes == 4


def test_topk_k_over_limit():
    assert rules(_topk(4096, width=5000)) == {"topk-k"}
    assert rules(_topk(TOPK_MAX_K, width=5000)) == set()  # the parser's limit is K <= 3840
    assert rules(_topk(TOPK_MAX_K + 1, width=5000)) == {"topk-k"}


def test_topk_k_not_constant():
    model = _model(
        [h.make_node("TopK", ["x", "k"], ["v", "i"], axis=-1)],
        [_vi("x", T.FLOAT, ["B", 16]), _vi("k", T.INT64, [1])],
        [_vi("v", T.FLOAT, None), _vi("i", T.INT64, None)],
    )
    assert rules(model) == {"topk-k"}


def test_cumsum_axis_not_constant():
    model = _model(
        [h.make_node("CumSum", ["x", "axis"], ["y"])],
        [_vi("x", T.FLOAT, ["B", 16]), _vi("axis", T.INT32, [])],
        [_vi("y", T.FLOAT, ["B", 16])],
    )
    assert rules(model) == {"cumsum-axis"}


def test_nonzero_is_data_dependent():
    model = _model(
        [h.make_node("NonZero", ["x"], ["nz"]), h.make_node("Transpose", ["nz"], ["y"])],
        [_vi("x", T.FLOAT, ["B", 16])],
        [_vi("y", T.INT64, None)],
    )
    report = lint(model)
    assert {v.rule for v in report.violations} == {"data-dependent-op"}
    assert report.violations[0].op_type == "NonZero"


def test_loop_and_if_are_control_flow():
    then_g = h.make_graph([h.make_node("Constant", [], ["a"], value_floats=[1.0])], "t", [], [_vi("a", T.FLOAT, [1])])
    else_g = h.make_graph([h.make_node("Constant", [], ["b"], value_floats=[0.0])], "e", [], [_vi("b", T.FLOAT, [1])])
    if_model = _model(
        [h.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)],
        [_vi("c", T.BOOL, [])],
        [_vi("y", T.FLOAT, [1])],
    )
    body = h.make_graph(
        [h.make_node("Identity", ["cond"], ["cond_out"]), h.make_node("Add", ["acc", "one"], ["acc_out"])],
        "body",
        [_vi("iter", T.INT64, []), _vi("cond", T.BOOL, []), _vi("acc", T.FLOAT, [1])],
        [_vi("cond_out", T.BOOL, []), _vi("acc_out", T.FLOAT, [1])],
        initializer=[_const("one", [1.0], np.float32)],
    )
    loop_model = _model(
        [h.make_node("Loop", ["n", "", "x"], ["y"], body=body)],
        [_vi("x", T.FLOAT, [1])],
        [_vi("y", T.FLOAT, [1])],
        [_const("n", 3, np.int64)],
    )
    assert rules(if_model) == {"control-flow"}
    assert rules(loop_model) == {"control-flow"}


def test_float64_anywhere():
    cast = _model(
        [h.make_node("Cast", ["x"], ["d"], to=T.DOUBLE), h.make_node("Cast", ["d"], ["y"], to=T.FLOAT)],
        [_vi("x", T.FLOAT, ["B", 4])],
        [_vi("y", T.FLOAT, ["B", 4])],
    )
    init = _model(
        [h.make_node("Add", ["x", "bias"], ["y"])],
        [_vi("x", T.DOUBLE, ["B", 4])],
        [_vi("y", T.DOUBLE, ["B", 4])],
        [_const("bias", np.zeros(4))],
    )
    assert rules(cast) == {"dtype-float64"}
    found = lint(init).violations
    assert {v.rule for v in found} == {"dtype-float64"}
    assert {v.op_type for v in found} == {"input", "initializer", "Add"}


def test_int64_only_where_tensorrt_takes_it():
    matmul = _model(
        [h.make_node("MatMul", ["a", "b"], ["y"])],
        [_vi("a", T.INT64, [2, 3]), _vi("b", T.INT64, [3, 4])],
        [_vi("y", T.INT64, [2, 4])],
    )
    shape_math = _model(  # Shape -> Gather -> Add in int64 is what exporters emit; TensorRT 10 takes it
        [
            h.make_node("Shape", ["x"], ["s"]),
            h.make_node("Gather", ["s", "zero"], ["b"], axis=0),
            h.make_node("Add", ["b", "zero"], ["y"]),
        ],
        [_vi("x", T.FLOAT, ["B", 4])],
        [_vi("y", T.INT64, [])],
        [_const("zero", 0, np.int64)],
    )
    assert rules(matmul) == {"dtype-int64"}
    assert rules(shape_math) == set()


@pytest.mark.parametrize("zp_type, zp", [(T.INT8, 0), (T.FLOAT8E4M3FN, 0), (T.INT8, 3)])
def test_qdq_allowed_with_zero_point_zero(zp_type, zp):
    model = _model(
        [
            h.make_node("QuantizeLinear", ["x", "scale", "zp"], ["q"]),
            h.make_node("DequantizeLinear", ["q", "scale", "zp"], ["dq"]),
            h.make_node("MatMul", ["dq", "w"], ["y"]),
        ],
        [_vi("x", T.FLOAT, ["B", 8])],
        [_vi("y", T.FLOAT, ["B", 4])],
        [
            _const("scale", 0.1, np.float32),
            h.make_tensor("zp", zp_type, [], [zp]),
            _const("w", np.ones((8, 4)), np.float32),
        ],
        opset=19,
    )
    assert rules(model) == ({"qdq-zero-point"} if zp else set())


def test_custom_domain_and_unknown_op():
    custom = _model(
        [h.make_node("FancyAttention", ["x"], ["y"], domain="com.example")],
        [_vi("x", T.FLOAT, ["B", 4])],
        [_vi("y", T.FLOAT, ["B", 4])],
    )
    custom.opset_import.append(h.make_opsetid("com.example", 1))
    unknown = _model([h.make_node("Sort", ["x"], ["y"])], [_vi("x", T.FLOAT, ["B", 4])], [_vi("y", T.FLOAT, None)])
    assert rules(custom) == {"custom-domain"}
    assert rules(unknown) == {"op-unsupported"}


def test_swish_only_in_tensorrt_11():
    model = _model(
        [h.make_node("Swish", ["x"], ["y"])],
        [_vi("x", T.FLOAT, ["B", 4])],
        [_vi("y", T.FLOAT, ["B", 4])],
        opset=24,
    )
    assert rules(model, 10) == {"op-unsupported"}
    assert rules(model, 11) == set()


def test_data_dependent_output_dim():
    """Range up to max(x): the output length is a value of the data, not a shape."""
    model = _model(
        [
            h.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
            h.make_node("Range", ["zero", "m", "one"], ["r"], name="range"),
            h.make_node("Relu", ["r"], ["y"]),
        ],
        [_vi("x", T.FLOAT, ["B", 4])],
        [_vi("y", T.FLOAT, None)],
        [_const("zero", 0.0, np.float32), _const("one", 1.0, np.float32)],
        opset=18,
    )
    found = lint(model).violations
    assert [(v.node, v.rule) for v in found] == [("range", "dynamic-shape")]


@pytest.mark.parametrize("declared", [None, "K*B", "u0"])
def test_shape_arithmetic_is_not_data_dependent(declared):
    """Reshape [B, K, 49] -> [-1, 49]: inference cannot name B*K; the dynamo exporter writes 'K*B'."""
    model = _model(
        [h.make_node("Reshape", ["x", "shape"], ["r"]), h.make_node("Relu", ["r"], ["y"])],
        [_vi("x", T.FLOAT, ["B", "K", 49])],
        [_vi("y", T.FLOAT, [declared, 49] if declared else None)],
        [_const("shape", [-1, 49], np.int64)],
    )
    if declared:
        model.graph.value_info.append(_vi("r", T.FLOAT, ["K*B", 49]))
    # 'u0' (torch's name for a data-dependent size) on the output is neither static nor from B, K
    assert rules(model) == ({"dynamic-shape"} if declared == "u0" else set())


def test_external_data_k_is_read(tmp_path):
    model = _topk(4096, width=5000)
    path = tmp_path / "big.onnx"
    onnx.save(model, path, save_as_external_data=True, location="big.data", size_threshold=0)
    assert onnx.load(path, load_external_data=False).graph.initializer[0].data_location == T.EXTERNAL
    assert rules(path) == {"topk-k"}


def test_assert_lint_clean(tmp_path):
    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    onnx.save(clean_model(), good)
    onnx.save(_topk(4096, width=5000), bad)
    assert_lint_clean(good)
    with pytest.raises(CheckFailed, match="topk-k"):
        assert_lint_clean(bad)
    with pytest.raises(FSAError, match="no such file"):
        assert_lint_clean(tmp_path / "missing.onnx")


# ---------------------------------------------------------------- CLI


def fsa(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fsa_deploy", *args], cwd=REPO, capture_output=True, text=True)


def test_cli_clean_exit_0_and_json(tmp_path):
    path, report = tmp_path / "clean.onnx", tmp_path / "report.json"
    onnx.save(clean_model(), path)
    run = fsa("lint", str(path), "--json", str(report))
    assert run.returncode == 0, run.stderr
    assert f"PASSED: {path} (TensorRT 10, 11, rtx): 4 nodes, 0 violations" in run.stdout
    assert json.loads(report.read_text())["passed"] is True


def test_cli_violation_exit_1(tmp_path):
    path = tmp_path / "topk.onnx"
    onnx.save(_topk(4096, width=5000), path)
    run = fsa("lint", str(path), "--trt", "10")
    assert run.returncode == 1
    assert "topk (TopK): topk-k:" in run.stdout
    assert "FAILED" in run.stderr


@pytest.mark.parametrize("kind", ["missing", "text"])
def test_cli_bad_input_exit_2(tmp_path, kind):
    path = tmp_path / "model.onnx"
    if kind == "text":
        path.write_text("this is not a protobuf, just text\n")
    run = fsa("lint", str(path))
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0], run.stderr


# ---------------------------------------------------------------- lint agrees with the real parser


def test_issue_12_disagreements_are_fixed():
    """What the parser refuses, lint refuses; what it accepts, lint accepts (measured, see trt_corpus.py)."""
    by_name = {c.name: c.make() for c in CASES}
    for name, rule in [("matmul_int32", "dtype-int32"), ("mod_float_fmod0", "op-attribute"),
                       ("scatter_elements_max", "op-attribute"), ("scatter_elements_add", "op-attribute")]:
        assert rules(by_name[name]) == {rule}, name
    assert rules(by_name["deform_conv"], "rtx") == {"op-unsupported"} and rules(by_name["deform_conv"]) == set()
    assert rules(by_name["nonzero"], "rtx") == {"data-dependent-op", "op-unsupported"}
    for name in ("topk_k3840", "topk_sorted0", "group_norm_21", "topk_k_from_static_shape",
                 "topk_k_from_dynamic_shape", "cumsum_axis_from_shape", "mod_float_fmod1", "mod_int32_fmod0"):
        assert tensorrt_rules(rules(by_name[name], "rtx")) == set(), name


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_lint_agrees_with_the_parser(case):
    """lint's TensorRT verdict (project-policy rules aside) == TensorRT-RTX parses and builds it."""
    require("tensorrt_rtx", RTX_ENV)  # FSA_REQUIRE_RTX=1 (make test on x86-64): missing is a failure
    from fsa_deploy.export.lint.parser import parser_verdict

    model = case.make()
    real = parser_verdict(model)
    assert (real.parses, bool(real.builds)) == (case.parses, case.builds), f"{case.name}: {real.errors}"
    if case.build_only:
        pytest.skip(f"{case.name}: {case.note}")
    found = tensorrt_rules(rules(model, "rtx"))
    assert (not found) == real.accepted, f"{case.name}: lint {found or 'pass'}, TensorRT-RTX {real.errors or 'accepts'}"


def test_cli_parser_flag(tmp_path):
    require("tensorrt_rtx", RTX_ENV)  # FSA_REQUIRE_RTX=1 (make test on x86-64): missing is a failure
    good, bad = tmp_path / "good.onnx", tmp_path / "attention.onnx"
    onnx.save(clean_model(), good)
    onnx.save(next(c for c in CASES if c.name == "attention_opset23").make(), bad)
    run = fsa("lint", str(good), "--parser", "--trt", "rtx", "--json", str(tmp_path / "r.json"))
    assert run.returncode == 0, run.stdout + run.stderr
    parser = json.loads((tmp_path / "r.json").read_text())["graphs"][0]["parser"]
    assert parser["library"] == "tensorrt_rtx" and parser["parses"] and parser["builds"]
    run = fsa("lint", str(bad), "--parser", "--trt", "rtx")  # passes lint, refused by the builder
    assert run.returncode == 1 and "tensorrt_rtx" in run.stdout and "builder: " in run.stdout, run.stdout

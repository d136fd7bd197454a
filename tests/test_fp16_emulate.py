"""The emulation's two precision models against the audit and against fp16 arithmetic itself (numpy float16).

A LayerNorm over 768 channels whose centred input is +-d: its sum of squares is 768 d^2, 1.9e4 at |d| = 5 and
7.7e4 at |d| = 10 (fp16's largest value is 65504). As documented in docs/METHOD.md ("fp16: what is modelled"):
- the audit flags both (its bound, 16384, keeps a 4x headroom for photos unlike the calibration crops);
- `fp16-storage-fp32-accumulate` (TensorRT's default) computes both (the statistics accumulate in fp32);
- `fp16-accumulate` overflows at |d| = 10 only, exactly as numpy's float16 sum of d * d does.
Small graphs; about 3 s.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from fsa_deploy.export import fp16_audit as F
from fsa_deploy.validation.fp16_emulate import PRECISION_MODELS, run_graph

C = 768


def ln_graph(tmp, name: str = "ln.onnx"):
    graph = helper.make_graph(
        [helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], name="ln", axis=-1)], "ln",
        [helper.make_tensor_value_info("x", T.FLOAT, [1, C])], [helper.make_tensor_value_info("y", T.FLOAT, [1, C])],
        [numpy_helper.from_array(np.ones(C, np.float32), "g"), numpy_helper.from_array(np.zeros(C, np.float32), "b")])
    path = tmp / name
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def plus_minus(d: float) -> np.ndarray:
    x = np.full((1, C), d, np.float32)
    x[:, 1::2] = -d  # mean 0: the centred input is +-d
    return x


def numpy_fp16_sum_of_squares(x: np.ndarray) -> np.float16:
    """fp16 arithmetic itself: centre, square and sum in float16 (numpy rounds every partial sum to fp16)."""
    h = x.astype(np.float16)
    d = h - np.float16(h.mean(dtype=np.float16))
    with np.errstate(over="ignore"):
        return np.sum(d * d, dtype=np.float16)


@pytest.mark.parametrize("d, overflows", [(5.0, False), (10.0, True), (2.0, False), (40.0, True)])
def test_layernorm_cases_audit_emulations_and_fp16_arithmetic(tmp_path, d, overflows):
    path = ln_graph(tmp_path)
    x = plus_minus(d)
    ranges = F.measure(path, [{"x": x}])
    assert ranges.sums["ln"] == pytest.approx(C * d * d, rel=1e-6)
    naive = F.to_fp16(path, [])
    flagged = [f for f in F.audit(naive, ranges) if f.what == "internal sum of squares"]
    assert bool(flagged) == (C * d * d > F.SAFE_FP16)  # the audit: conservative (5 flagged, 1.9e4 > 16384)
    numpy_sum = numpy_fp16_sum_of_squares(x)
    assert bool(np.isinf(numpy_sum)) == overflows
    expected = np.where(x > 0, 1.0, -1.0)
    out = {m: run_graph(naive, {"x": x}, precision=m)["y"] for m in PRECISION_MODELS}
    # TensorRT's default model: fp32 statistics, the normalised output is exact to fp16 rounding
    np.testing.assert_allclose(out["fp16-storage-fp32-accumulate"], expected, atol=2e-3)
    # the worst case agrees with fp16 arithmetic: finite where its sum is, broken where it overflows
    broken = not np.allclose(out["fp16-accumulate"], expected, atol=2e-3)
    assert broken == overflows, out["fp16-accumulate"][0, :4]
    if not overflows:
        assert float(numpy_sum) == pytest.approx(C * d * d, rel=2e-3)


def numpy_tree_sum(h: np.ndarray) -> np.float16:
    """A pairwise tree in float16 with numpy (each addition rounded to fp16), as a GPU reduction adds."""
    while h.size > 1:
        if h.size % 2:
            h = np.append(h, np.float16(0))
        h = (h[0::2] + h[1::2]).astype(np.float16)
    return h[0]


def test_fp16_accumulation_rounds_partial_sums_plain_does_not(tmp_path):
    """ReduceSum of 4096 values in [0, 30) (sum ~6e4): fp32 accumulation rounds once (the fp16 nearest to the exact
    sum), fp16 accumulation rounds every partial sum (numpy's float16 tree gives the same number, and another one)."""
    graph = helper.make_graph([helper.make_node("ReduceSum", ["x", "axes"], ["y"], name="sum", keepdims=0)], "s",
                              [helper.make_tensor_value_info("x", T.FLOAT, [1, 4096])],
                              [helper.make_tensor_value_info("y", T.FLOAT, [1])],
                              [numpy_helper.from_array(np.array([-1], np.int64), "axes")])
    path = tmp_path / "sum.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    x = np.random.default_rng(1).uniform(0, 30, (1, 4096)).astype(np.float32)
    h = x.astype(np.float16)
    naive = F.to_fp16(path, [])
    once = run_graph(naive, {"x": x}, precision="fp16-storage-fp32-accumulate")["y"][0]
    assert once == float(np.float16(h.astype(np.float64).sum()))
    tree = run_graph(naive, {"x": x}, precision="fp16-accumulate")["y"][0]
    assert tree == float(numpy_tree_sum(h[0])) and tree != once
    with pytest.raises(ValueError, match="precision model"):
        run_graph(naive, {"x": x}, precision="fp8")


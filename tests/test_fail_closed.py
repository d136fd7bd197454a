"""The fp16 checks fail closed: a non-finite fp32 graph is refused, graph-output producers are audited, the
precision policy holds whatever the ranges, and smoothing works on graphs with external data.

Small hand-built graphs (each the case it names) and the session's tiny export: about 7 s of its own.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from fsa_deploy.contract import MASK_PREFIX
from fsa_deploy.export import fp16_audit as F


def save(tmp: Path, nodes, inits=(), name: str = "g.onnx", shape=(1, 4), outputs=("y",), external: bool = False,
         out_shape=None) -> Path:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", T.FLOAT, list(shape))],
                              [helper.make_tensor_value_info(o, T.FLOAT, out_shape or list(shape)) for o in outputs],
                              list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    path = tmp / name
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=name + ".data", size_threshold=0)
    else:
        onnx.save(model, str(path))
    return path


def const(name: str, value) -> onnx.TensorProto:
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def feed(v: float, shape=(1, 4)) -> dict[str, np.ndarray]:
    return {"x": np.full(shape, v, np.float32)}


def exp_graph(tmp: Path) -> Path:
    """y = 0.5 * exp(2 x): x = 5 reaches 2.2e4 (past the fp16 bound), x = 50 is inf in fp32."""
    return save(tmp, [helper.make_node("Mul", ["x", "two"], ["t"], name="double"),
                      helper.make_node("Exp", ["t"], ["e"], name="exp"),
                      helper.make_node("Mul", ["e", "half"], ["y"], name="halve")], [const("two", 2.0),
                                                                                     const("half", 0.5)])


def test_range_past_fp16_is_flagged_and_inf_in_fp32_is_refused(tmp_path):
    path = exp_graph(tmp_path)
    r = F.measure(path, [feed(5.0)])
    assert r.absmax["e"] == pytest.approx(math.exp(10), rel=1e-6)
    found = F.audit(F.to_fp16(path, []), r)
    assert {f.node for f in found} >= {"exp"} and all(f.value > F.SAFE_FP16 for f in found)
    with pytest.raises(F.NonFinite) as e:  # x = 50: exp(100) is inf in fp32 (it was mapped to 0 and passed)
        F.measure(path, [feed(1.0), feed(50.0)], ["a.png crop 0", "b.png crop 3"])
    msg = str(e.value)
    assert "\n" not in msg and "tensor e (Exp exp)" in msg and "b.png crop 3" in msg


def test_nan_is_refused_all_nan_and_through_a_layernorm(tmp_path):
    sqrt = save(tmp_path, [helper.make_node("Sqrt", ["x"], ["y"], name="root")], name="sqrt.onnx")
    with pytest.raises(F.NonFinite, match="tensor y .*Sqrt root"):
        F.measure(sqrt, [feed(-1.0)])  # all NaN
    ln = save(tmp_path, [helper.make_node("Log", ["x"], ["l"], name="log"),
                         helper.make_node("LayerNormalization", ["l", "g", "b"], ["y"], name="ln", axis=-1)],
              [const("g", np.ones(4)), const("b", np.zeros(4))], name="ln.onnx")
    with pytest.raises(F.NonFinite, match="tensor l "):  # the first non-finite tensor, not the LayerNorm after it
        F.measure(ln, [{"x": np.array([[1.0, 2.0, -1.0, 3.0]], np.float32)}])
    with pytest.raises(F.NonFinite, match="tensor x .graph input"):
        F.measure(ln, [{"x": np.array([[1.0, np.nan, 1.0, 3.0]], np.float32)}])
    assert F.measure(ln, [{"x": np.array([[1.0, 2.0, 4.0, 3.0]], np.float32)}]).sums["ln"] > 0
    # finite in, finite (0) out, but the LayerNorm's own fp32 sum of squares is inf (|d| = 1e20): refused, named
    big = save(tmp_path, [helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], name="ln", axis=-1)],
               [const("g", np.ones(4)), const("b", np.zeros(4))], name="big.onnx")
    with pytest.raises(F.NonFinite, match="LayerNormalization ln's sum of squares reaches 4e\\+40, inf in fp32"):
        F.measure(big, [{"x": np.array([[1e20, -1e20, 1e20, -1e20]], np.float32)}])


def mask_graph(tmp: Path, mask_name: str, fill: float) -> Path:
    """softmax(where(x > 0, x, fill)): the masked_fill-before-softmax that models.fsa builds."""
    return save(tmp, [helper.make_node("Greater", ["x", "zero"], ["keep"], name="gt"),
                      helper.make_node("Where", ["keep", "x", "fill"], [mask_name], name="where"),
                      helper.make_node("Softmax", [mask_name], ["y"], name="softmax", axis=-1)],
                [const("zero", 0.0), const("fill", fill)], name=f"mask{len(mask_name)}{fill}.onnx")


def test_masks_built_on_purpose_may_hold_inf_never_nan(tmp_path):
    x = {"x": np.array([[1.0, -2.0, 3.0, -1.0]], np.float32)}
    r = F.measure(mask_graph(tmp_path, MASK_PREFIX + "0", -math.inf), [x])  # named a mask: -inf allowed
    assert r.absmax[MASK_PREFIX + "0"] == 3.0 and r.absmax["y"] <= 1.0
    with pytest.raises(F.NonFinite, match="tensor masked_fill "):  # the same tensor not named as a mask
        F.measure(mask_graph(tmp_path, "masked_fill", -math.inf), [x])
    with pytest.raises(F.NonFinite, match=f"tensor {MASK_PREFIX}0 "):  # NaN never passes, even in a mask
        F.measure(mask_graph(tmp_path, MASK_PREFIX + "0", math.nan), [x])


def test_the_exporter_names_the_models_masks(tiny_export):
    """models.fsa's three masked_fills (proxy attention, top-p cut, feedback) are the graph's only masks."""
    model = onnx.load(str(tiny_export() / "image.onnx"))
    masks = sorted(t for n in model.graph.node for t in n.output if t.startswith(MASK_PREFIX))
    assert masks == [f"{MASK_PREFIX}{i}" for i in range(3)]
    assert all(n.op_type == "Where" for n in model.graph.node if n.output[0] in masks)


def test_graph_output_producers_are_audited(tmp_path):
    """y = 100 x: AutoCast renames the producer's output and casts it back to `y`; the audit finds y's range."""
    from fsa_deploy.validation.fp16_emulate import run_graph

    path = save(tmp_path, [helper.make_node("Mul", ["x", "k"], ["y"], name="scale")], [const("k", 100.0)])
    r = F.measure(path, [feed(1000.0)])
    model = F.to_fp16(path, [])
    producer = next(n for n in model.graph.node if n.name == "scale")
    assert producer.output[0] != "y"  # renamed: the range is found through the Cast
    found = F.audit(model, r)
    assert [(f.node, f.value) for f in found] == [("scale", pytest.approx(1e5))], [f.line() for f in found]
    assert np.isinf(run_graph(model, feed(1000.0))["y"]).all()  # what fp16 arithmetic makes of it
    assert F.audit(model, F.measure(path, [feed(100.0)])) == []  # 1e4: inside the bound
    # an output other nodes read too (as FSA's stage outputs are): the producer is still found through the Cast
    path = save(tmp_path, [helper.make_node("Mul", ["k", "x"], ["y"], name="scale"),
                           helper.make_node("Relu", ["y"], ["z"], name="relu")], [const("k", 100.0)], name="read.onnx",
                outputs=("y", "z"))
    found = F.audit(F.to_fp16(path, []), F.measure(path, [feed(1000.0)]))
    assert sorted((f.node, f.value) for f in found) == [("relu", pytest.approx(1e5)), ("scale", pytest.approx(1e5))]


def test_nan_range_fails_the_audit(tmp_path):
    path = exp_graph(tmp_path)
    model = F.to_fp16(path, [])
    r = F.Ranges({"x": 1.0, "t": 2.0, "e": math.nan, "y": 1.0})
    assert {f.node for f in F.audit(model, r)} >= {"exp", "halve"}


def square_mean_graph(tmp: Path) -> Path:
    """An RMS norm written out: x / sqrt(mean(x ^ 2)), then a softmax of its scaled product."""
    return save(tmp, [helper.make_node("Pow", ["x", "two"], ["sq"], name="square"),
                      helper.make_node("ReduceMean", ["sq", "axes"], ["ms"], name="mean_sq"),
                      helper.make_node("Sqrt", ["ms"], ["rms"], name="root"),
                      helper.make_node("Div", ["x", "rms"], ["n"], name="norm"),
                      helper.make_node("MatMul", ["n", "w"], ["qk"], name="qk"),
                      helper.make_node("Mul", ["qk", "scale"], ["logits"], name="scale_logits"),
                      helper.make_node("Softmax", ["logits"], ["y"], name="softmax", axis=-1)],
                [const("two", 2.0), helper.make_tensor("axes", T.INT64, [1], [-1]),
                 const("w", np.eye(4)), const("scale", 0.125)], name="rms.onnx")


def test_policy_keeps_square_sums_and_softmax_inputs_fp32_whatever_the_ranges(tmp_path):
    path = square_mean_graph(tmp_path)
    fp32 = onnx.load(str(path))
    policy = F.precision_policy(fp32)
    assert policy == {"layernorm": [], "square_sums": ["mean_sq", "square"],
                      "softmax": ["qk", "scale_logits", "softmax"]}
    r = F.measure(path, [feed(0.5)])
    assert F.audit(fp32, r, [n.name for n in fp32.graph.node]) == []  # nothing measured near fp16's limit ...
    keep = F.fp32_islands(fp32, r, [n for v in policy.values() for n in v])
    model = F.to_fp16(path, keep)
    low = set(F.low_precision_nodes(model))
    assert low and not low & set(keep) and F.policy_violations(model) == []  # ... the policy keeps them anyway
    naive = F.to_fp16(path, [])
    assert {v.split()[0] for v in F.policy_violations(naive)} == {"mean_sq", "square", "qk", "scale_logits",
                                                                  "softmax"}


def spread_graph(tmp: Path, external: bool) -> Path:
    """LayerNorm with one wide channel (gain 60) -> MatMul with constant weights: what smoothing is for."""
    gain = np.ones(16, np.float32)
    gain[3] = 60.0
    w = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
    return save(tmp, [helper.make_node("LayerNormalization", ["x", "g", "b"], ["h"], name="ln", axis=-1),
                      helper.make_node("MatMul", ["h", "w"], ["y"], name="mm")],
                [const("g", gain), const("b", np.zeros(16)), const("w", w)], shape=(1, 5, 16), out_shape=[1, 5, 8],
                name="ext.onnx" if external else "inline.onnx", external=external)


def test_smoothing_and_outlier_islands_work_on_external_data(tmp_path):
    import onnxruntime as ort

    from fsa_deploy.calibration.smooth import has_external_data, outlier_matmuls, smooth

    feeds = [{"x": np.random.default_rng(i).standard_normal((1, 5, 16)).astype(np.float32)} for i in range(2)]
    results = {}
    for external in (False, True):
        folder = tmp_path / str(external)
        folder.mkdir()
        src = spread_graph(folder, external)
        if external:  # as fsa calibrate does: the artefact's graph and its data linked into a work folder
            work = tmp_path / "work"
            work.mkdir()
            for name in ("ext.onnx", "ext.onnx.data"):
                (work / name).symlink_to(folder / name)
            src = work / "ext.onnx"
        assert has_external_data(src) is external
        dst = folder / "smoothed.onnx"
        assert smooth(src, dst, feeds) == 1
        assert has_external_data(dst) is external and (folder / "smoothed.onnx.data").is_file() is external
        before = ort.InferenceSession(str(src)).run(["y"], feeds[0])[0]
        after = ort.InferenceSession(str(dst)).run(["y"], feeds[0])[0]
        np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4)  # the function is unchanged
        results[external] = (after, outlier_matmuls(src, feeds))
    np.testing.assert_array_equal(results[True][0], results[False][0])
    assert results[True][1] == results[False][1] == ["mm"]


def test_sessions_past_protobufs_limit_match_in_memory_ones(tiny_export):
    """ort_session's path for graphs over 2 GB (weights handed to ONNX Runtime as OrtValues), forced on tiny."""
    import onnxruntime as ort

    model = onnx.load(str(tiny_export() / "image.onnx"))
    rng = np.random.default_rng(0)
    x = {"image": rng.uniform(0, 255, (1, 3, 112, 112)).astype(np.float32),
         "text_embeddings": rng.standard_normal((3, 64)).astype(np.float32)}
    a = F.ort_session(model, ort.SessionOptions()).run(["logits"], x)[0]
    b = F.ort_session(model, ort.SessionOptions(), inline_bytes=0).run(["logits"], x)[0]
    np.testing.assert_array_equal(a, b)


def test_policy_reads_a_graph_loaded_without_its_external_data(tmp_path, monkeypatch):
    """`fsa lint` loads a graph over 2 GB without its weights, from any folder: the policy still finds its nodes."""
    w = numpy_helper.from_array(np.ones((4, 64), np.float32), "w")  # 1 KB: stored outside, as a weight is
    path = tmp_path / "sq.onnx"
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"), helper.make_node("Pow", ["h", "two"], ["sq"],
                                                                                     name="square"),
         helper.make_node("ReduceMean", ["sq", "axes"], ["y"], name="mean_sq")], "g",
        [helper.make_tensor_value_info("x", T.FLOAT, [1, 4])], [helper.make_tensor_value_info("y", T.FLOAT, [1, 1])],
        [w, const("two", 2.0), helper.make_tensor("axes", T.INT64, [1], [-1])])
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path),
                    save_as_external_data=True, location="sq.onnx.data", size_threshold=512)
    monkeypatch.chdir(tmp_path.parent)  # not the graph's folder: its data cannot be found from here
    model = onnx.load(str(path), load_external_data=False)
    assert [t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL] == ["w"]
    assert F.precision_policy(model)["square_sums"] == ["mean_sq", "square"]
    assert F.policy_violations(model) == []  # an fp32 graph: nothing computes in fp16

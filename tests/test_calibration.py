"""`fsa calibrate`: Q/DQ graphs from ModelOpt on a tiny artefact, and one-line errors on bad input.

The ModelOpt tests (marked `quant`) share one tiny export and one int8 and one fp8 calibration
(module fixtures, about a minute on 2 cores). The bad-input tests use a hand-made artefact
folder: every check they hit runs before ModelOpt or the graph is touched.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import missing, needs
from onnx import TensorProto
from onnx import helper as h

from fsa_deploy.contract import FORMAT, FORMAT_VERSION, IMAGE, IMAGE_ONNX, TEXT_EMBEDDINGS
from fsa_deploy.runtime import artifact as A

REPO = Path(__file__).resolve().parents[1]
HAVE_MODELOPT = importlib.util.find_spec("modelopt") is not None
needs_modelopt = needs("modelopt")  # the quant extra; under make test its absence fails the run
QDQ = ("QuantizeLinear", "DequantizeLinear")
COUNT = 8


def fsa(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fsa_deploy", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


def calibrate(folder: Path, *args: str) -> dict:
    """`fsa calibrate` in this process (the module's int8 and fp8 graphs; no second interpreter's torch and
    ModelOpt imports): its JSON line on stdout."""
    from fsa_deploy.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["calibrate", str(folder), "--calibration-count", str(COUNT), *args])
    assert rc == 0, out.getvalue()[-3000:]  # stderr: pytest's captured output of this test
    return json.loads(out.getvalue().strip().splitlines()[-1])


def one_line_error(r: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2 and a single stderr line that names what is wrong."""
    assert r.returncode == 2, (r.returncode, r.stdout[-500:], r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def artefact(tiny_artifact, tmp_path_factory) -> Path:
    """A copy of conftest's session export (tiny CLIP + tiny DINO, FSA, crop 112, seed 0: `fsa export`'s
    image and text graphs): calibration writes its graphs and cache into the copy."""
    if not HAVE_MODELOPT:
        missing("NVIDIA ModelOpt not installed")
    import shutil

    out = tmp_path_factory.mktemp("cal") / "art"
    shutil.copytree(tiny_artifact.root, out)
    return out


@pytest.fixture(scope="module")
def int8(artefact: Path) -> dict:
    return calibrate(artefact)


@pytest.fixture(scope="module")
def fp8(artefact: Path, int8: dict) -> dict:
    """After int8 with the same images and count: the cached calibration tensors are reused."""
    return calibrate(artefact, "--precision", "fp8")


def neighbours(graph: onnx.GraphProto) -> tuple[dict[str, onnx.NodeProto], dict[str, list[onnx.NodeProto]]]:
    producer = {t: n for n in graph.node for t in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    return producer, consumers


def held_out(folder: Path, n: int = 4) -> dict[str, np.ndarray]:
    """Crops of the last sample photo (not among the first COUNT crops) with the default vocabulary."""
    from fsa_deploy.calibration.data import default_vocabulary, pipeline_crops, vocabulary_text
    from fsa_deploy.runtime.images import sample_photos

    art = A.Artifact.load(folder)
    crops, _ = pipeline_crops([Path(sample_photos()[-1])], int(art.meta["crop"]), n)
    return {IMAGE: crops, TEXT_EMBEDDINGS: vocabulary_text(art, default_vocabulary())}


def compare(folder: Path, name: str) -> tuple[float, float]:
    """rel L2 and cosine of a Q/DQ graph's crop logits against image.onnx's, on ORT CPU."""
    from fsa_deploy.runtime.backends.onnxrt import CPU_EP, OnnxRuntimeBackend

    feed = held_out(folder)
    run = lambda f: OnnxRuntimeBackend(folder, f, providers=[CPU_EP]).run(feed[IMAGE], feed[TEXT_EMBEDDINGS])
    ref, out = run(IMAGE_ONNX), run(name)
    assert out.shape == ref.shape and np.isfinite(out).all()
    rel = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
    cos = float((out * ref).sum() / (np.linalg.norm(out) * np.linalg.norm(ref)))
    n = len(feed[IMAGE])
    print(f"\n{name} vs {IMAGE_ONNX} on {n} held-out photo crops: rel L2 {rel:.4f}, cosine {cos:.5f}")
    return rel, cos


# ---------------------------------------------------------------- ModelOpt


@pytest.mark.quant
@needs_modelopt
def test_int8_quantizes_backbone_not_feedback(artefact: Path, int8: dict) -> None:
    graph = onnx.load(str(artefact / "image.int8.onnx")).graph
    scope = A.Artifact.load(artefact).meta["feedback_scope"]
    producer, consumers = neighbours(graph)
    qdq = [n for n in graph.node if n.op_type in QDQ]
    assert qdq and int8["qdq_pairs"] == sum(n.op_type == "QuantizeLinear" for n in qdq)
    fed = {c.op_type for n in qdq if n.op_type == "DequantizeLinear" for t in n.output for c in consumers.get(t, [])
           if not c.name.startswith(scope)}
    assert {"MatMul", "Conv"} <= fed, fed  # the proxy: patch embedding and linear layers
    for n in qdq:
        around = [producer[t] for t in n.input if t in producer] + [c for t in n.output for c in consumers.get(t, [])]
        assert not [m.name for m in around if m.name.startswith(scope)], f"{n.name} touches the feedback block"
    for sm in (n for n in graph.node if n.op_type == "Softmax"):
        assert all(producer[t].op_type != "DequantizeLinear" for t in sm.input if t in producer), sm.name
        for mm in (c for c in consumers.get(sm.output[0], []) if c.op_type == "MatMul"):  # probabilities x V
            assert all(producer[t].op_type != "DequantizeLinear" for t in mm.input if t in producer), mm.name
    from fsa_deploy.calibration.rules import clip_trunk_nodes

    stages = A.Artifact.load(artefact).meta["stages"]
    trunk = set(clip_trunk_nodes(onnx.load(str(artefact / IMAGE_ONNX)).graph, stages))
    assert len(trunk) > 20, "the CLIP trunk was not found"  # default --quantize proxy: CLIP's trunk stays fp32
    fed_trunk = [c.name for n in qdq if n.op_type == "DequantizeLinear" for t in n.output
                 for c in consumers.get(t, []) if c.name in trunk]
    assert not fed_trunk, fed_trunk[:5]
    print(f"\nimage.int8.onnx: {int8['qdq_pairs']} Q/DQ pairs, feeding {int8['quantized_ops']}, "
          f"{int8['seconds']} s")


@pytest.mark.quant
@needs_modelopt
def test_quiet_leaves_stderr_empty(artefact: Path, int8: dict, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "art"
    shutil.copytree(artefact, copy)  # the module's artefact keeps its cache and its int8 graph
    r = fsa("calibrate", copy, "--calibration-count", "2", "--method", "max", "--quiet")
    assert r.returncode == 0 and r.stderr == "", r.stderr[-2000:]
    assert json.loads(r.stdout)["crops"] == 2


@pytest.mark.quant
@needs_modelopt
def test_op_types_absent_from_the_graph(artefact: Path) -> None:
    one_line_error(fsa("calibrate", artefact, "--calibration-count", "1", "--op-types", "MatMul,Einsum"),
                   "--op-types Einsum")


@pytest.mark.quant
@needs_modelopt
def test_int8_recorded_in_meta(artefact: Path, int8: dict) -> None:
    art = A.Artifact.load(artefact)
    info = art.files()["image.int8.onnx"]
    assert info["role"] == "image-qdq" and info["precision"] == "int8" and info["source"] == IMAGE_ONNX
    assert info["source_sha256"] == art.files()[IMAGE_ONNX]["sha256"]
    assert info["calibration"]["method"] == "entropy" and info["calibration"]["count"] == COUNT
    assert info["calibration"]["region"] == "proxy" and info["calibration"]["batch"] == 1
    assert info["calibration"]["images"], info["calibration"]
    art.verify_all()  # every file, the cache included, matches its recorded sha256
    hidden = [p.name for p in artefact.iterdir() if p.name.startswith(".") and p.name != ".meta.json.lock"]
    assert not hidden, "temporary files left behind"  # the lock of meta.json's writers stays (empty)


@pytest.mark.quant
@needs_modelopt
def test_int8_runs_on_ort_close_to_fp32(artefact: Path, int8: dict) -> None:
    rel, cos = compare(artefact, "image.int8.onnx")
    assert cos > 0.999 and rel < 0.03  # measured 0.0059 (proxy-only int8, CLIP trunk fp32)


@pytest.mark.quant
@needs_modelopt
def test_int8_passes_the_int8_profile(artefact: Path, int8: dict, tmp_path: Path, run_here) -> None:
    """The issue's gate: pixel agreement >= 99% (and mIoU >= 0.97) against the fp32 reference, 5 photos."""
    r = run_here("validate", artefact, "--graph", "image.int8.onnx", "--json", tmp_path / "v.json")
    summary = json.loads((tmp_path / "v.json").read_text())["summary"]
    print(f"\nint8 vs reference: pixel agreement {summary['pixel_agreement_min']:.4f}, mIoU {summary['miou_min']:.4f}")
    assert r.returncode == 0, r.stdout[-1500:]
    assert summary["pixel_agreement_min"] >= 0.99


@pytest.mark.quant
@needs_modelopt
def test_fp8_reuses_cache_and_runs_on_ort(artefact: Path, fp8: dict) -> None:
    assert fp8["cache_hit"] and fp8["precision"] == "fp8" and fp8["crops"] == COUNT
    graph = onnx.load(str(artefact / "image.fp8.onnx")).graph
    zero_points = {i.name: i.data_type for i in graph.initializer}
    q_types = {zero_points.get(n.input[2]) for n in graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2}
    assert q_types == {TensorProto.FLOAT8E4M3FN}, q_types
    rel, cos = compare(artefact, "image.fp8.onnx")
    assert cos > 0.95 and rel < 0.3


@pytest.mark.quant
@needs_modelopt
@pytest.mark.parametrize("name", ["image.int8.onnx", "image.fp8.onnx"])
def test_qdq_graphs_pass_lint(artefact: Path, int8: dict, fp8: dict, name: str) -> None:
    from fsa_deploy.export.lint import lint_versions

    reports = lint_versions(str(artefact / name), (10, 11))
    assert sorted(reports) == [10, 11]
    for major, report in reports.items():
        assert report.ok, f"TensorRT {major}: {report.format()}"


# ---------------------------------------------------------------- the fp32 region, on a hand-made graph


def test_excluded_nodes_cover_tail_and_shared_inputs() -> None:
    """x feeds a backbone MatMul and the block; the block's output feeds the tail (two nodes)."""
    from fsa_deploy.calibration.rules import excluded_nodes

    f = TensorProto.FLOAT
    nodes = [
        h.make_node("MatMul", ["x", "w"], ["y"], name="MatMul_0"),  # backbone
        h.make_node("MatMul", ["y", "w"], ["z"], name="MatMul_1"),  # reads y, as the block does
        h.make_node("Softmax", ["y"], ["p"], name="feedback/Softmax_0"),
        h.make_node("MatMul", ["p", "z"], ["o"], name="MatMul_2"),  # tail
        h.make_node("Relu", ["o"], ["out"], name="Relu_0"),  # tail
    ]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", f, [4, 4]),
                                      h.make_tensor_value_info("w", f, [4, 4])],
                         [h.make_tensor_value_info("out", f, [4, 4])])
    assert excluded_nodes(graph, "feedback/") == ["MatMul_1", "MatMul_2", "Relu_0"]
    assert excluded_nodes(graph, "nothing/") == []


def test_walk_follows_data_flow_by_index_with_unnamed_nodes() -> None:
    """The shared walk (exporter and calibration): nodes by index, as the exporter sees them before
    naming; `avoid` neither enters nor passes through a node."""
    from fsa_deploy.export.graph_walk import Walk

    nodes = [h.make_node("Relu", ["x"], ["a"]), h.make_node("Relu", ["a"], ["b"]),  # 0, 1
             h.make_node("Add", ["a", "y"], ["c"]), h.make_node("Mul", ["b", "c"], ["d"]),  # 2, 3
             h.make_node("Neg", ["y"], ["e"])]  # 4
    f = TensorProto.FLOAT
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info(n, f, [1]) for n in "xy"],
                         [h.make_tensor_value_info(n, f, [1]) for n in "de"])
    walk = Walk(graph)
    assert walk.upstream(["d"]) == {0, 1, 2, 3} and walk.upstream(["e"]) == {4} and walk.upstream(["x"]) == set()
    assert walk.downstream(["y"]) == {2, 3, 4} and walk.downstream(["a"]) == {1, 2, 3}
    assert walk.downstream(["a"], avoid=[1]) == {2, 3} and walk.downstream(["a"], avoid=[1, 2]) == set()


def test_probability_matmuls_are_the_ones_reading_a_softmax() -> None:
    from fsa_deploy.calibration.rules import probability_matmuls

    f = TensorProto.FLOAT
    nodes = [
        h.make_node("MatMul", ["x", "w"], ["s"], name="scores"),  # activations x weights: quantized
        h.make_node("Softmax", ["s"], ["p"], name="softmax"),
        h.make_node("MatMul", ["p", "x"], ["o"], name="attn_v"),  # probabilities x values: kept
        h.make_node("MatMul", ["x", "p"], ["o2"], name="v_attn"),  # either input
        h.make_node("Add", ["o", "o2"], ["out"], name="add"),
    ]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", f, [4, 4]),
                                      h.make_tensor_value_info("w", f, [4, 4])],
                         [h.make_tensor_value_info("out", f, [4, 4])])
    assert probability_matmuls(graph) == ["attn_v", "v_attn"]


# ---------------------------------------------------------------- bad input (no ModelOpt needed)


def fake_artefact(root: Path, with_image: bool = True) -> Path:
    """meta.json (and a placeholder image.onnx): enough for every check before ModelOpt runs."""
    root.mkdir(parents=True)
    art = A.Artifact(root, {"format": FORMAT, "format_version": FORMAT_VERSION, "crop": 112,
                            "feedback_scope": "feedback/", "files": {}})
    if with_image:
        (root / IMAGE_ONNX).write_bytes(b"placeholder: never parsed by these tests")
        art.record(IMAGE_ONNX, role="image", precision="fp32")
    art.save()
    return root


def photo(folder: Path) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "grey.png"
    Image.new("RGB", (64, 48), (128, 128, 128)).save(path)
    return path


def test_artefact_without_image_onnx(tmp_path: Path) -> None:
    r = fsa("calibrate", fake_artefact(tmp_path / "a", with_image=False), "--images", photo(tmp_path / "i"))
    one_line_error(r, "image.onnx")


def test_empty_image_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    r = fsa("calibrate", fake_artefact(tmp_path / "a"), "--images", tmp_path / "empty")
    one_line_error(r, "--images", "folder has no image files")


def test_missing_image(tmp_path: Path) -> None:
    r = fsa("calibrate", fake_artefact(tmp_path / "a"), "--images", tmp_path / "nope.png")
    one_line_error(r, "--images", "nope.png")


@pytest.mark.parametrize("count", ["0", "-3"])
def test_count_below_one(tmp_path: Path, count: str) -> None:
    r = fsa("calibrate", fake_artefact(tmp_path / "a"), "--calibration-count", count, "--images",
            photo(tmp_path / "i"))
    one_line_error(r, f"--calibration-count {count}")


@pytest.mark.parametrize("batch", ["0", "-1"])
def test_batch_below_one(tmp_path: Path, batch: str) -> None:
    r = fsa("calibrate", fake_artefact(tmp_path / "a"), "--batch", batch, "--images", photo(tmp_path / "i"))
    one_line_error(r, f"--batch {batch}")


def test_quantize_proxy_without_a_proxy(tmp_path: Path) -> None:
    r = fsa("calibrate", fake_artefact(tmp_path / "a"), "--quantize", "proxy", "--images", photo(tmp_path / "i"))
    one_line_error(r, "--quantize proxy", "no proxy")


def test_not_an_artefact(tmp_path: Path) -> None:
    one_line_error(fsa("calibrate", tmp_path), "meta.json")


def run_without_modelopt(args: Sequence[str | Path]) -> subprocess.CompletedProcess:
    """The CLI in a process where `import modelopt` fails, as on a machine without it."""
    code = ("import sys; sys.modules['modelopt'] = None; from fsa_deploy import cli as fsa_cli; "
            f"sys.exit(fsa_cli.main({[str(a) for a in args]!r}))")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_missing_modelopt_names_the_install(tmp_path: Path) -> None:
    r = run_without_modelopt(["calibrate", fake_artefact(tmp_path / "a"), "--images", photo(tmp_path / "i")])
    one_line_error(r, "NVIDIA ModelOpt is not installed", "pip install 'fsa-deploy[quant]'")

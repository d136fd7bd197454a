"""The validator: passes a correct export, fails altered ones and locates the broken stage."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from conftest import assert_one_line_error, photos

from fsa_deploy.contract import IMAGE_ONNX, TEXT_ONNX
from fsa_deploy.runtime import artifact as A


@pytest.fixture
def validate(run_here):
    """`fsa validate FOLDER --images (2 photos) ...` in this process (test_signals runs it as a process
    of its own): a new interpreter's imports would be most of each call's time."""
    return lambda folder, *extra: run_here("validate", folder, "--images", *photos()[:2], *extra)


def copy_artifact(src, dst):
    shutil.copytree(src, dst)
    return A.Artifact.load(dst)


def rewrite_image_graph(art: A.Artifact, edit) -> None:
    """Change image.onnx in place, then update meta.json's hash so that it loads."""
    path = art.root / IMAGE_ONNX
    model = onnx.load(str(path))
    edit(model)
    onnx.save(model, str(path))
    art.record(IMAGE_ONNX, **{k: v for k, v in art.files()[IMAGE_ONNX].items() if k not in ("sha256", "bytes")})
    art.save()


def test_correct_export_passes_with_reports(validate, tiny_artifact, tmp_path):
    js, md = tmp_path / "r.json", tmp_path / "r.md"
    proc = validate(tiny_artifact.root, "--json", js, "--md", md)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASSED" in proc.stdout
    report = json.loads(js.read_text())
    assert report["passed"] is True and report["tolerance_profile"] == "fp32"
    for key in ("logits_rel_l2_max", "logits_cosine_min", "pixel_agreement_min", "miou_min", "top_p_tie_entries"):
        assert key in report["summary"], key
    assert report["tolerances"]["logits_rel_l2_max"] == 1e-5
    assert report["summary"]["logits_rel_l2_max"] <= 1e-5
    assert report["summary"]["pixel_agreement_min"] == 1.0
    assert len(report["images"]) == 2
    for img in report["images"]:
        for key in ("logits_rel_l2", "logits_cosine", "pixel_agreement", "miou", "top_p_tie_entries"):
            assert key in img, key
    text = md.read_text()  # the Markdown report renders the JSON's numbers
    for img in report["images"]:
        assert f"{img['logits_rel_l2']:.3e}" in text
        assert f"{img['pixel_agreement']:.6f}" in text
    print(json.dumps(report["summary"]))


def test_altered_weights_fail_and_stages_locate_them(validate, tiny_artifact, tmp_path):
    art = copy_artifact(tiny_artifact.root, tmp_path / "w")

    def scale_proxy_patch_embedding(model):
        # tiny DINO's patch embedding: the only conv weight with an 8 x 8 kernel
        init = next(i for i in model.graph.initializer if list(i.dims)[-2:] == [8, 8])
        w = onnx.numpy_helper.to_array(init) * np.float32(1.01)
        init.CopyFrom(onnx.numpy_helper.from_array(w, init.name))

    rewrite_image_graph(art, scale_proxy_patch_embedding)
    js = tmp_path / "r.json"
    proc = validate(art.root, "--stages", "--json", js)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(js.read_text())
    assert report["passed"] is False
    assert report["summary"]["first_failing_stage"] == "proxy_features"
    assert "proxy_features" in proc.stderr


def test_wrong_feedback_step_is_located(validate, tiny_artifact, tmp_path):
    art = copy_artifact(tiny_artifact.root, tmp_path / "l")
    lamda = tiny_artifact.meta["hyper_parameters"]["lamda"]

    def change_lamda(model):
        """lambda * Sim: the feedback Mul whose constant operand equals lambda becomes 4.5."""
        consts = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
        for node in model.graph.node:
            if node.name.startswith("feedback/Mul"):
                for k, name in enumerate(node.input):
                    if name in consts and consts[name].size == 1 and float(consts[name]) == lamda:
                        # a constant of its own: the exporter shares equal constants (gamma is 3.0 too)
                        wrong = onnx.numpy_helper.from_array(np.array(4.5, consts[name].dtype), "wrong_lamda")
                        model.graph.initializer.append(wrong)
                        node.input[k] = wrong.name
                        return
        raise AssertionError("no lambda constant found in the feedback block")

    rewrite_image_graph(art, change_lamda)
    js = tmp_path / "r.json"
    proc = validate(art.root, "--stages", "--json", js)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(js.read_text())
    assert report["summary"]["first_failing_stage"] == "attn_new"


def test_bad_input(validate, tiny_artifact, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(validate(empty), str(empty), "meta.json")
    art = copy_artifact(tiny_artifact.root, tmp_path / "h")
    with open(art.root / TEXT_ONNX, "ab") as f:
        f.write(b"x")
    assert_one_line_error(validate(art.root), "text.onnx", "sha256")
    assert_one_line_error(validate(tiny_artifact.root, "--graph", "image.int8.onnx"), "--graph image.int8.onnx")
    assert_one_line_error(validate(tiny_artifact.root, "--backend", "torch"), "--backend torch", "auto, trt, onnx")
    assert_one_line_error(validate(tiny_artifact.root, "--graph", "image.onnx", "--artifact", "image.onnx"),
                          "--artifact and --graph")
    art = copy_artifact(tiny_artifact.root, tmp_path / "m")
    (art.root / TEXT_ONNX).unlink()
    assert_one_line_error(validate(art.root), "text.onnx", "missing")
    assert_one_line_error(validate(tiny_artifact.root, "--profile", "int4"), "--profile 'int4'")
    assert_one_line_error(validate(tiny_artifact.root, "--tol", "nonsense=1"), "--tol nonsense")


def test_old_artifact_spelling_still_names_the_file(validate, tiny_artifact):
    """`--artifact FILE` (a folder everywhere else) still works, with one deprecation line first."""
    proc = validate(tiny_artifact.root, "--artifact", "image.int8.onnx")
    assert proc.returncode == 2, proc.stderr
    note, error = proc.stderr.strip().splitlines()
    assert "--artifact FILE is deprecated, use --graph FILE" in note
    assert "--graph image.int8.onnx: not in" in error


@pytest.mark.parametrize("profile", ["int8"])
def test_profile_changes_thresholds(validate, tiny_artifact, tmp_path, profile):
    js = tmp_path / "r.json"
    proc = validate(tiny_artifact.root, "--profile", profile, "--tol", "miou_min=0.5", "--json", js)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(js.read_text())
    assert report["tolerance_profile"] == "int8"
    assert report["tolerances"]["pixel_agreement_min"] == 0.99 and report["tolerances"]["miou_min"] == 0.5


def test_external_data_export_validates(tmp_path, run_here):
    """A tiny export forced to keep its weights in image.onnx.data (as ViT-H's are, past protobuf's
    2 GB) validates, with every stage tensor added as an output: the graph is rewritten and handed
    to ONNX Runtime without its weights, which stay in their file."""
    from conftest import tiny_spec

    from fsa_deploy.export.onnx_export import export_artifact

    art = export_artifact(tiny_spec(), tmp_path / "ext", progress=False, lint=False, external_data_bytes=0)
    files = art.files()
    assert files[IMAGE_ONNX + ".data"]["role"] == "external-data", files
    graph = onnx.load(str(art.root / IMAGE_ONNX), load_external_data=False).graph
    external = [t for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    weights = files[IMAGE_ONNX + ".data"]["bytes"]
    assert len(external) > 10 and files[IMAGE_ONNX]["bytes"] < weights
    from fsa_deploy.runtime.backends.onnxrt import graph_with_outputs

    handed = graph_with_outputs(art, IMAGE_ONNX, list(art.meta["stages"]))  # what ONNX Runtime gets
    assert len(handed) < weights / 4, (len(handed), weights)  # the weights did not come along
    js = tmp_path / "r.json"
    proc = run_here("validate", art.root, "--images", photos()[0], "--stages", "--json", js)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(js.read_text())
    assert report["passed"] is True and report["summary"]["logits_rel_l2_max"] <= 1e-5

"""The exporter: image.onnx on ONNX Runtime equals the PyTorch deploy reference; lint; meta; bad input."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import (
    CONFIGS,
    CROP,
    QUERY_COUNTS,
    assert_one_line_error,
    photo_crops,
    photos,
    rel_l2,
    tiny_reference,
    unit_text,
)

from fsa_deploy.contract import IMAGE, IMAGE_ONNX, LOGITS, META, TEXT_EMBEDDINGS, TEXT_ONNX, TOKENS
from fsa_deploy.errors import FSAError
from fsa_deploy.export.lint import lint
from fsa_deploy.export.onnx_export import export_image
from fsa_deploy.models.factory import spec_from_meta
from fsa_deploy.models.fsa import ambiguous_entries, top_p_keep, top_p_keep_sort
from fsa_deploy.models.reference import aligned_stages
from fsa_deploy.runtime import artifact as A


def ort_session(model_or_path):
    import onnxruntime as ort

    data = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def artifact(tiny_artifact):
    return tiny_artifact


def assert_matches_reference(model, stage_map, path, crops, ks=QUERY_COUNTS, what=""):
    """ORT's logits equal torch's; masks that rounding decides are compared under ORT's choice."""
    names = [n for n in ("keep", "attn_proxy") if n in stage_map]
    sess = ort_session(A.with_stage_outputs(onnx.load(str(path)), stage_map, names) if names else path)
    for k in ks:
        text = unit_text(k)
        got = dict(zip([LOGITS, *names], sess.run(None, {IMAGE: crops.numpy(), TEXT_EMBEDDINGS: text.numpy()})))
        with torch.no_grad():
            ref, al = aligned_stages(model, crops, text, got)
        assert al.top_p_flips == 0 and al.proxy_flips == 0, f"{what} K={k}: unambiguous mask flips {al}"
        err = rel_l2(got[LOGITS], ref["logits"])
        print(f"{what} K={k}: ORT vs torch rel L2 {err:.2e} ({al}, excused)")
        assert got[LOGITS].shape == tuple(ref["logits"].shape)
        assert err <= 1e-5, f"{what} K={k}: rel L2 {err:.2e}"


# `fsa export` of the Q-K base method without FSA: test_fsa_export_cli_prints_progress reads its stderr and
# test_image_graph_equals_reference[qk-base] its image.onnx (one dynamo export for both)
CLI_EXPORT = ("--model", "tiny", "--random-init", "--attention", "qk", "--crop", str(CROP), "--no-fsa")


@pytest.fixture(scope="module")
def cli_export(tmp_path_factory) -> tuple[int, str, Path]:
    """`fsa export` in this process: (exit code, stderr, the folder)."""
    from fsa_deploy.cli import main

    out, err = tmp_path_factory.mktemp("cli") / "b", io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["export", "--out", str(out), *CLI_EXPORT])
    return rc, err.getvalue(), out


@pytest.mark.parametrize("fsa", [True, False], ids=["fsa", "base"])
@pytest.mark.parametrize("attention,proxy", CONFIGS, ids=[p or a for a, p in CONFIGS])
def test_image_graph_equals_reference(request, tmp_path, tiny_export, attention, proxy, fsa):
    ref = tiny_reference(attention, proxy, fsa)
    if fsa:  # conftest's session export, made as here (test_trt builds its engines from the same folder)
        folder = tiny_export(attention, proxy)
        stage_map = json.loads((folder / META).read_text())["stages"]
    elif (attention, proxy) == ("qk", None):  # the CLI's export of this very selection (cli_export)
        rc, err, folder = request.getfixturevalue("cli_export")
        assert rc == 0, err
        meta = json.loads((folder / META).read_text())
        assert spec_from_meta(meta) == ref.spec, meta  # what is compared below is what was exported
        stage_map = meta["stages"]
    else:
        folder = tmp_path
        with torch.no_grad():
            stage_map, nodes = export_image(ref, folder, "fp32", 64)
    path = folder / IMAGE_ONNX
    for major in (10, 11):
        report = lint(str(path), major)
        assert report.ok, report.format()
    graph = onnx.load(str(path))
    ops = {n.op_type for n in graph.graph.node}
    assert not ops & {"Loop", "If", "Scan", "Sort", "NonZero"}, ops
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.graph.input]
    assert dims == [["batch", 3, CROP, CROP], ["classes", ref.model.embed_dim]], dims
    assert_matches_reference(ref.model, stage_map, path, photo_crops(2), what=f"{attention}/{proxy}/fsa={fsa}")


def test_batch_of_three_equals_three_singles(artifact):
    sess = ort_session(artifact.path(IMAGE_ONNX))
    crops, text = photo_crops(3).numpy(), unit_text(21).numpy()
    batched = sess.run(None, {IMAGE: crops, TEXT_EMBEDDINGS: text})[0]
    singles = np.concatenate([sess.run(None, {IMAGE: c[None], TEXT_EMBEDDINGS: text})[0] for c in crops])
    assert rel_l2(batched, singles) <= 1e-6


def test_text_graph_equals_open_clip(artifact):
    from fsa_deploy.runtime.text import tokenize

    tokens = tokenize(["a photo of a cat.", "a bad photo of the dog.", "itap of a sofa.", "grass"])
    sess = ort_session(artifact.path(TEXT_ONNX))
    got = sess.run(None, {TOKENS: tokens.astype(np.int32)})[0]
    with torch.no_grad():
        want = tiny_reference().encode_text(torch.from_numpy(tokens))
    assert rel_l2(got, want) <= 1e-6


def test_meta_records_contract_and_hashes(artifact):
    meta = json.loads((artifact.root / META).read_text())
    for key in ("format_version", "model", "weights", "attention", "proxy", "crop", "clip_grid", "grid",
                "hyper_parameters", "logit_scale", "templates", "precision", "opset", "versions", "files"):
        assert key in meta, key
    assert meta["weights"] == {"source": "random-init", "seed": 0}
    assert len(meta["templates"]) == 80
    for name, info in meta["files"].items():
        assert A.sha256_file(artifact.root / name) == info["sha256"], name
    for major in (10, 11):
        assert lint(str(artifact.root / TEXT_ONNX), major).ok


def test_changed_file_is_detected(artifact, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(artifact.root, copy)
    with open(copy / IMAGE_ONNX, "ab") as f:
        f.write(b"\0")
    with pytest.raises(FSAError, match="sha256 does not match"):
        A.Artifact.load(copy).path(IMAGE_ONNX)


def test_segment_refuses_a_graph_changed_after_export(artifact, tmp_path, run_here):
    """A real photo and a graph that still loads and runs (one weight changed, re-saved): only the
    hash check stands between it and a label map, so exit 2 must come from it and name it."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(artifact.root, copy)
    model = onnx.load(str(copy / IMAGE_ONNX))
    init = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    w = onnx.numpy_helper.to_array(init).copy()
    w.flat[0] += 1.0
    init.CopyFrom(onnx.numpy_helper.from_array(w, init.name))
    onnx.checker.check_model(model)
    onnx.save(model, str(copy / IMAGE_ONNX))
    proc = run_here("segment", photos()[0], "--artifact", copy, "--out", tmp_path / "seg", "--no-cache",
                   "--backend", "onnx")
    assert_one_line_error(proc, IMAGE_ONNX, "sha256 does not match")
    assert not (tmp_path / "seg").exists() or not any((tmp_path / "seg").iterdir())


def test_top_p_graph_at_sam_grid(tmp_path):
    """The deploy top-p alone at N = 4096 (SAM's grid): a TopK of 1844, lint-clean, equal to the sort on ORT."""

    class TopP(torch.nn.Module):
        def forward(self, sim):
            return top_p_keep(sim, 0.45)

    path = tmp_path / "top_p.onnx"
    torch.onnx.export(TopP().eval(), (torch.rand(1, 4096, 4096),), str(path), input_names=["sim"],
                      output_names=["keep"],
                      dynamo=True, opset_version=18, optimize=False, verbose=False)
    for major in (10, 11):
        assert lint(str(path), major).ok, lint(str(path), major).format()
    ks = [n for n in onnx.load(str(path)).graph.node if n.op_type == "TopK"]
    assert len(ks) == 1, [n.op_type for n in onnx.load(str(path)).graph.node]
    g = torch.Generator().manual_seed(1)
    sim = 1.0 / (1.0 + 3.0 * torch.rand(1, 4096, 4096, generator=g))
    got = torch.from_numpy(ort_session(path).run(None, {"sim": sim.numpy()})[0])
    differ = got != top_p_keep_sort(sim, 0.45)
    amb = ambiguous_entries(sim, 0.45)
    print(f"N=4096 on ORT: {int(differ.sum())} flips, all ambiguous: {bool((differ <= amb).all())}")
    assert int((differ & ~amb).sum()) == 0


@pytest.mark.parametrize("args,needle", [
    (["--model", "ViT-Q-1", "--random-init"], "--model 'ViT-Q-1'"),
    (["--model", "tiny", "--random-init", "--proxy", "dinov9"], "--proxy 'dinov9'"),
    (["--model", "tiny", "--random-init", "--proxy", "tiny-dino", "--crop", "120"], "--crop 120"),
    (["--model", "tiny", "--proxy", "tiny-dino"], "weights"),
])
def test_export_bad_input(tmp_path, run_here, args, needle):
    proc = run_here("export", "--out", tmp_path / "a", "--quiet", *args)
    assert_one_line_error(proc, needle)
    assert not (tmp_path / "a").exists()


def test_export_refuses_a_folder_that_is_not_an_artifact(tmp_path, run_here):
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    proc = run_here("export", "--out", mine, "--model", "tiny", "--random-init", "--proxy", "tiny-dino",
                   "--crop", "112", "--quiet")
    assert_one_line_error(proc, str(mine), "not an artefact folder")
    assert sorted(p.name for p in mine.iterdir()) == ["keep.txt"]


def test_zero_classes_is_refused(artifact, tmp_path, run_here):
    from fsa_deploy.runtime.text import Vocabulary

    with pytest.raises(FSAError, match="no class names"):
        Vocabulary.parse(" ; , ")
    proc = run_here("segment", photos()[0], "--artifact", artifact.root, "--out", tmp_path / "o", "--classes", " , ;")
    assert_one_line_error(proc, "--classes")
    out = tmp_path / "o"
    assert not out.exists() or not list(out.iterdir()), "nothing is written for a refused vocabulary"


def test_fsa_export_cli_prints_progress(cli_export):
    rc, err, folder = cli_export
    assert rc == 0, err
    assert "[1/6]" in err and "linting" in err
    assert (folder / META).is_file()

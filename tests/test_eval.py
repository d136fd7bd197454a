"""`fsa eval`: datasets in each layout, IoUMetric's numbers, the reference and artefact
rows side by side, reproduction by `fsa segment`, resumption, bad inputs, serving.

Datasets are made here: real photos from scikit-image, shrunk, with masks drawn by the test.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, assert_one_line_error, missing, photo_crops, photos, require, run_cli, unit_text
from PIL import Image, ImageDraw

from benchmarks.ports import free_ports
from fsa_deploy.validation.eval import datasets as D
from fsa_deploy.validation.eval.metrics import confusion, scores

SIZE = (120, 90)  # (width, height) of the test photos: small, not square


# ---------------------------------------------------------------- an independent IoUMetric


def iou_metric(preds: list[np.ndarray], gts: list[np.ndarray], k: int, ignore: int = 255) -> dict:
    """mmseg's IoUMetric, transcribed without a confusion matrix: per image, histograms of the
    intersection, the prediction and the label over the pixels whose label is not ignored."""
    inter, area_p, area_l = np.zeros(k), np.zeros(k), np.zeros(k)
    for p, g in zip(preds, gts):
        m = g != ignore
        p, g = p[m], g[m]
        inter += np.histogram(p[p == g], bins=k, range=(0, k - 1))[0] if k > 1 else [(p == g).sum()]
        area_p += np.histogram(p, bins=k, range=(0, k - 1))[0]
        area_l += np.histogram(g, bins=k, range=(0, k - 1))[0]
    union = area_p + area_l - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou, acc = inter / union, inter / area_l
    return {"iou": iou, "miou": np.nanmean(iou), "macc": np.nanmean(acc), "aacc": inter.sum() / area_l.sum()}


def test_metrics_match_an_independent_iou_metric():
    rng = np.random.default_rng(0)
    k = 7
    gts, preds = [], []
    for shape in ((31, 47), (20, 20), (64, 9)):
        g = rng.integers(0, 5, size=shape)  # classes 5 and 6 never in the ground truth
        g[rng.random(shape) < 0.15] = 255  # ignore pixels
        p = rng.integers(0, 6, size=shape)  # class 5 predicted, absent from the ground truth: IoU 0
        gts.append(g)
        preds.append(p)  # class 6: absent from both: NaN, excluded from the mean
    cm = sum(confusion(g, p, k, 255) for g, p in zip(gts, preds))
    assert cm.dtype == np.int64 and cm.sum() == sum(int((g != 255).sum()) for g in gts)
    got, want = scores(cm), iou_metric(preds, gts, k)
    np.testing.assert_allclose(got.iou, want["iou"], rtol=1e-12, equal_nan=True)
    assert got.iou[5] == 0.0 and np.isnan(got.iou[6])
    assert got.miou == pytest.approx(want["miou"], rel=1e-12)
    assert got.macc == pytest.approx(want["macc"], rel=1e-12)
    assert got.aacc == pytest.approx(want["aacc"], rel=1e-12)


# ---------------------------------------------------------------- mmcv's resize


# mmcv's arithmetic, transcribed from open-mmlab/mmcv@a8073c74bf83d62ec36a103f835faa4837fb6585
# mmcv/image/geometric.py: _scale_size, rescale_size, imrescale, imresize (backend 'cv2',
# interpolation 'bilinear' -> cv2.INTER_LINEAR), as mmcv.transforms.Resize(keep_ratio=True) calls it.
def mmcv_scale_size(size, scale):
    if isinstance(scale, (float, int)):
        scale = (scale, scale)
    w, h = size
    return int(w * float(scale[0]) + 0.5), int(h * float(scale[1]) + 0.5)


def mmcv_rescale_size(old_size, scale):
    w, h = old_size
    max_long_edge = max(scale)
    max_short_edge = min(scale)
    scale_factor = min(max_long_edge / max(h, w), max_short_edge / min(h, w))
    return mmcv_scale_size((w, h), scale_factor)


def mmcv_imrescale(img, scale):
    import cv2

    h, w = img.shape[:2]
    new_size = mmcv_rescale_size((w, h), scale)
    return cv2.resize(img, new_size, dst=None, interpolation=cv2.INTER_LINEAR)


# (height, width) of the inputs: landscape, portrait, square, extreme ratios, odd sizes, the
# long-side bound (2048) binding, upscaling and downscaling; short sides of the official configs
MMCV_SIZES = [(375, 500), (500, 375), (333, 500), (480, 640), (1024, 2048), (1, 1), (7, 3), (97, 1999),
              (2000, 111), (336, 336), (337, 335), (250, 8000), (1080, 1920), (281, 500), (427, 640)]


def test_mmcv_resize_equals_mmcv_on_sizes_and_ratios():
    """fsa eval's resize (validation/eval/mmcv.py) is mmcv.imrescale's: the same size for every shape,
    and the same uint8 pixels; fsa segment's float path differs from it by rounding only."""
    require("cv2")
    from fsa_deploy.runtime.pipeline import Geometry, resize_image
    from fsa_deploy.validation.eval.mmcv import imrescale, rescale_size

    rng = np.random.default_rng(0)
    for short in (336, 448, 560, 224):
        for h, w in MMCV_SIZES:
            want = mmcv_rescale_size((w, h), (2048, short))
            assert rescale_size(h, w, short, 2048)[::-1] == want, (h, w, short)
    photo = np.asarray(Image.open(photos()[0]).convert("RGB"))
    for h, w in MMCV_SIZES[:10]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8) if h < 20 else \
            np.ascontiguousarray(np.resize(photo, (h, w, 3)))
        want = mmcv_imrescale(img, (2048, 336))  # as LoadImageFromFile gives it (HWC), channel order irrelevant
        got = imrescale(img.transpose(2, 0, 1), 336, 2048)
        assert got.dtype == np.float32 and got.shape == (3, *want.shape[:2])
        np.testing.assert_array_equal(got, want.transpose(2, 0, 1).astype(np.float32))
        flt = resize_image(img.transpose(2, 0, 1), Geometry(crop=336, short_side=336, long_side=2048))
        assert flt.shape == got.shape  # the same size; the values differ by cv2's uint8 rounding
        if (h, w) != (336, 336):
            assert 0 < np.abs(flt - got).max() <= 1.0 + 1e-3


# ---------------------------------------------------------------- datasets in each layout


def draw_mask(size: tuple[int, int], k: int, seed: int, zero_is_ignore: bool) -> np.ndarray:
    """Shapes of a few classes on class 0 (or the raw 0 that reduce_zero_label makes ignore), a 255 border."""
    rng = np.random.default_rng(seed)
    img = Image.new("L", size, 0 if zero_is_ignore else 0)
    d = ImageDraw.Draw(img)
    lo = 1 if zero_is_ignore else 0
    for _ in range(4):
        x0, y0 = int(rng.integers(0, size[0] - 20)), int(rng.integers(0, size[1] - 20))
        c = int(rng.integers(lo, k + lo))
        d.rectangle((x0, y0, x0 + int(rng.integers(10, 50)), y0 + int(rng.integers(10, 40))), fill=c)
    d.ellipse((10, 10, 40, 30), fill=int(rng.integers(lo, k + lo)))
    a = np.asarray(img).copy()
    a[:2, :] = 255
    return a


def save_photo(src: str, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    img = Image.open(src).convert("RGB").resize(SIZE)
    img.save(dst, quality=95) if dst.suffix == ".jpg" else img.save(dst)


def make_dataset(dataset: str, root: Path, n: int = 3, k: int | None = None) -> Path:
    """`n` photos and masks in `dataset`'s layout under `root` (the data_root); the split file too."""
    lay = D.LAYOUTS[dataset]
    k = k or lay.num_classes or 4
    names = []
    for i in range(n):
        stem = f"img_{i:03d}"
        if dataset == "cityscapes":
            stem = f"{['frankfurt', 'lindau'][i % 2]}/{['frankfurt', 'lindau'][i % 2]}_000000_{i:06d}"
        suffix = lay.img_suffix or ".png"
        save_photo(photos()[i % len(photos())], root / lay.img_dir / f"{stem}{suffix}")
        mask = draw_mask(SIZE, k, i, lay.reduce_zero_label)
        mpath = root / lay.ann_dir / f"{stem}{lay.seg_suffix}"
        mpath.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(mpath)
        names.append(stem)
    if lay.split:
        (root / lay.split).parent.mkdir(parents=True, exist_ok=True)
        (root / lay.split).write_text("\n".join(names) + "\n")
    return root


@pytest.mark.parametrize("dataset", [d for d in D.DATASETS])
def test_each_layout_reads_as_mmseg(tmp_path, dataset):
    root = make_dataset(dataset, tmp_path / dataset, n=3)
    lay = D.LAYOUTS[dataset]
    found = D.items(dataset, root)
    assert len(found) == 3
    assert all(it.image.is_file() and it.mask.is_file() for it in found)
    assert [it.name for it in found] == sorted(it.name for it in found)
    assert len(D.items(dataset, root, limit=2)) == 2
    k = lay.num_classes or 4
    list(D.check_all(found, lay.reduce_zero_label, k))
    m = D.read_mask(found[0].mask, lay.reduce_zero_label)
    raw = np.asarray(Image.open(found[0].mask)).astype(np.int64)
    if lay.reduce_zero_label:  # mmseg: 0 -> 255, k -> k - 1, 255 stays
        assert (m[raw == 0] == 255).all() and (m[(raw > 0) & (raw < 255)] == raw[(raw > 0) & (raw < 255)] - 1).all()
        assert (m[raw == 255] == 255).all()
    else:
        assert (m == raw).all()


# ---------------------------------------------------------------- end to end on the tiny export


@pytest.fixture(scope="module")
def folder_ds(tmp_path_factory) -> tuple[Path, Path]:
    root = make_dataset("folder", tmp_path_factory.mktemp("ds") / "mine", n=4, k=4)
    classes = root.parent / "classes.txt"
    classes.write_text("background; sky\ncat; kitty\nperson\nrocket\n")
    return root, classes


def eval_cli(art, ds: str, root, out: Path, *extra: str, run=run_cli) -> subprocess.CompletedProcess:
    """`fsa eval` in a subprocess, or with `run=run_here` in this process (where the process is not the point)."""
    return run("eval", ds, "--root", root, "--artifact", art, "--json", out, "--quiet",
               "--cache-dir", out.parent / "cache", *extra)


def main_here(*args) -> subprocess.CompletedProcess:
    """`fsa ...` in this process for a module fixture (run_here's capture is per test): stdout and stderr as
    the command writes them through sys.stdout / sys.stderr."""
    from fsa_deploy.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv = [str(a) for a in args]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return subprocess.CompletedProcess(argv, rc, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def folder_report(tiny_artifact, folder_ds, tmp_path_factory) -> tuple[dict, Path]:
    """The reference and artefact rows of the folder dataset, `fsa eval` in this process (a second interpreter
    would import torch again for --reference; test_stopped_run_resumes_to_the_same_result runs the process)."""
    root, classes = folder_ds
    out = tmp_path_factory.mktemp("eval") / "r.json"
    proc = eval_cli(tiny_artifact.root, "folder", root, out, "--classes-file", classes, "--reference",
                    "--short-side", "120", "--prob-thd", "0.3", "--md", out.with_suffix(".md"),
                    "--plot", out.with_suffix(".png"), "--resize", "float", "--csv", out.with_suffix(".csv"),
                    "--latex", out.with_suffix(".tex"), "--show-dir", out.parent / "show", run=main_here)
    assert proc.returncode == 0, proc.stderr
    out.with_suffix(".stdout").write_text(proc.stdout)
    return json.loads(out.read_text()), out


def test_json_contract_and_rows(folder_report):
    rep, out = folder_report
    assert rep["dataset"] == "folder" and rep["method"] == "fsa" and rep["images"] == 4
    p = rep["protocol"]
    for key in ("short_side", "long_side", "crop", "stride", "prob_thd", "reduce_zero_label", "ignore_index",
                "differs_from_official"):
        assert key in p, key
    assert p["short_side"] == 120 and p["prob_thd"] == 0.3 and p["crop"] == 112 and p["stride"] == 112
    assert any("--short-side 120" in d for d in p["differs_from_official"])
    assert rep["classes"] == ["background; sky", "cat; kitty", "person", "rocket"]
    ref, art = rep["rows"]
    assert ref["backend"] == "pytorch" and ref["graph"] is None and "miou_delta" not in ref
    assert art["graph"] == "image.onnx" and art["backend"].startswith("onnxruntime")
    for r in rep["rows"]:
        cm = np.asarray(r["confusion"])
        assert cm.shape == (4, 4) and cm.sum() > 0
        s = scores(cm)
        assert r["miou"] == pytest.approx(s.miou) and r["aacc"] == pytest.approx(s.aacc)
        assert [None if np.isnan(v) else v for v in s.iou] == pytest.approx(r["iou"])
        assert 0 <= r["miou"] <= 1 and r["images_per_s"] > 0
    assert art["miou_delta"] == pytest.approx(art["miou"] - ref["miou"])
    # the tiny export equals its reference to float rounding: nearly every pixel agrees
    assert art["pixel_agreement"] > 0.99
    assert out.with_suffix(".md").read_text().count("|") > 20
    assert out.with_suffix(".png").stat().st_size > 1000
    # the dataset's names (a folder's: its class file's first names), and per-class Acc = IoUMetric's
    assert rep["class_names"] == ["background", "cat", "person", "rocket"]
    for r in rep["rows"]:
        want = scores(np.asarray(r["confusion"])).acc
        assert [None if np.isnan(v) else v for v in want] == pytest.approx(r["acc"])
    # what differs from the official setup is declared: fp32 vs fp16, the tiny backbone and proxy,
    # random weights, the float resize
    differs = " ".join(p["differs_from_official"])
    for needle in ("fp16", "backbone tiny", "proxy tiny-dino", "random-init", "--resize float"):
        assert needle in differs, needle
    setup = rep["setup"]
    assert setup["model"] == "tiny" and setup["proxy"] == "tiny-dino" and setup["precision"]["reference"] == "fp32"
    assert setup["artifact_sha256"] == rep["artifact_sha256"] and len(setup["text_sha256"]) == 64
    assert setup["hyper_parameters"]["lamda"] == 3.0


def test_stdout_csv_latex_tables(folder_report):
    """stdout is mmseg's table (per-class IoU and Acc, then aAcc, mIoU, mAcc); CSV and LaTeX carry the
    same cells; a delta under 0.01 point prints "<0.01", never "-0.00"."""
    import csv

    from fsa_deploy.validation.eval.report import delta_text, share_text

    rep, out = folder_report
    text = out.with_suffix(".stdout").read_text()
    ref, art = rep["rows"]
    assert "| Class" in text and "| aAcc" in text and "| mIoU" in text and "| mAcc" in text
    for i, name in enumerate(rep["class_names"]):
        line = next(ln for ln in text.splitlines() if ln.startswith(f"| {name} "))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1] == (f"{100 * ref['iou'][i]:.2f}" if ref["iou"][i] is not None else "-")
        assert cells[2] == (f"{100 * ref['acc'][i]:.2f}" if ref["acc"][i] is not None else "-")
        assert cells[-1] == rep["classes"][i]  # the prompt line beside the dataset's name
    assert f"{100 * art['miou']:.2f}" in text and "fp16" in text
    assert "-0.00" not in text and "100.00%" not in text or art["pixel_agreement"] == 1.0
    rows = list(csv.reader(out.with_suffix(".csv").read_text().splitlines()))
    assert rows[0][:3] == ["Class", "IoU reference", "Acc reference"] and rows[1][0] == "background"
    assert rows[1][1] == (f"{100 * ref['iou'][0]:.2f}" if ref["iou"][0] is not None else "-")
    tex = out.with_suffix(".tex").read_text()
    assert tex.count("\\begin{tabular}") == 2 and "background" in tex and f"{100 * art['miou']:.2f}" in tex
    for v, want in ((0.0, "0.00"), (-4e-5, "-<0.01"), (3e-6, "+<0.01"), (-0.00012, "-0.01"), (0.0123, "+1.23")):
        assert delta_text(v) == want
    assert share_text(1 - 4 / 443556) == ">99.99%" and share_text(1.0) == "100.00%"


def test_segment_reproduces_the_label_maps_eval_scored(tiny_artifact, folder_ds, folder_report, tmp_path, run_here):
    """`fsa segment` with the JSON's protocol gives the label maps whose confusion eval summed; the
    per-class IoU of those maps by the independent metric equals the JSON's."""
    rep, _ = folder_report
    root, classes = folder_ds
    p = rep["protocol"]
    seg = tmp_path / "seg"
    proc = run_here("segment", root / "images", "--artifact", tiny_artifact.root, "--out", seg,
                    "--backend", "onnx", "--graph", "image.onnx", "--classes-file", classes,
                    "--short-side", p["short_side"], "--long-side", p["long_side"], "--stride", p["stride"],
                    "--prob-thd", p["prob_thd"], "--cache-dir", tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    found = D.items("folder", root)
    # pixels under prob_thd: class 0 by the official rule eval scores, whatever segment draws for them (255)
    preds = [np.asarray(Image.open(seg / f"{it.image.stem}.png")).astype(np.int64) for it in found]
    preds = [np.where(pr == 255, 0, pr) for pr in preds]
    show = folder_report[1].parent / "show"  # --show-dir: the artefact row's maps, as segment writes them
    for it, pr in zip(found, preds):
        shown = Image.open(show / f"{it.image.stem}.png")
        assert shown.mode == "P" and np.array_equal(np.asarray(shown), pr)
        assert shown.getpalette() == Image.open(seg / f"{it.image.stem}.png").getpalette()
    gts = [D.read_mask(it.mask, False) for it in found]
    art = rep["rows"][1]
    cm = sum(confusion(g, pr, 4, 255) for g, pr in zip(gts, preds))
    assert cm.tolist() == art["confusion"]
    want = iou_metric(preds, gts, 4)
    assert [None if np.isnan(v) else v for v in want["iou"]] == pytest.approx(art["iou"], rel=1e-12)


def test_stopped_run_resumes_to_the_same_result(tiny_artifact, folder_ds, folder_report, tmp_path, run_here):
    rep, _ = folder_report
    root, classes = folder_ds
    work, out = tmp_path / "work", tmp_path / "r.json"
    args = ["eval", "folder", "--root", str(root), "--artifact", str(tiny_artifact.root), "--json", str(out),
            "--quiet", "--classes-file", str(classes), "--reference", "--short-side", "120", "--prob-thd", "0.3",
            "--work", str(work), "--cache-dir", str(tmp_path / "cache"), "--resize", "float"]
    for _ in range(3):  # the signal is the point: a subprocess, stopped once its first image is scored
        proc = subprocess.Popen([sys.executable, "-m", "fsa_deploy", *args], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 300  # a loaded machine: the child's imports alone can take a minute
        while time.time() < deadline and not list(work.glob("*.npz")) and proc.poll() is None:
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
        done = list(work.glob("*.npz"))
        if not (proc.returncode == 0 and len(done) == 4):
            break
        # the child scored the last images before this (descheduled) test sent the signal: the race was
        # the harness's, not the product's; start again from nothing
        for f in (*done, out):
            f.unlink()
    assert proc.returncode == 143 and 1 <= len(done) < 4, (proc.returncode, len(done))
    assert not out.exists() and not [f for f in work.iterdir() if f.name.startswith(".")]
    proc2 = run_here(*args)  # the resume: in this process, no second interpreter start
    assert proc2.returncode == 0, proc2.stderr
    again = json.loads(out.read_text())
    assert len(list(work.glob("*.npz"))) == 4
    for a, b in zip(again["rows"], rep["rows"]):
        assert a["confusion"] == b["confusion"] and a["pixel_agreement" if "miou_delta" in b else "miou"] == \
            b["pixel_agreement" if "miou_delta" in b else "miou"]


BENCHMARKS = [d for d in D.DATASETS if d != "folder"]


@pytest.mark.parametrize("dataset", BENCHMARKS)
def test_benchmark_layout_end_to_end(tiny_artifact, tmp_path_factory, dataset, capsys):
    """Each benchmark's layout and official FSA protocol, in process (one image, short side 112):
    the confusion counts every non-ignored pixel of the mask as mmseg reads it."""
    from fsa_deploy.cli import main
    from fsa_deploy.validation.eval.protocol import official

    lay = D.LAYOUTS[dataset]
    tmp = tmp_path_factory.mktemp(dataset)
    root = make_dataset(dataset, tmp / lay.root_hint, n=2)
    out = tmp / "r.json"
    rc = main(["eval", dataset, "--root", str(root), "--artifact", str(tiny_artifact.root), "--json", str(out),
               "--quiet", "--short-side", "112", "--limit", "1", "--cache-dir", str(tmp_path_factory.getbasetemp())])
    assert rc == 0, capsys.readouterr().err
    rep = json.loads(out.read_text())
    pre = official("fsa", dataset)
    assert rep["images"] == 1 and rep["protocol"]["prob_thd"] == pre.prob_thd
    assert rep["protocol"]["reduce_zero_label"] == lay.reduce_zero_label
    assert len(rep["classes"]) == lay.num_classes
    cm = np.asarray(rep["rows"][0]["confusion"])
    first = D.items(dataset, root)[0]
    gt = D.read_mask(first.mask, lay.reduce_zero_label)
    assert cm.shape == (lay.num_classes,) * 2 and cm.sum() == int((gt != 255).sum())
    assert cm.sum(axis=1).tolist() == np.bincount(gt[gt != 255], minlength=lay.num_classes).tolist()
    assert rep["protocol"]["resize"] == "mmcv" and len(rep["class_names"]) == lay.num_classes
    if dataset == "voc21":  # the prompt lines, and the dataset's own names beside them
        assert rep["classes"][0].startswith("sky; wall; tree") and rep["classes"][1] == "aeroplane"
        assert rep["class_names"][0] == "background" and rep["class_names"][11] == "diningtable"
        assert rep["class_names"][20] == "tvmonitor" and rep["classes"][11] == "table"
    if dataset == "coco-object":
        assert rep["class_names"][0] == "background" and rep["classes"][0] != "background"
    if dataset == "cityscapes":  # FSA's Cityscapes config slides 224 windows: the artefact's crop differs
        assert any("224" in d for d in rep["protocol"]["differs_from_official"])


# ---------------------------------------------------------------- bad inputs


def _bad_dataset(tmp_path: Path, case: str) -> tuple[str, Path, list[str], str]:
    root = make_dataset("folder", tmp_path / "bad", n=2, k=4)
    classes = tmp_path / "classes.txt"
    classes.write_text("a\nb\nc\nd\n")
    extra = ["--classes-file", str(classes)]
    if case == "no-mask":
        (root / "masks" / "img_001.png").unlink()
        return "folder", root, extra, "img_001"
    if case == "mask-size":
        Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "masks" / "img_001.png")
        return "folder", root, extra, "img_001.png"
    if case == "label-value":
        m = np.asarray(Image.open(root / "masks" / "img_000.png")).copy()
        m[5, 5] = 9
        Image.fromarray(m).save(root / "masks" / "img_000.png")
        return "folder", root, extra, "label value 9"
    if case == "empty-split":
        split = tmp_path / "empty.txt"
        split.write_text("\n")
        return "folder", root, [*extra, "--split", str(split)], "empty split"
    if case == "unknown-dataset":
        return "pascal", root, extra, "pascal"
    if case == "missing-root":
        return "folder", tmp_path / "nowhere", extra, "nowhere"
    if case == "stem-clash":  # x.png and x.jpg would both be scored against masks/x.png
        Image.open(root / "images" / "img_000.png").save(root / "images" / "img_000.jpg")
        return "folder", root, extra, "img_000.jpg"
    if case == "mask-256-reduced":  # 256 - 1 would be the ignore index after reduce_zero_label: an error
        ade = make_dataset("ade20k", tmp_path / "ade", n=1)
        mask = next((ade / "annotations" / "validation").glob("*.png"))
        m = np.asarray(Image.open(mask)).astype(np.uint16)
        m[4, 4] = 256
        Image.fromarray(m).save(mask)
        return "ade20k", ade, [], "label value 256"
    if case in ("class-pipe", "class-blank-line", "class-fifo"):
        bad = tmp_path / "bad-classes.txt"
        if case == "class-fifo":
            import os

            os.mkfifo(bad)  # would block a reader forever
            return "folder", root, ["--classes-file", str(bad)], "not a regular file"
        bad.write_text("a\nb | c\nc\nd\n" if case == "class-pipe" else "a\nb\n\nc\nd\n")
        return "folder", root, ["--classes-file", str(bad)], "'|'" if case == "class-pipe" else "line 3 is empty"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["no-mask", "mask-size", "label-value", "empty-split", "unknown-dataset",
                                  "missing-root", "stem-clash", "mask-256-reduced", "class-pipe",
                                  "class-blank-line", "class-fifo"])
def test_bad_input_is_one_line_and_no_report(tiny_artifact, tmp_path, case, run_here):
    ds, root, extra, needle = _bad_dataset(tmp_path, case)
    out = tmp_path / "r.json"
    proc = eval_cli(tiny_artifact.root, ds, root, out, *extra, run=run_here)
    assert_one_line_error(proc, needle)
    assert not out.exists()


def test_max_miou_drop_gate(tiny_artifact, folder_ds, folder_report, tmp_path, run_here):
    """Exit 1 when an artefact row falls further below the reference than allowed; needs --reference."""
    from fsa_deploy.errors import CheckFailed
    from fsa_deploy.validation.eval import gate
    from fsa_deploy.validation.eval.report import EvalReport

    rep, _ = folder_report
    delta = rep["rows"][1]["miou_delta"]
    gate(EvalReport.from_json(rep), abs(delta) + 1e-6)  # within the allowance: passes
    worse = json.loads(json.dumps(rep))
    worse["rows"][1]["miou_delta"] = -0.05
    with pytest.raises(CheckFailed, match="image.onnx"):
        gate(EvalReport.from_json(worse), 0.01)
    gate(EvalReport.from_json(worse), 0.06)
    root, classes = folder_ds
    proc = eval_cli(tiny_artifact.root, "folder", root, tmp_path / "r.json", "--classes-file", classes,
                    "--max-miou-drop", "0.1", run=run_here)
    assert_one_line_error(proc, "--reference")


def test_work_files_keyed_by_content_and_damage_recomputed(tiny_artifact, tmp_path, capsys):
    """A mask redrawn in place is scored anew (work files keyed by content, not size); a damaged work
    file is recomputed after one warning line, to the same numbers."""
    from fsa_deploy.cli import main

    root = make_dataset("folder", tmp_path / "ds", n=1, k=4)
    classes = tmp_path / "classes.txt"
    classes.write_text("a\nb\nc\nd\n")
    work = tmp_path / "work"

    def run(out: str) -> dict:
        rc = main(["eval", "folder", "--root", str(root), "--artifact", str(tiny_artifact.root), "--json",
                   str(tmp_path / out), "--quiet", "--short-side", "112", "--classes-file", str(classes),
                   "--work", str(work), "--cache-dir", str(tmp_path / "cache")])
        assert rc == 0, capsys.readouterr().err
        return json.loads((tmp_path / out).read_text())

    first = run("a.json")
    (npz,) = work.glob("*.npz")
    npz.write_bytes(b"PK\x03\x04 not a zip")
    capsys.readouterr()
    again = run("b.json")
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "damaged" in err and npz.name in err
    assert again["rows"][0]["confusion"] == first["rows"][0]["confusion"]
    mask = root / "masks" / "img_000.png"
    m = np.asarray(Image.open(mask)).copy()
    m[m == 255] = 3  # the ignored border becomes class 3: more pixels scored
    Image.fromarray(m).save(mask)
    redrawn = run("c.json")
    assert len(list(work.glob("*.npz"))) == 2
    assert np.asarray(redrawn["rows"][0]["confusion"]).sum() == m.size


def test_reference_in_fp16_as_the_official_code(tiny_artifact, tmp_path, capsys):
    """--reference-precision fp16: the reference under fp16 autocast; its precision is recorded and it is
    no longer listed as differing (the fp32 artefact row still is)."""
    from fsa_deploy.cli import main

    root = make_dataset("folder", tmp_path / "ds", n=1, k=4)
    classes = tmp_path / "classes.txt"
    classes.write_text("a\nb\nc\nd\n")
    reps = {}
    for precision in ("fp32", "fp16"):
        out = tmp_path / f"{precision}.json"
        rc = main(["eval", "folder", "--root", str(root), "--artifact", str(tiny_artifact.root), "--json", str(out),
                   "--quiet", "--short-side", "112", "--classes-file", str(classes), "--reference",
                   "--reference-precision", precision, "--cache-dir", str(tmp_path / "cache")])
        assert rc == 0, capsys.readouterr().err
        reps[precision] = json.loads(out.read_text())
    half, full = reps["fp16"], reps["fp32"]
    assert half["setup"]["precision"] == {"reference": "fp16", "image.onnx": "fp32"}
    note = next(d for d in half["protocol"]["differs_from_official"] if d.startswith("precision"))
    assert "image.onnx fp32" in note and "reference" not in note
    assert "reference fp32" in " ".join(full["protocol"]["differs_from_official"])
    # the same artefact row; a reference that moved by fp16 rounding only
    assert half["rows"][1]["confusion"] == full["rows"][1]["confusion"]
    assert half["rows"][1]["pixel_agreement"] > 0.95
    ref = np.asarray(half["rows"][0]["confusion"])
    assert ref.sum() == np.asarray(full["rows"][0]["confusion"]).sum()
    # the fp16 forward is the fp32 one to fp16 rounding: close, not equal
    from fsa_deploy.models.backend import TorchBackend
    from fsa_deploy.validation.eval.precision import Autocast

    b = TorchBackend(tiny_artifact, device="cpu")
    crops = photo_crops(2, 112).numpy()
    text = unit_text(3, 64).numpy()
    a, h = b.run(crops, text), Autocast(b).run(crops, text)
    err = np.linalg.norm(h - a) / np.linalg.norm(a)
    assert 0 < err < 0.05, err


def make_paper_data(data: Path) -> None:
    """mmseg's data/ folder holding VOC2012 (voc21 and voc20) and ADE20K; the others absent."""
    make_dataset("voc21", data / "VOCdevkit" / "VOC2012", n=2)
    make_dataset("ade20k", data / "ade" / "ADEChallengeData2016", n=2)


def test_paper_row_over_the_benchmarks_found(tiny_artifact, tmp_path, capsys):
    """`fsa eval paper`: one row per model in the paper's column order, each cell the benchmark's own
    `fsa eval` mIoU, the absent benchmarks listed; a rerun with --work reuses every finished one."""
    from fsa_deploy.cli import main

    data, work = tmp_path / "data", tmp_path / "work"
    make_paper_data(data)
    common = ["--artifact", str(tiny_artifact.root), "--quiet", "--short-side", "112", "--limit", "1",
              "--cache-dir", str(tmp_path / "cache")]
    out = tmp_path / "paper.json"
    files = ["--md", str(tmp_path / "p.md"), "--csv", str(tmp_path / "p.csv"), "--latex", str(tmp_path / "p.tex")]
    rc = main(["eval", "paper", "--root", str(data), "--json", str(out), "--work", str(work), *files, *common])
    assert rc == 0, capsys.readouterr().err
    paper = json.loads(out.read_text())
    assert paper["missing"] == ["context60", "coco-object", "context59", "coco-stuff", "cityscapes"]
    (row,) = paper["rows"]
    assert row["name"] == "image.onnx" and list(row["cells"]) == ["voc21", "voc20", "ade20k"]
    assert row["avg"] == pytest.approx(sum(row["cells"].values()) / 3)
    one = tmp_path / "ade.json"
    assert main(["eval", "ade20k", "--root", str(data / "ade" / "ADEChallengeData2016"), "--json", str(one),
                 *common]) == 0
    assert row["cells"]["ade20k"] == json.loads(one.read_text())["rows"][0]["miou"]
    md = (tmp_path / "p.md").read_text().splitlines()
    assert md[0] == "| Row | Backend | VOC21 | Context60 | Object | VOC20 | Context59 | Stuff | City | ADE | Avg. |"
    assert f"{100 * row['avg']:.2f}" in md[2] and "cityscapes" in md[-1]
    assert (tmp_path / "p.csv").read_text().startswith("Row,Backend,VOC21,Context60")
    assert "\\begin{tabular}" in (tmp_path / "p.tex").read_text()
    capsys.readouterr()
    finished = {f: f.stat().st_mtime_ns for f in work.glob("*.json")}
    assert sorted(f.name.split(".")[0] for f in finished) == ["ade20k", "voc20", "voc21"]
    out2 = tmp_path / "again.json"
    rc = main(["eval", "paper", "--root", str(data), "--json", str(out2), "--work", str(work), *common[:-2],
               "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0
    assert json.loads(out2.read_text())["rows"] == paper["rows"]
    assert {f: f.stat().st_mtime_ns for f in work.glob("*.json")} == finished  # reused, not rerun
    assert not (tmp_path / "nothing").exists()
    rc = main(["eval", "paper", "--root", str(tmp_path / "cache"), "--json", str(tmp_path / "none.json"), *common])
    assert rc == 2 and "none of the benchmarks" in capsys.readouterr().err


def test_dump_takes_the_protocol_resize(tmp_path, run_here):
    """`fsa dump --short-side/--long-side` prepares the crop with the eval's resize."""
    from fsa_deploy.runtime.images import load_image
    from fsa_deploy.runtime.pipeline import Geometry, crops_of, resize_image

    out = tmp_path / "d.npz"
    proc = run_here("dump", "--image", photos()[0], "--out", out, "--model", "tiny", "--proxy", "tiny-dino",
                    "--random-init", "--crop", "112", "--short-side", "150", "--long-side", "170",
                    "--classes", "cat, dog")
    assert proc.returncode == 0, proc.stderr
    geo = Geometry(crop=112, short_side=150, long_side=170)
    resized = resize_image(load_image(photos()[0]), geo)
    assert max(resized.shape[-2:]) == 170 or min(resized.shape[-2:]) == 150
    want = crops_of(resized, geo)[0][0]
    with np.load(out) as z:
        got = z["image"]
    np.testing.assert_array_equal(got.reshape(want.shape), want)
    default = crops_of(resize_image(load_image(photos()[0]), Geometry(crop=112)), Geometry(crop=112))[0][0]
    assert not np.array_equal(default, want)


# ---------------------------------------------------------------- scale out on Triton


@pytest.fixture(scope="module")
def two_servers(tiny_artifact, tmp_path_factory):
    from test_serve import Served

    from fsa_deploy.runtime.serve.env import find_serve_env

    try:
        find_serve_env()
    except Exception as e:  # noqa: BLE001
        missing(f"no serve environment: {e}")
    folder = tmp_path_factory.mktemp("servers")
    servers = [Served(tiny_artifact.root, folder / f"triton{i}.log", folder / "text-cache") for i in range(2)]
    try:
        for s in servers:
            s.wait_ready()
        yield servers
    finally:
        # a client still connected holds Triton's shutdown for its whole exit timeout (12 s): the tests' clients
        # that only a cycle keeps (an exception's traceback) are closed first
        gc.collect()
        for s in servers:  # both shut down at once: Triton's unload takes seconds per server
            s.terminate()
        for s in servers:
            s.stop()


def test_two_server_run_equals_the_local_run(tiny_artifact, folder_ds, folder_report, two_servers, tmp_path):
    rep, _ = folder_report
    root, classes = folder_ds
    (dead,) = free_ports(1)  # nobody listens there: dropped with one line at the probe
    urls = [f"127.0.0.1:{s.http}" for s in two_servers] + [f"127.0.0.1:{dead}"]
    out = tmp_path / "served.json"
    proc = eval_cli(tiny_artifact.root, "folder", root, out, "--classes-file", classes, "--short-side", "120",
                    "--prob-thd", "0.3", "--concurrency", "2", *[a for u in urls for a in ("--server", u)])
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("dropped") == 1 and str(dead) in proc.stderr
    served = json.loads(out.read_text())
    (row,) = served["rows"]
    assert row["backend"] == "triton" and row["images_per_s"] > 0
    assert row["confusion"] == rep["rows"][1]["confusion"]  # the local ONNX Runtime row
    # an image the servers cannot decode fails that image only (exit 2, named), no server dropped
    bad = tmp_path / "bad"
    make_dataset("folder", bad, n=2, k=4)
    data = (bad / "images" / "img_001.png").read_bytes()
    (bad / "images" / "img_001.png").write_bytes(data[: len(data) // 2])
    proc = eval_cli(tiny_artifact.root, "folder", bad, tmp_path / "bad.json", "--classes-file", classes,
                    "--server", urls[0], "--server", urls[1])
    assert proc.returncode == 2 and "img_001.png" in proc.stderr and "dropped" not in proc.stderr, proc.stderr
    assert not (tmp_path / "bad.json").exists()


@pytest.mark.parametrize("change", ["image_sha256", "text_sha256", "hyper_parameters"])
def test_a_server_of_another_artefact_is_refused(tiny_artifact, folder_ds, two_servers, tmp_path, change):
    """Identity: the image graph, the text graph and the method preset must be the local artefact's."""
    import shutil

    root, classes = folder_ds
    other = tmp_path / "other"
    shutil.copytree(tiny_artifact.root, other)
    meta = json.loads((other / "meta.json").read_text())
    if change == "hyper_parameters":
        meta["hyper_parameters"]["lamda"] = 2.0  # exported with --lamda 2
    else:
        meta["files"][{"image_sha256": "image.onnx", "text_sha256": "text.onnx"}[change]]["sha256"] = "0" * 64
    (other / "meta.json").write_text(json.dumps(meta))
    proc = eval_cli(other, "folder", root, tmp_path / "r.json", "--classes-file", classes,
                    "--server", f"127.0.0.1:{two_servers[0].http}")
    assert_one_line_error(proc, "serves artefact", change)


def test_a_stopped_server_stalls_nothing(two_servers, capsys):
    """A server stopped (SIGSTOP) mid-run: its request times out (--server-timeout), the server is
    dropped with one line and the image is served by the other; its health probe fails at start."""
    import os

    from fsa_deploy.validation.eval.remote import Servers

    live, stopped = two_servers
    protocol = {"short_side": 120, "stride": 112, "prob_thd": 0.3}
    urls = [f"127.0.0.1:{live.http}", f"127.0.0.1:{stopped.http}"]
    data = Path(photos()[1]).read_bytes()
    os.kill(stopped.triton_pid, signal.SIGSTOP)
    try:
        servers = Servers(urls, "background; sky, cat; kitty, person, rocket", protocol, timeout=3.0)
        t0 = time.perf_counter()
        got = servers.labels(data, "chelsea")  # the first pick is the stopped one
        assert time.perf_counter() - t0 < 30
        err = capsys.readouterr().err
        assert servers.alive == [urls[0]] and err.count("dropped") == 1 and urls[1] in err
        want = servers.once(urls[0], data)[0]
        assert np.array_equal(got, np.where(want >= servers.n_classes, 0, want))  # the official class 0
        probe = Servers(urls, "cat, dog", protocol, timeout=3.0)
        assert probe.healthy(urls[1]) is not None and probe.healthy(urls[0]) is None
    finally:
        os.kill(stopped.triton_pid, signal.SIGCONT)


def test_https_is_tls_or_refused(tiny_artifact, two_servers, capsys):
    """https:// is spoken with TLS: a plain-HTTP server fails the TLS handshake and is dropped,
    never spoken to as HTTP; another scheme is refused."""
    from fsa_deploy.errors import FSAError
    from fsa_deploy.runtime.artifact import Artifact
    from fsa_deploy.validation.eval.remote import Servers

    url = f"https://127.0.0.1:{two_servers[0].http}"
    servers = Servers([url], "cat, dog", {"short_side": 120, "stride": 112, "prob_thd": 0.3}, timeout=5.0)
    with pytest.raises(FSAError, match="no server answered"):
        servers.probe(Artifact.load(tiny_artifact.root))
    assert "dropped" in capsys.readouterr().err
    with pytest.raises(FSAError, match="ftp://"):
        Servers([f"ftp://127.0.0.1:{two_servers[0].http}"], "cat", {}, timeout=5.0)


def test_served_protocol_inputs_are_checked(two_servers):
    """fsa_segment refuses a NaN PROB_THD, a stride above the crop or a PROB_THD above 1 with an error reply
    naming the input."""
    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException

    data = Path(photos()[1]).read_bytes()
    with th.InferenceServerClient(f"127.0.0.1:{two_servers[0].http}") as client:  # closed: see two_servers
        for name, dtype, value in (("PROB_THD", "FP32", np.float32("nan")), ("STRIDE", "INT32", np.int32(999)),
                                   ("PROB_THD", "FP32", np.float32(2.0))):
            ins = []
            for n, d, v in (("IMAGE", "BYTES", np.array([data], dtype=np.object_)),
                            ("CLASSES", "BYTES", np.array([b"cat, dog"], dtype=np.object_)),
                            (name, dtype, np.array([value]))):
                t = th.InferInput(n, [1], d)
                t.set_data_from_numpy(v)
                ins.append(t)
            with pytest.raises(InferenceServerException, match=f"input {name}: ") as e:  # the input, no CLI flag
                client.infer("fsa_segment", ins)
            assert "--" not in str(e.value), e.value


def test_offline_check_wants_the_protocol_inputs(tiny_artifact, tmp_path):
    from fsa_deploy.runtime.serve.check import check_repository
    from fsa_deploy.runtime.serve.repository import write_repository

    out = write_repository(tiny_artifact, tmp_path / "repo")
    assert check_repository(out) == []
    cfg = out / "fsa_segment" / "config.pbtxt"
    fp32 = '"PROB_THD"\n  data_type: TYPE_FP32'
    assert fp32 in cfg.read_text()
    cfg.write_text(cfg.read_text().replace(fp32, fp32.replace("FP32", "FP64")))
    assert any("PROB_THD" in p for p in check_repository(out)), check_repository(out)


def test_a_transport_failure_moves_the_image_to_another_server(two_servers, capsys):
    """A server that stops answering mid-run is dropped (one line) and the image is retried on another."""
    from fsa_deploy.validation.eval.remote import Servers

    live = f"127.0.0.1:{two_servers[0].http}"
    dead = f"127.0.0.1:{free_ports(1)[0]}"
    protocol = {"short_side": 120, "stride": 112, "prob_thd": 0.3}
    servers = Servers([live, dead], "background; sky, cat; kitty, person, rocket", protocol)
    data = Path(photos()[1]).read_bytes()
    got = servers.labels(data, "chelsea")  # the first pick is the dead one
    err = capsys.readouterr().err
    assert servers.alive == [live] and err.count("dropped") == 1 and dead in err
    want, _ = servers.once(live, data)
    want[want >= 4] = 0  # the server's unlabelled (under PROB_THD): eval's official class 0
    assert np.array_equal(got, want) and got.shape == np.asarray(Image.open(photos()[1])).shape[:2]

"""The wheel: one top-level name, every source file in it, and a base install (no torch, no
open_clip, no timm) that segments a real photo from an artefact with classes never seen at export,
giving the label map the development install gives."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import photos
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"fsa_deploy": "fsa_deploy", "models": "fsa_deploy/models", "export": "fsa_deploy/export",
           "calibration": "fsa_deploy/calibration", "runtime": "fsa_deploy/runtime",
           "validation": "fsa_deploy/validation"}
NEW_CLASSES = "tabby cat; kitten, wooden floor, knitted blanket, sunlight"
ABSENT = ("torch", "open_clip", "timm", "onnx", "tqdm")
NOT_SHIPPED = ("benchmarks",)  # the make targets' benchmarks: in the checkout (copied, so a slip shows), not the wheel


def run(*cmd, timeout: int = 600, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    assert proc.returncode == 0, f"{cmd}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the sources (the checkout gets no build/ folder)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for folder in (*FOLDERS, *NOT_SHIPPED):
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", out, src)
    (whl,) = out.glob("fsa_deploy-*.whl")
    return whl


def test_wheel_holds_one_package_and_every_source_file(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    dist = [t for t in top if t.endswith(".dist-info")]
    assert top == {"fsa_deploy", *dist} and len(dist) == 1, sorted(top)
    # the make targets' benchmarks and the test helpers stay in the checkout; `fsa bench`'s library ships
    scripts = {p.name for p in (REPO / "benchmarks").glob("*.py")} - {"__init__.py"}
    assert scripts and not [n for n in names if n.startswith("fsa_deploy/validation/bench/")
                            and Path(n).name in scripts], names
    assert "fsa_deploy/validation/bench/cli.py" in names and "fsa_deploy/validation/bench/block.py" in names
    want = {f"{FOLDERS[folder]}/{p.relative_to(REPO / folder).as_posix()}"
            for folder in FOLDERS for p in (REPO / folder).rglob("*.py") if "__pycache__" not in p.parts}
    missing = sorted(want - set(names))
    assert not missing, f"source files not in the wheel: {missing}"
    assert "fsa_deploy/runtime/data/voc21.txt" in names
    assert {f"fsa_deploy/runtime/app/static/{n}" for n in ("index.html", "app.js", "app.css")} <= set(names)
    assert "fsa_deploy/runtime/data/palette.txt" in names
    assert {f"fsa_deploy/runtime/app/examples/{n}" for n in ("chelsea.jpg", "LICENSES.txt")} <= set(names)
    meta = zipfile.ZipFile(wheel).read(f"{dist[0]}/METADATA").decode()
    base = [ln.split(":", 1)[1].strip() for ln in meta.splitlines()
            if ln.startswith("Requires-Dist:") and "extra ==" not in ln]
    assert sorted(b.split(">")[0].split("<")[0].split("=")[0].strip() for b in base) == [
        "filelock", "numpy", "onnxruntime", "packaging", "pillow", "regex"], base
    entry = zipfile.ZipFile(wheel).read(f"{dist[0]}/entry_points.txt").decode()
    assert "fsa = fsa_deploy.cli:main" in entry


def test_base_install_segments_with_a_new_vocabulary(wheel, tiny_artifact, tmp_path):
    """A fresh venv, the wheel and its base dependencies only: `fsa segment --backend onnx`
    on chelsea.png gives the development install's label map."""
    from fsa_deploy.runtime.segmenter import Segmenter

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    py = venv / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", py, "install", "-q", wheel, timeout=900)
    found = run(py, "-c", f"import importlib.util as u; print([m for m in {ABSENT!r} if u.find_spec(m)])").stdout
    assert found.strip() == "[]", f"the base install pulled in {found}"
    size = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file()) / 2**20
    print(f"base install: {size:.0f} MiB")
    chelsea = next(p for p in photos() if Path(p).name == "chelsea.png")
    out = tmp_path / "out"
    cli = run(venv / "bin" / "fsa", "segment", chelsea, "--artifact", tiny_artifact.root, "--out", out,
              "--backend", "onnx", "--classes", NEW_CLASSES, "--threads", "1", "--no-cache", cwd=tmp_path)
    assert "backend: onnxruntime-cpu" in cli.stdout, cli.stdout
    with Image.open(out / "chelsea.png") as img:
        got = np.asarray(img)
    seg = Segmenter.from_artifact(tiny_artifact, "onnx", threads=1, cache_dir=None).set_classes(NEW_CLASSES)
    want = seg.segment(chelsea).labels
    assert got.shape == want.shape == (300, 451)
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(got)) >= 2, "a label map of one class would not show the vocabulary at work"

"""Shared helpers: tiny model selections, real-photo crops, the CLI in a subprocess or in this one."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import warnings
from functools import lru_cache
from pathlib import Path
from types import ModuleType

import pytest
import torch

from fsa_deploy.models.factory import ModelSpec, build_reference, default_hp
from fsa_deploy.models.weights import Weights
from fsa_deploy.runtime.images import load_image, sample_photos
from fsa_deploy.runtime.pipeline import Geometry, crops_of, resize_image

REPO = Path(__file__).resolve().parents[1]
CROP = 112
TINY_PROXIES = ("tiny-dino", "tiny-dinov2", "tiny-sam", "tiny-mae")
OTHER_ATTENTIONS = ("qk", "sclip", "clearclip", "naclip")
# (attention, proxy) pairs: every proxy with ProxyCLIP attention, then every other attention type
CONFIGS = [("proxy", p) for p in TINY_PROXIES] + [(a, None) for a in OTHER_ATTENTIONS]
QUERY_COUNTS = (1, 21, 171)
# `make test` sets FSA_REQUIRE_DEPS=1 (and FSA_REQUIRE_RTX=1 on x86-64, where TensorRT-RTX has wheels):
# there a dependency that `make setup` installs is never a reason to skip
DEPS_ENV, RTX_ENV = "FSA_REQUIRE_DEPS", "FSA_REQUIRE_RTX"


def required(env: str = DEPS_ENV) -> bool:
    """Whether a missing dependency fails the run (`env` set, or FSA_REQUIRE_RTX, which implies it)."""
    return bool(os.environ.get(env) or os.environ.get(RTX_ENV))


def missing(what: str, env: str = DEPS_ENV) -> None:
    """A test cannot run because `what` (something `make setup` installs) is absent: a skip when run
    by hand, a failure under `make test` (`env` set)."""
    if required(env):
        pytest.fail(f"{what}; {env} is set and make setup installs it, so this is a failure, not a skip",
                    pytrace=False)
    pytest.skip(f"{what} (make setup installs it)", allow_module_level=True)


def require(module: str, env: str = DEPS_ENV) -> ModuleType:
    """`pytest.importorskip` for a module that `make setup` installs: under `make test` a failure.

    At module level the failure is a collection error of that file (the run fails, no test of it
    passes silently); inside a test or fixture, a failed test.
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        missing(f"{module} does not import ({e})", env)
        raise  # unreachable: missing() always raises


def needs(module: str, env: str = DEPS_ENV) -> pytest.MarkDecorator:
    """`skipif(module missing)` as a marker; under `make test` a missing module is a collection error."""
    if importlib.util.find_spec(module) is not None:
        return pytest.mark.skipif(False, reason="")
    if required(env):
        raise RuntimeError(f"{module} is not installed and {env} is set: make setup installs it")
    return pytest.mark.skipif(True, reason=f"{module} not installed (make setup installs it)")


def tiny_spec(attention: str = "proxy", proxy: str | None = "tiny-dino", fsa: bool = True, seed: int = 0,
              **hp) -> ModelSpec:
    proxy = proxy if attention == "proxy" else None
    return ModelSpec(model="tiny", weights=Weights(seed=seed), attention=attention, proxy=proxy, crop=CROP,
                     fsa=fsa, hp=default_hp("tiny", proxy, **hp))


@lru_cache(maxsize=32)
def tiny_reference(attention: str = "proxy", proxy: str | None = "tiny-dino", fsa: bool = True):
    return build_reference(tiny_spec(attention, proxy, fsa))


@lru_cache(maxsize=1)
def photos() -> tuple[str, ...]:
    found = sample_photos()
    assert len(found) >= 3, f"scikit-image sample photos missing: {found}"
    return tuple(found)


def photo_crops(n: int, crop: int = CROP) -> torch.Tensor:
    """n crops as the pipeline makes them, taken from different real photos in turn."""
    geo = Geometry(crop=crop)
    out = []
    for i in range(n):
        crops, _ = crops_of(resize_image(load_image(photos()[i % len(photos())]), geo), geo)
        out.append(torch.from_numpy(crops[(i // len(photos())) % len(crops)].copy()))
    return torch.stack(out)


def unit_text(k: int, d: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + k)
    return torch.nn.functional.normalize(torch.randn(k, d, generator=g), dim=-1)


def rel_l2(a, b) -> float:
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def run_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fsa_deploy", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def run_here(capfd: pytest.CaptureFixture[str]):
    """`run_cli` without the 5-10 s of a new interpreter's imports, where the process is not the point.

    fsa_deploy.cli.main runs in this process; the exit code is main's return or SystemExit's
    (argparse); stdout and stderr are captured at the file descriptors (C libraries' output too);
    warnings reach stderr as a fresh interpreter shows them, so one still makes a second error line.
    """
    from fsa_deploy.cli import main

    def run(*args) -> subprocess.CompletedProcess:
        capfd.readouterr()  # what came before is not this command's output
        argv = [str(a) for a in args]
        with warnings.catch_warnings(record=True) as caught:
            warnings.resetwarnings()  # Python's default filters, not pytest's
            for category in (ResourceWarning, ImportWarning, PendingDeprecationWarning, DeprecationWarning):
                warnings.filterwarnings("ignore", category=category)
            warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
            try:
                rc = main(argv)
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else int(e.code is not None)
        out, err = capfd.readouterr()
        err += "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno) for w in caught)
        return subprocess.CompletedProcess(argv, rc, out, err)

    return run


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, f"exit {proc.returncode}, stderr: {proc.stderr}"
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one error line, got: {proc.stderr}"
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory):
    """One full tiny export (tiny CLIP + tiny DINO, FSA on, crop 112), as `fsa export` writes it."""
    from fsa_deploy.export.onnx_export import export_artifact

    return export_artifact(tiny_spec(), tmp_path_factory.mktemp("art") / "tiny-dino", progress=False)


# ---- tiny exports shared across test files (real TensorRT-RTX engines are built from every tiny export)


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_artifact):
    """`tiny_export(attention, proxy, precision)` -> an artefact folder holding image.onnx and meta.json
    (no text.onnx), exported once per session; callers that write into it take a copy.

    fp16 is `fsa export --precision fp16`'s image step: export_image(..., "fp16") is the fp32 export
    followed by export_fp16 on the written graph, in place. The fp32 step is this session's fp32
    export of the same configuration (the same function and arguments), copied, so the dynamo export
    (~90% of an export's time) runs once per configuration, not once per precision. The default
    selection's fp32 graph is `tiny_artifact`'s image.onnx (export_artifact calls export_image with the
    same spec, precision and batch bound), copied."""
    from fsa_deploy.contract import FEEDBACK_SCOPE, IMAGE_ONNX, META
    from fsa_deploy.export.fp16_audit import Fp16Plan, export_fp16
    from fsa_deploy.export.onnx_export import EXTERNAL_DATA_BYTES, build_meta, export_image
    from fsa_deploy.runtime.artifact import Artifact

    root = tmp_path_factory.mktemp("tiny-exports")
    done: dict[tuple[str, str | None, str], Path] = {}

    def make(attention: str = "proxy", proxy: str | None = "tiny-dino", precision: str = "fp32") -> Path:
        key = (attention, proxy, precision)
        if key not in done:
            spec = tiny_spec(attention, proxy)
            ref = build_reference(spec, "deploy")
            folder = root / f"{proxy or attention}-{precision}"
            if precision == "fp16":
                fp32 = make(attention, proxy, "fp32")
                assert not any(fp32.glob("*.data")), "a tiny graph keeps its weights inside"
                folder.mkdir()
                shutil.copy(fp32 / IMAGE_ONNX, folder / IMAGE_ONNX)
                mapping = json.loads((fp32 / META).read_text())["stages"]
                with torch.no_grad():  # export_image's fp16 branch, as `fsa export --precision fp16`
                    nodes = export_fp16(ref, folder / IMAGE_ONNX, mapping, FEEDBACK_SCOPE, Fp16Plan(),
                                        EXTERNAL_DATA_BYTES)
            elif spec == tiny_spec():  # tiny_artifact's selection
                folder.mkdir()
                shutil.copy(tiny_artifact.root / IMAGE_ONNX, folder / IMAGE_ONNX)
                mapping, nodes = tiny_artifact.meta["stages"], tiny_artifact.files()[IMAGE_ONNX]["nodes"]
            else:
                folder.mkdir()
                with torch.no_grad():
                    mapping, nodes = export_image(ref, folder, precision, 64)  # as `fsa export`
            art = Artifact(folder, build_meta(spec, ref, precision, mapping))
            art.record(IMAGE_ONNX, role="image", precision=precision, nodes=nodes)
            art.save()
            done[key] = folder
        return done[key]

    return make

"""The TensorRT layer on the real libraries: `fsa build`, the engine checks, TensorRTBackend, `fsa doctor`.

TensorRT-RTX (`pip install 'fsa-deploy[rtx]'`, part of `make setup`) builds engines without a GPU,
so every tiny export is built here for real: every attention type and proxy of the registry in
fp32 and fp16, text.onnx, and int8 / fp8 Q/DQ graphs. No stand-in for TensorRT anywhere. Running
an engine needs a GPU: those tests are marked `tensorrt` (tools/gpu_check.sh runs them).
Set FSA_REQUIRE_RTX=1 (CI) to fail instead of skip when TensorRT-RTX is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from conftest import CONFIGS, CROP
from onnx import TensorProto, helper, numpy_helper

from fsa_deploy import cli as fsa_cli
from fsa_deploy.contract import (
    EMBEDDINGS,
    IMAGE,
    IMAGE_ONNX,
    LOGITS,
    META,
    RTX_TARGETS,
    TEXT_EMBEDDINGS,
    TEXT_ONNX,
    TOKENS,
)
from fsa_deploy.errors import FSAError
from fsa_deploy.export.trt_options import TIMING_CACHE, DimRange, image_source, profile_shapes
from fsa_deploy.runtime import artifact as artifact_module
from fsa_deploy.runtime.artifact import Artifact
from fsa_deploy.runtime.backends.trt import (
    RuntimeCache,
    TensorRTBackend,
    check_engine_record,
    image_engines,
    read_engine,
    torch_dtype,
)
from fsa_deploy.runtime.backends.trt_lib import (
    RTX,
    TRT,
    gpu_present,
    installed,
    logger,
    parse_targets,
    pick,
    read_header,
    version_tuple,
)

REPO = Path(__file__).resolve().parents[1]
RTX_VERSION = installed(RTX)
TRT_VERSION = installed(TRT)
if RTX_VERSION is None and os.environ.get("FSA_REQUIRE_RTX"):
    raise RuntimeError("FSA_REQUIRE_RTX is set but tensorrt_rtx does not import: make setup")
needs_rtx = pytest.mark.skipif(RTX_VERSION is None, reason="TensorRT-RTX not installed (make setup installs it)")
DEFAULT_TARGETS = ["sm80", "sm86", "sm89", "sm120", "sm121", "later"]  # TensorRT-RTX 1.7's default, from the header
SMALL = ["--max-batch", "4", "--opt-batch", "2", "--max-classes", "16", "--opt-classes", "4",
         "--max-prompts", "8", "--opt-prompts", "4"]
DTYPES = {TensorProto.FLOAT: "FLOAT", TensorProto.FLOAT16: "HALF", TensorProto.INT32: "INT32",
          TensorProto.INT64: "INT64"}


# ---------------------------------------------------------------- helpers


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    rc = fsa_cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1, f"expected one line, got {err!r}"
    return err


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of a folder and its bytes: "nothing half-written" is this, unchanged."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def copy_of(folder: Path, tmp_path: Path) -> Path:
    dst = tmp_path / folder.name
    shutil.copytree(folder, dst)
    return dst


def graph_io(path: Path) -> dict[str, dict[str, Any]]:
    """The ONNX graph's declared inputs and outputs in the engine record's terms (-1: dynamic)."""
    g = onnx.load(str(path), load_external_data=False).graph
    inits = {t.name for t in g.initializer}
    out = {}
    for mode, values in (("input", [v for v in g.input if v.name not in inits]), ("output", g.output)):
        for v in values:
            t = v.type.tensor_type
            out[v.name] = {"mode": mode, "dtype": DTYPES[t.elem_type],
                           "shape": [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]}
    return out


def weight_bytes(path: Path, quantized: frozenset[str] = frozenset()) -> int:
    """Bytes the graph's weights need (initializers named in `quantized` at one byte per element)."""
    total = 0
    for t in onnx.load(str(path)).graph.initializer:
        a = numpy_helper.to_array(t)
        total += a.size if t.name in quantized else a.nbytes
    return total


def build(folder: Path, *args: str) -> int:
    return fsa_cli.main(["build", str(folder), "--engine", "rtx", *SMALL, *args])


def assert_engine_matches(folder: Path, engine: str, source: str, since: int,
                          profiles: dict[str, dict[str, list[int]]], quantized: frozenset[str] = frozenset()) -> dict:
    """The checks every real build gets: no logger errors, I/O and profiles as recorded, header, size."""
    assert logger(RTX).errors(since) == [], logger(RTX).errors(since)
    art = Artifact.load(folder)
    art.verify_all()
    record = art.files()[engine]
    info = record["engine"]
    assert info["flavour"] == "rtx" and info["library"] == "tensorrt_rtx" and info["version"] == RTX_VERSION
    assert info["source"] == source and info["source_sha256"] == art.files()[source]["sha256"]
    assert info["io"] == graph_io(folder / source), (info["io"], graph_io(folder / source))
    assert info["profiles"] == profiles
    data = (folder / engine).read_bytes()
    header = read_header(data)
    assert (header.flavour, header.size, header.version) == ("rtx", len(data), RTX_VERSION)
    assert list(header.targets) == info["targets"]
    assert len(data) >= weight_bytes(folder / source, quantized) > 0
    return info


def image_profiles(embed_dim: int) -> dict[str, dict[str, list[int]]]:
    return {IMAGE: {"min": [1, 3, CROP, CROP], "opt": [2, 3, CROP, CROP], "max": [4, 3, CROP, CROP]},
            TEXT_EMBEDDINGS: {"min": [1, embed_dim], "opt": [4, embed_dim], "max": [16, embed_dim]}}


def with_qdq(folder: Path, precision: str) -> frozenset[str]:
    """image.<precision>.onnx: the fp32 graph with Q/DQ (scale 0.05, zero point 0) on every float input of
    MatMul, Gemm and Conv, recorded as `fsa calibrate` records it; returns the quantized initializers.

    A build test, not a calibration: `fsa calibrate` (tests/test_calibration.py) takes a minute.
    """
    name = f"image.{precision}.onnx"
    model = onnx.load(str(folder / IMAGE_ONNX))
    inferred = onnx.shape_inference.infer_shapes(model)
    dtypes = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.input)}
    dtypes.update({t.name: t.data_type for t in model.graph.initializer})
    inits = {t.name for t in model.graph.initializer}
    zp_type = TensorProto.INT8 if precision == "int8" else TensorProto.FLOAT8E4M3FN
    g = model.graph
    g.initializer.extend([numpy_helper.from_array(np.array(0.05, np.float32), "qdq.scale"),
                          helper.make_tensor("qdq.zp", zp_type, [], [0])])
    nodes, quantized = [], set()
    for node in g.node:
        if node.op_type in ("MatMul", "Gemm", "Conv"):
            for i, x in enumerate(list(node.input[:2])):
                if dtypes.get(x) != TensorProto.FLOAT:
                    continue
                q, dq = f"{node.name}.q{i}", f"{node.name}.dq{i}"
                nodes += [helper.make_node("QuantizeLinear", [x, "qdq.scale", "qdq.zp"], [q]),
                          helper.make_node("DequantizeLinear", [q, "qdq.scale", "qdq.zp"], [dq])]
                node.input[i] = dq
                quantized |= {x} & inits
        nodes.append(node)
    del g.node[:]
    g.node.extend(nodes)
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            op.version = max(op.version, 19)  # fp8 Q/DQ
    onnx.save(model, str(folder / name))
    art = Artifact.load(folder)
    art.record(name, role="image-qdq", precision=precision)
    art.save()
    return frozenset(quantized)


# ---------------------------------------------------------------- real engines from every tiny export


@needs_rtx
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("attention,proxy", CONFIGS, ids=[p or a for a, p in CONFIGS])
def test_every_tiny_export_builds(tiny_export, tmp_path: Path, attention: str, proxy: str | None,
                                  precision: str) -> None:
    folder = copy_of(tiny_export(attention, proxy, precision), tmp_path)
    since = len(logger(RTX).lines)
    assert build(folder, "--no-text") == 0
    engine = f"image.{precision}.rtx.engine"
    dim = Artifact.load(folder).meta["embed_dim"]
    info = assert_engine_matches(folder, engine, IMAGE_ONNX, since, image_profiles(dim))
    grid = Artifact.load(folder).meta["grid"]
    assert info["io"][LOGITS] == {"mode": "output", "dtype": "FLOAT", "shape": [-1, -1, *grid]}
    assert info["io"][IMAGE]["shape"] == [-1, 3, CROP, CROP] and info["io"][TEXT_EMBEDDINGS]["shape"] == [-1, dim]
    assert info["targets"] == DEFAULT_TARGETS and info["targets_requested"] is None and info["gpu"] is None
    assert TIMING_CACHE not in Artifact.load(folder).files()  # TensorRT-RTX has no timing cache


@needs_rtx
def test_text_engine_and_both_names(tiny_artifact, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The full export: image and text engines, named per flavour so a TensorRT build can sit beside them."""
    from benchmarks.engine_build import BUILT

    folder = copy_of(tiny_artifact.root, tmp_path)
    since = len(logger(RTX).lines)
    assert build(folder, "--targets", "sm86,sm89") == 0
    lines = BUILT.findall(capsys.readouterr().out)  # what `make bench-build` reads
    assert [(e, s) for e, _, s, _ in lines] == [("image.fp32.rtx.engine", IMAGE_ONNX), ("text.rtx.engine", TEXT_ONNX)]
    art = Artifact.load(folder)
    assert {n for n, i in art.files().items() if i["role"] == "engine"} == {"image.fp32.rtx.engine", "text.rtx.engine"}
    profiles = {TOKENS: {"min": [1, 2], "opt": [4, 16], "max": [8, 77]}}  # token length 2..77, tuned at 16
    text = assert_engine_matches(folder, "text.rtx.engine", TEXT_ONNX, since, profiles)
    assert text["io"][TOKENS]["dtype"] == "INT32" and text["io"][EMBEDDINGS]["shape"] == [-1, art.meta["embed_dim"]]
    assert text["targets"] == text["targets_requested"] == ["sm86", "sm89"]
    assert image_engines(art) == {"fp32.rtx": "image.fp32.rtx.engine"}
    assert image_engines(art, RTX) == {"fp32": "image.fp32.rtx.engine"} and image_engines(art, TRT) == {}


@pytest.fixture(scope="module")
def qdq_folder(tiny_export, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, frozenset[str]]]:
    folder = copy_of(tiny_export("proxy", "tiny-dino", "fp32"), tmp_path_factory.mktemp("qdq"))
    return folder, {p: with_qdq(folder, p) for p in ("int8", "fp8")}


@needs_rtx
@pytest.mark.parametrize(("precision", "targets", "want"), [
    ("int8", [], DEFAULT_TARGETS),
    ("fp8", [], ["sm89", "sm120", "sm121"]),  # not the library default: that claims SM 8.0/8.6
    ("fp8", ["--targets", "sm89"], ["sm89"]),
])
def test_qdq_graphs_build(qdq_folder, tmp_path: Path, precision: str, targets: list[str], want: list[str]) -> None:
    folder = copy_of(qdq_folder[0], tmp_path)
    dim = Artifact.load(folder).meta["embed_dim"]
    since = len(logger(RTX).lines)
    assert build(folder, "--no-text", "--precision", precision, *targets) == 0
    info = assert_engine_matches(folder, f"image.{precision}.rtx.engine", f"image.{precision}.onnx", since,
                                 image_profiles(dim), qdq_folder[1][precision])
    assert info["targets"] == want


# ---------------------------------------------------------------- refusals: one line, exit 2, nothing written


@needs_rtx
@pytest.mark.parametrize(("args", "needles"), [
    (["--precision", "fp8", "--targets", "sm80,sm89"], ["fp8 kernels from sm89 on, not for sm80"]),
    (["--targets", "sm75", "--no-text"], ["fp32 GEMMs", "sm75"]),
    (["--precision", "int8", "--targets", "sm75", "--no-text"], ["int8 graph for sm75"]),
    (["--targets", "sm90"], ["unknown target sm90", "sm80"]),
    (["--dla-core", "0"], ["--dla-core does not apply to TensorRT-RTX"]),
    (["--version-compatible"], ["--version-compatible does not apply to TensorRT-RTX"]),
    (["--hardware-compatible"], ["--hardware-compatible does not apply"]),
    (["--timing-cache", "t.cache"], ["--timing-cache does not apply to TensorRT-RTX"]),
    (["--precision", "fp16"], ["no fp16 image graph", "export with --precision fp16"]),
])
def test_refused_builds_write_nothing(qdq_folder, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      args: list[str], needles: list[str]) -> None:
    folder = copy_of(qdq_folder[0], tmp_path)
    before = snapshot(folder)
    err = one_line_error(capsys, ["build", str(folder), "--engine", "rtx", *args])
    assert all(n in err for n in needles), err
    assert snapshot(folder) == before


@needs_rtx
def test_builder_refusal_is_one_line_and_writes_nothing(tiny_export, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """fp16 with sm75 passes our checks; TensorRT-RTX refuses the graph's fp32 tail for Turing: its reason
    becomes the one line."""
    folder = copy_of(tiny_export("qk", None, "fp16"), tmp_path)
    before = snapshot(folder)
    err = one_line_error(capsys, ["build", str(folder), "--engine", "rtx", "--targets", "sm75", "--no-text"])
    assert "TensorRT-RTX could not build image.fp16.rtx.engine" in err and "Turing (SM75)" in err
    assert snapshot(folder) == before


def test_targets_on_tensorrt_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = one_line_error(capsys, ["build", str(tmp_path), "--engine", "trt", "--targets", "sm89"])
    assert "--targets does not apply to TensorRT engines" in err


@needs_rtx
def test_folder_without_image_onnx(tiny_export, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = copy_of(tiny_export("proxy", "tiny-dino", "fp32"), tmp_path)
    meta = json.loads((folder / META).read_text())
    del meta["files"][IMAGE_ONNX]
    (folder / META).write_text(json.dumps(meta))
    (folder / IMAGE_ONNX).unlink()
    before = snapshot(folder)
    err = one_line_error(capsys, ["build", str(folder), "--engine", "rtx", "--no-text"])
    assert "no fp32 image graph recorded in meta.json (image graphs: none)" in err
    assert snapshot(folder) == before
    err = one_line_error(capsys, ["build", str(tmp_path / "nowhere"), "--engine", "rtx"])
    assert "not a folder" in err


@pytest.mark.skipif(TRT_VERSION is not None, reason="TensorRT 10/11 is installed")
def test_build_without_tensorrt_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = one_line_error(capsys, ["build", str(tmp_path), "--engine", "trt"])
    assert err.startswith("fsa build: error: TensorRT is not installed") and "pip install tensorrt" in err


def test_build_refuses_bad_profile_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = one_line_error(capsys, ["build", str(tmp_path), "--opt-batch", "9", "--max-batch", "8"])
    assert "--opt-batch 9" in err and "--max-batch 8" in err


# ---------------------------------------------------------------- engines that do not fit: header and record


@pytest.fixture(scope="module")
def rtx_folder(tiny_export, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if RTX_VERSION is None:
        pytest.skip("TensorRT-RTX not installed")
    folder = copy_of(tiny_export("qk", None, "fp16"), tmp_path_factory.mktemp("rtx"))
    assert build(folder, "--no-text", "--targets", "sm80,sm89") == 0
    return folder


def test_header_decodes_targets_version_size(rtx_folder: Path) -> None:
    data = (rtx_folder / "image.fp16.rtx.engine").read_bytes()
    assert data[:4] == b"vtrt"
    header = read_header(data)
    assert header.targets == ("sm80", "sm89") and header.version == RTX_VERSION and header.size == len(data)
    assert read_header(b"\0" * 64).flavour is None and read_header(b"ftrt" + bytes(60)).flavour == "trt"


def test_read_engine_accepts_the_built_engine(rtx_folder: Path) -> None:
    art = Artifact.load(rtx_folder)
    data = read_engine(art, "image.fp16.rtx.engine", str(RTX_VERSION), "8.9")
    assert data == (rtx_folder / "image.fp16.rtx.engine").read_bytes()
    path = (rtx_folder / "image.fp16.rtx.engine").resolve()
    stat = path.stat()  # hashed once per (path, size, mtime): a second load skips the sha256
    assert artifact_module._DIGESTS[(str(path), stat.st_size, stat.st_mtime_ns)] == art.files()[path.name]["sha256"]


def damaged(rtx_folder: Path, tmp_path: Path, edit) -> Artifact:
    folder = copy_of(rtx_folder, tmp_path)
    path = folder / "image.fp16.rtx.engine"
    path.write_bytes(edit(path.read_bytes()))
    return Artifact.load(folder)


@pytest.mark.parametrize(("edit", "pattern"), [
    (lambda b: b[: len(b) // 2], r"bytes, meta.json records \d+ \(truncated or replaced\)"),
    (lambda b: b[:0x18] + bytes([1, 6, 0, 0]) + b[0x1C:], r"header version 1\.6\.0\.0, meta.json 1\.7"),
    (lambda b: b[:0x20] + bytes([0x10]) + b[0x21:], r"header targets sm120, meta.json sm80,sm89"),
    (lambda b: b"ftrt" + b[4:], r"the file is a TensorRT engine, meta.json says TensorRT-RTX"),
    (lambda b: b[:-1] + bytes([b[-1] ^ 1]), r"sha256 does not match"),
])
def test_damaged_engines_are_refused_before_deserializing(rtx_folder: Path, tmp_path: Path, edit,
                                                         pattern: str) -> None:
    art = damaged(rtx_folder, tmp_path, edit)
    with pytest.raises(FSAError, match=pattern) as e:
        read_engine(art, "image.fp16.rtx.engine", str(RTX_VERSION), "8.9")
    assert "\n" not in str(e.value)


def test_rtx_engine_under_a_tensorrt_record(rtx_folder: Path, tmp_path: Path) -> None:
    """An engine of the other flavour: the magic bytes say so, whatever meta.json claims."""
    folder = copy_of(rtx_folder, tmp_path)
    meta = json.loads((folder / META).read_text())
    record = meta["files"].pop("image.fp16.rtx.engine")
    record["engine"] = {"flavour": "trt", "trt_version": "10.13.0.35", "compute_capability": "8.9"}
    meta["files"]["image.fp16.engine"] = record
    (folder / "image.fp16.rtx.engine").rename(folder / "image.fp16.engine")
    (folder / META).write_text(json.dumps(meta))
    with pytest.raises(FSAError, match="the file is a TensorRT-RTX engine, meta.json says TensorRT;"):
        read_engine(Artifact.load(folder), "image.fp16.engine", "10.13.0.35", "8.9")


@pytest.mark.parametrize(("version", "cc", "pattern"), [
    ("1.8.0.1", "8.9", r"built with TensorRT-RTX 1\.7.*this machine has 1\.8\.0\.1"),
    (None, "9.0", r"TensorRT-RTX does not support SM 9\.0 \(Hopper: H100/H200\).*--engine trt"),
    (None, "8.7", r"does not support SM 8\.7 \(Jetson Orin\)"),
    (None, "8.6", r"built for sm80,sm89, this GPU is SM 8\.6; rebuild it with .*--targets sm86"),
])
def test_rtx_record_that_does_not_fit(rtx_folder: Path, version: str | None, cc: str, pattern: str) -> None:
    record = Artifact.load(rtx_folder).files()["image.fp16.rtx.engine"]
    check_engine_record(record, str(RTX_VERSION), "8.0")
    check_engine_record(record, str(RTX_VERSION), None)  # no GPU looked at: the library side alone
    with pytest.raises(FSAError, match=pattern):
        check_engine_record(record, version or str(RTX_VERSION), cc)


def test_backend_without_gpu_names_it(rtx_folder: Path, tmp_path: Path) -> None:
    """The engine file is checked first (a damaged one is named anywhere), then the GPU."""
    if gpu_present():
        pytest.skip("a GPU is present")
    with pytest.raises(FSAError, match="^no CUDA GPU: TensorRT needs an NVIDIA GPU"):
        TensorRTBackend(rtx_folder)
    with pytest.raises(FSAError, match=r"truncated or replaced"):
        TensorRTBackend(damaged(rtx_folder, tmp_path, lambda b: b[:1000]), "fp16")


def test_auto_weighs_the_flavour_the_engines_were_built_with(rtx_folder: Path) -> None:
    """An artefact with TensorRT-RTX engines: auto checks TensorRT-RTX (installed here), not
    TensorRT 10/11, so the reason it falls back to ONNX Runtime is the missing GPU."""
    from fsa_deploy.runtime.artifact import Artifact
    from fsa_deploy.runtime.backends.select import select_backend, tensorrt_unusable

    if gpu_present():
        pytest.skip("a GPU is present")
    art = Artifact.load(rtx_folder)
    assert tensorrt_unusable(art) == "no CUDA GPU"
    opened = select_backend(art, "auto")
    assert opened.backend.name.startswith("onnxruntime")
    assert opened.reason == "auto: TensorRT engine present but no CUDA GPU"


# ---------------------------------------------------------------- TensorRT 10/11 records (no library needed)


def trt_record(**engine: Any) -> dict[str, Any]:
    info = {"trt_version": "10.13.0.35", "compute_capability": "8.7", "gpu_name": "Orin",
            "version_compatible": False, "hardware_compatible": False, **engine}
    return {"role": "engine", "precision": "fp16", "engine": info}


def test_trt_record_matching_this_machine_passes() -> None:
    assert check_engine_record(trt_record(), "10.13.0.35", "8.7") is TRT


@pytest.mark.parametrize("installed_version", ["10.13.0.34", "10.14.1.48", "11.0.0.1"])
def test_trt_record_from_other_tensorrt_is_refused(installed_version: str) -> None:
    with pytest.raises(FSAError, match=r"built with TensorRT 10\.13\.0\.35, this machine has.*--version-compatible"):
        check_engine_record(trt_record(), installed_version, "8.7")


def test_version_compatible_record_runs_on_later_tensorrt_only() -> None:
    record = trt_record(version_compatible=True)
    check_engine_record(record, "10.14.1.48", "8.7")
    check_engine_record(record, "11.0.0.1", "8.7")
    with pytest.raises(FSAError, match="newer than this machine's 10.12.0.36"):
        check_engine_record(record, "10.12.0.36", "8.7")


def test_trt_record_from_other_gpu_is_refused() -> None:
    with pytest.raises(FSAError, match=r"built for SM 8\.7 \(Orin\), this GPU is SM 8\.6.*--hardware-compatible"):
        check_engine_record(trt_record(), "10.13.0.35", "8.6")
    record = trt_record(hardware_compatible=True, compute_capability="8.6")
    check_engine_record(record, "10.13.0.35", "12.0")
    with pytest.raises(FSAError, match=r"SM 8\.0\+.*SM 7\.5"):
        check_engine_record(record, "10.13.0.35", "7.5")


def test_record_without_engine_or_with_unknown_flavour() -> None:
    with pytest.raises(FSAError, match="no engine record"):
        check_engine_record({"role": "image", "precision": "fp16"}, "10.13.0.35", "8.7", IMAGE_ONNX)
    with pytest.raises(FSAError, match="engine flavour 'tpu' unknown"):
        check_engine_record(trt_record(flavour="tpu"), "10.13.0.35", "8.7")


# ---------------------------------------------------------------- pure helpers


def test_dtype_table() -> None:
    import torch

    assert torch_dtype("FLOAT") is torch.float32 and torch_dtype("HALF") is torch.float16
    assert torch_dtype("INT32") is torch.int32
    with pytest.raises(FSAError, match="FP4"):
        torch_dtype("FP4")


def test_auto_picks_the_flavour_that_can_build_here() -> None:
    want = TRT if TRT_VERSION is not None and gpu_present() else RTX if RTX_VERSION is not None else None
    if want is None:
        with pytest.raises(FSAError, match="neither TensorRT with a GPU nor TensorRT-RTX"):
            pick("auto")
    else:
        assert pick("auto") is want
    assert pick("rtx") is RTX and pick("trt") is TRT


def test_runtime_cache_sits_in_the_user_cache_per_engine_and_gpu(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FSA_CACHE_DIR", str(tmp_path / "cache"))
    paths = RuntimeCache("ab" * 32, "8.6").paths  # keyed by the engine's sha256, never inside the artefact
    assert paths == [tmp_path / "cache" / "rtx-runtime" / f"{'ab' * 16}.sm86.runtime-cache"]


def test_targets_and_versions() -> None:
    assert parse_targets("SM89, sm120,sm89") == ("sm89", "sm120")
    with pytest.raises(FSAError, match="unknown target sm87"):
        parse_targets("sm87")
    assert list(RTX_TARGETS)[:2] == ["sm75", "sm80"]
    assert version_tuple("8.7") < version_tuple("12.0") and version_tuple("11.0.0.1post1") == (11, 0, 0)


def test_image_source_by_precision() -> None:
    files = {
        IMAGE_ONNX: {"role": "image", "precision": "fp16"},
        "image.int8.onnx": {"role": "image-qdq", "precision": "int8"},
        TEXT_ONNX: {"role": "text", "precision": "fp32"},
    }
    assert image_source(files, "fp16", "fp16") == IMAGE_ONNX
    assert image_source(files, "int8", "fp16") == "image.int8.onnx"
    with pytest.raises(FSAError, match=r"no fp32 image graph.*image.onnx \(fp16\).*--precision fp32"):
        image_source(files, "fp32", "fp16")
    with pytest.raises(FSAError, match="fsa calibrate"):
        image_source(files, "fp8", "fp16")
    assert image_source({IMAGE_ONNX: {"role": "image"}}, "fp32", "fp32") == IMAGE_ONNX


def test_profile_shapes() -> None:
    rng = DimRange(opt=2, max=4)
    assert profile_shapes(IMAGE, [-1, 3, CROP, CROP], rng, [3, CROP, CROP]) == {
        "min": [1, 3, CROP, CROP], "opt": [2, 3, CROP, CROP], "max": [4, 3, CROP, CROP]}
    assert profile_shapes(TEXT_EMBEDDINGS, [-1, -1], rng, [64])["max"] == [4, 64]
    with pytest.raises(FSAError, match="meta.json says"):
        profile_shapes(IMAGE, [-1, 3, 224, 224], rng, [3, CROP, CROP])
    with pytest.raises(FSAError, match="first dimension must be dynamic"):
        profile_shapes(IMAGE, [1, 3, CROP, CROP], rng, None)
    with pytest.raises(FSAError, match="only the first dimension"):
        profile_shapes(TOKENS, [-1, -1], rng, None)
    # the text graph's token length: a range (the runtime sends the batch's longest prompt); a text.onnx of
    # a static length (77, exported before) is built at that length
    assert profile_shapes(TOKENS, [-1, -1], rng, [(2, 16, 77)]) == {"min": [1, 2], "opt": [2, 16], "max": [4, 77]}
    assert profile_shapes(TOKENS, [-1, 77], rng, [(2, 16, 77)]) == {"min": [1, 77], "opt": [2, 77], "max": [4, 77]}
    with pytest.raises(FSAError, match="meta.json says"):
        profile_shapes(TOKENS, [-1, 64], rng, [(2, 16, 77)])


def test_doctor_json() -> None:
    done = subprocess.run([sys.executable, "-m", "fsa_deploy", "doctor", "--json"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["python"] == ".".join(map(str, sys.version_info[:3]))
    assert report["tensorrt"]["available"] is (TRT_VERSION is not None)
    assert report["tensorrt_rtx"]["version"] == RTX_VERSION
    assert report["can_run"]["build-rtx"] is (RTX_VERSION is not None)
    assert "CPUExecutionProvider" in report["onnxruntime"]["providers"]
    assert set(report["can_run"]) >= {"build", "tensorrt", "tensorrt-rtx", "onnxruntime-cpu"}


# ---------------------------------------------------------------- running engines (a GPU and its flavour)


def runnable_flavour() -> str | None:
    """The flavour this GPU runs: TensorRT 10/11 when installed, else TensorRT-RTX on a GPU it supports."""
    if not gpu_present():
        return None
    import torch

    cc = "{}.{}".format(*torch.cuda.get_device_capability())
    if TRT_VERSION is not None:
        return "trt"
    if RTX_VERSION is not None and f"sm{cc.replace('.', '')}" in RTX_TARGETS:
        return "rtx"
    return None


FLAVOUR_HERE = runnable_flavour()
needs_engine_gpu = pytest.mark.skipif(FLAVOUR_HERE is None, reason="no GPU that an installed TensorRT flavour runs")


@pytest.fixture(scope="module")
def built_here(tiny_export, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if FLAVOUR_HERE is None:
        pytest.skip("no GPU that an installed TensorRT flavour runs")
    folder = copy_of(tiny_export("proxy", "tiny-dino", "fp32"), tmp_path_factory.mktemp("gpu"))
    assert fsa_cli.main(["build", str(folder), "--engine", FLAVOUR_HERE, "--no-text", *SMALL]) == 0
    return folder


@pytest.mark.tensorrt
@needs_engine_gpu
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_engine_matches_onnxruntime(built_here: Path, cuda_graph: bool) -> None:
    import onnxruntime as ort

    backend = TensorRTBackend(built_here, cuda_graph=cuda_graph)
    sess = ort.InferenceSession(str(built_here / IMAGE_ONNX), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    dim = Artifact.load(built_here).meta["embed_dim"]
    # repeated shapes (warm-up, capture, replay), a batch above --max-batch (chunked), another K
    for batch, classes in [(2, 3), (2, 3), (2, 3), (6, 3), (2, 5)]:
        image = (rng.random((batch, 3, CROP, CROP)) * 255).astype(np.float32)
        text = rng.normal(size=(classes, dim)).astype(np.float32)
        text /= np.linalg.norm(text, axis=1, keepdims=True)
        out = backend.run(image, text)
        ref = sess.run([LOGITS], {IMAGE: image, TEXT_EMBEDDINGS: text})[0]
        assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == ref.shape
        assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-3


@pytest.mark.tensorrt
@needs_engine_gpu
def test_profile_overflow_is_one_line(built_here: Path) -> None:
    backend = TensorRTBackend(built_here)
    dim = Artifact.load(built_here).meta["embed_dim"]
    with pytest.raises(FSAError, match=rf"text_embeddings of shape \[17, {dim}\] is outside"):
        backend.run(np.zeros((1, 3, CROP, CROP), np.float32), np.zeros((17, dim), np.float32))


@pytest.mark.tensorrt
@pytest.mark.skipif(not gpu_present() or RTX_VERSION is None or FLAVOUR_HERE == "rtx",
                    reason="needs a GPU that TensorRT-RTX does not support")
def test_rtx_engine_on_an_unsupported_gpu_is_one_line(rtx_folder: Path) -> None:
    with pytest.raises(FSAError, match="TensorRT-RTX does not support SM|built for sm80,sm89"):
        TensorRTBackend(rtx_folder, engine="rtx")

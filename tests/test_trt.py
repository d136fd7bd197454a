"""The TensorRT layer: `fsa build`, TensorRTBackend, `fsa doctor`.

Without TensorRT or a GPU this still checks everything decided before TensorRT is
touched: the one-line errors, the engine-record checks (TensorRT version, compute
capability, truncated file), source and profile selection, and `fsa doctor --json`.
Tests marked `tensorrt` build and run real engines from tiny graphs made here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from fsa_deploy.export import trt_build
from fsa_deploy.export.trt_build import (
    TEXT_ENGINE,
    TIMING_CACHE,
    DimRange,
    image_engine_name,
    image_source,
    profile_shapes,
    require_tensorrt,
    version_tuple,
)
from fsa_deploy.runtime.artifact import (
    EMBEDDINGS,
    FORMAT,
    FORMAT_VERSION,
    IMAGE,
    IMAGE_ONNX,
    LOGITS,
    META,
    TEXT_EMBEDDINGS,
    TEXT_ONNX,
    TOKENS,
    Artifact,
    sha256_file,
    write_json_atomic,
)
from fsa_deploy.runtime.backends.trt import (
    TensorRTBackend,
    check_engine_record,
    image_engines,
    read_engine,
    torch_dtype,
)
from onnx import TensorProto, helper, numpy_helper

from fsa_deploy import cli as fsa_cli
from fsa_deploy.errors import FSAError

REPO = Path(__file__).resolve().parents[1]
CROP, DIM, PATCH, CONTEXT, VOCAB = 32, 8, 16, 77, 50


def _missing() -> str | None:
    """What a real TensorRT run lacks here, in the words the skip reason uses."""
    try:
        require_tensorrt()
    except FSAError:
        return "TensorRT not installed (tensorrt module not importable)"
    return None if torch.cuda.is_available() else "no CUDA GPU"


MISSING = _missing()
needs_tensorrt = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
without_tensorrt = pytest.mark.skipif(
    MISSING != "TensorRT not installed (tensorrt module not importable)", reason="TensorRT is installed"
)


# ---------------------------------------------------------------- helpers


def write_artifact(root: Path, files: dict[str, dict[str, Any]], **meta: Any) -> Artifact:
    """meta.json for files already in `root` (name -> record without hash), as `fsa export` would."""
    records = {
        n: {**info, "sha256": sha256_file(root / n), "bytes": (root / n).stat().st_size}
        for n, info in files.items()
    }
    write_json_atomic(
        root / META,
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "crop": CROP,
            "embed_dim": DIM,
            "context_length": CONTEXT,
            "precision": "fp32",
            "files": records,
            **meta,
        },
    )
    return Artifact.load(root)


def engine_record(**engine: Any) -> dict[str, Any]:
    info = {
        "trt_version": "10.13.0.35",
        "compute_capability": "8.7",
        "gpu_name": "Orin",
        "version_compatible": False,
        "hardware_compatible": False,
        **engine,
    }
    return {"role": "engine", "precision": "fp16", "engine": info}


def fake_engine_folder(tmp_path: Path, payload: bytes = b"\x01" * 1000, **engine: Any) -> Artifact:
    name = image_engine_name("fp16")
    (tmp_path / name).write_bytes(payload)
    return write_artifact(tmp_path, {name: engine_record(**engine)})


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    rc = fsa_cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1, f"expected one line, got {err!r}"
    return err


def tiny_graphs(root: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """image.onnx and text.onnx with the project's tensor names; returns their weights.

    image: conv patch embedding, then logits = einsum(features, text_embeddings);
    text: token embedding table, mean over the context.
    """
    rng = np.random.default_rng(seed)
    w = {
        "conv": rng.normal(0, 0.01, (DIM, 3, PATCH, PATCH)).astype(np.float32),
        "table": rng.normal(0, 1, (VOCAB, DIM)).astype(np.float32),
    }
    grid = CROP // PATCH
    image = helper.make_graph(
        [
            helper.make_node("Conv", [IMAGE, "conv"], ["features"], strides=[PATCH, PATCH]),
            helper.make_node("Einsum", ["features", TEXT_EMBEDDINGS], [LOGITS], equation="bdhw,kd->bkhw"),
        ],
        "image",
        [
            helper.make_tensor_value_info(IMAGE, TensorProto.FLOAT, ["B", 3, CROP, CROP]),
            helper.make_tensor_value_info(TEXT_EMBEDDINGS, TensorProto.FLOAT, ["K", DIM]),
        ],
        [helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["B", "K", grid, grid])],
        [numpy_helper.from_array(w["conv"], "conv")],
    )
    text = helper.make_graph(
        [
            helper.make_node("Gather", ["table", TOKENS], ["per_token"]),
            helper.make_node("ReduceMean", ["per_token"], [EMBEDDINGS], axes=[1], keepdims=0),
        ],
        "text",
        [helper.make_tensor_value_info(TOKENS, TensorProto.INT32, ["T", CONTEXT])],
        [helper.make_tensor_value_info(EMBEDDINGS, TensorProto.FLOAT, ["T", DIM])],
        [numpy_helper.from_array(w["table"], "table")],
    )
    for graph, name in ((image, IMAGE_ONNX), (text, TEXT_ONNX)):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        onnx.checker.check_model(model)
        onnx.save(model, root / name)
    return w


def reference_logits(w: dict[str, np.ndarray], image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    features = torch.nn.functional.conv2d(image.cpu(), torch.from_numpy(w["conv"]), stride=PATCH)
    return torch.einsum("bdhw,kd->bkhw", features, text.cpu())


def reference_embeddings(w: dict[str, np.ndarray], tokens: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(w["table"])[tokens.long().cpu()].mean(1)


# ---------------------------------------------------------------- engine record checks (no TensorRT)


def test_record_matching_this_machine_passes() -> None:
    check_engine_record(engine_record(), "10.13.0.35", "8.7")


@pytest.mark.parametrize("installed", ["10.13.0.34", "10.14.1.48", "11.0.0.1"])
def test_record_from_other_tensorrt_is_refused(installed: str) -> None:
    with pytest.raises(FSAError, match=r"built with TensorRT 10\.13\.0\.35, this machine has") as e:
        check_engine_record(engine_record(), installed, "8.7")
    assert "--version-compatible" in str(e.value)


def test_version_compatible_record_runs_on_later_tensorrt_only() -> None:
    record = engine_record(version_compatible=True)
    check_engine_record(record, "10.14.1.48", "8.7")
    check_engine_record(record, "11.0.0.1", "8.7")
    with pytest.raises(FSAError, match="newer than this machine's 10.12.0.36"):
        check_engine_record(record, "10.12.0.36", "8.7")


def test_record_from_other_gpu_is_refused() -> None:
    with pytest.raises(FSAError, match=r"built for SM 8\.7 \(Orin\), this GPU is SM 8\.6") as e:
        check_engine_record(engine_record(), "10.13.0.35", "8.6")
    assert "--hardware-compatible" in str(e.value)


def test_hardware_compatible_record_needs_ampere_or_newer() -> None:
    record = engine_record(hardware_compatible=True, compute_capability="8.6")
    check_engine_record(record, "10.13.0.35", "8.9")
    check_engine_record(record, "10.13.0.35", "12.0")
    with pytest.raises(FSAError, match=r"SM 8\.0\+.*SM 7\.5"):
        check_engine_record(record, "10.13.0.35", "7.5")


def test_file_without_engine_record_is_refused() -> None:
    with pytest.raises(FSAError, match="no engine record"):
        check_engine_record({"role": "image", "precision": "fp16"}, "10.13.0.35", "8.7", IMAGE_ONNX)


def test_read_engine_returns_intact_bytes(tmp_path: Path) -> None:
    art = fake_engine_folder(tmp_path)
    assert read_engine(art, image_engine_name("fp16"), "10.13.0.35", "8.7") == b"\x01" * 1000


def test_truncated_engine_is_refused_before_deserializing(tmp_path: Path) -> None:
    art = fake_engine_folder(tmp_path)
    path = tmp_path / image_engine_name("fp16")
    path.write_bytes(path.read_bytes()[:600])
    with pytest.raises(FSAError, match="600 bytes, meta.json records 1000 .truncated"):
        read_engine(art, path.name, "10.13.0.35", "8.7")


def test_replaced_engine_is_refused_by_hash(tmp_path: Path) -> None:
    art = fake_engine_folder(tmp_path)
    (tmp_path / image_engine_name("fp16")).write_bytes(b"\x02" * 1000)
    with pytest.raises(FSAError, match="sha256 does not match"):
        read_engine(art, image_engine_name("fp16"), "10.13.0.35", "8.7")


def test_version_is_checked_before_the_file_is_read(tmp_path: Path) -> None:
    art = fake_engine_folder(tmp_path)
    (tmp_path / image_engine_name("fp16")).unlink()
    with pytest.raises(FSAError, match="built with TensorRT"):
        read_engine(art, image_engine_name("fp16"), "10.12.0.36", "8.7")


def test_engine_not_built_names_the_command(tmp_path: Path) -> None:
    art = fake_engine_folder(tmp_path)
    with pytest.raises(FSAError, match="no image.int8.engine recorded.*fsa build"):
        read_engine(art, image_engine_name("int8"), "10.13.0.35", "8.7")


def test_image_engines_lists_built_precisions(tmp_path: Path) -> None:
    assert image_engines(fake_engine_folder(tmp_path)) == {"fp16": "image.fp16.engine"}


# ---------------------------------------------------------------- pure helpers


def test_dtype_table() -> None:
    assert torch_dtype("FLOAT") is torch.float32
    assert torch_dtype("HALF") is torch.float16
    assert torch_dtype("INT32") is torch.int32
    with pytest.raises(FSAError, match="FP4"):
        torch_dtype("FP4")


def test_version_tuple() -> None:
    assert version_tuple("10.13.0.35") == (10, 13, 0, 35)
    assert version_tuple("8.7") < version_tuple("12.0")
    assert version_tuple("11.0.0.1post1") == (11, 0, 0)


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


def test_image_source_falls_back_to_the_artefact_precision() -> None:
    assert image_source({IMAGE_ONNX: {"role": "image"}}, "fp32", "fp32") == IMAGE_ONNX


def test_profile_shapes() -> None:
    rng = DimRange(opt=2, max=4)
    assert profile_shapes(IMAGE, [-1, 3, CROP, CROP], rng, [3, CROP, CROP]) == {
        "min": [1, 3, CROP, CROP],
        "opt": [2, 3, CROP, CROP],
        "max": [4, 3, CROP, CROP],
    }
    assert profile_shapes(TEXT_EMBEDDINGS, [-1, -1], rng, [DIM])["max"] == [4, DIM]
    assert profile_shapes(TOKENS, [-1, CONTEXT], rng, None)["opt"] == [2, CONTEXT]
    with pytest.raises(FSAError, match="meta.json says"):
        profile_shapes(IMAGE, [-1, 3, 224, 224], rng, [3, CROP, CROP])
    with pytest.raises(FSAError, match="first dimension must be dynamic"):
        profile_shapes(IMAGE, [1, 3, CROP, CROP], rng, None)
    with pytest.raises(FSAError, match="only the first dimension"):
        profile_shapes(TOKENS, [-1, -1], rng, None)


# ---------------------------------------------------------------- CLI and backend without TensorRT


def test_build_refuses_bad_profile_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = one_line_error(capsys, ["build", str(tmp_path), "--opt-batch", "9", "--max-batch", "8"])
    assert "--opt-batch 9" in err and "--max-batch 8" in err


@without_tensorrt
def test_build_without_tensorrt_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = one_line_error(capsys, ["build", str(tmp_path)])
    assert err.startswith("fsa build: error: TensorRT is not installed") and "pip install tensorrt" in err


@without_tensorrt
def test_backend_without_tensorrt_names_it(tmp_path: Path) -> None:
    with pytest.raises(FSAError, match="TensorRT is not installed.*pip install tensorrt"):
        TensorRTBackend(tmp_path)


def test_no_gpu_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(FSAError, match="^no CUDA GPU: TensorRT needs an NVIDIA GPU") as e:
        trt_build.cuda_device()
    assert "\n" not in str(e.value)


def test_doctor_json() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fsa_deploy", "doctor", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["python"] == ".".join(map(str, sys.version_info[:3]))
    assert report["tensorrt"]["available"] is (
        MISSING != "TensorRT not installed (tensorrt module not importable)"
    )
    assert isinstance(report["torch"]["cuda_available"], bool)
    assert "CPUExecutionProvider" in report["onnxruntime"]["providers"]
    assert set(report["can_run"]) >= {"build", "tensorrt", "onnxruntime-cpu"}


# ---------------------------------------------------------------- `fsa build` wiring on a stand-in TensorRT


class FakeTensorRT(types.ModuleType):
    """Just enough of the tensorrt module for `fsa build` to run; the "plan" it builds is
    the JSON of what the builder was asked for, so the test can read the settings back."""

    def __init__(self, version: str) -> None:
        super().__init__("tensorrt")
        self.__version__ = version
        names = types.SimpleNamespace
        self.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, severity: None})
        self.NetworkDefinitionCreationFlag = names(STRONGLY_TYPED=1)
        self.BuilderFlag = names(
            TF32="TF32", VERSION_COMPATIBLE="VERSION_COMPATIBLE", GPU_FALLBACK="GPU_FALLBACK"
        )
        self.MemoryPoolType = names(WORKSPACE="WORKSPACE")
        self.HardwareCompatibilityLevel = names(AMPERE_PLUS="AMPERE_PLUS")
        self.DeviceType = names(DLA="DLA")
        self.Dims = list
        self.Builder = FakeBuilder
        self.OnnxParser = FakeParser


class FakeBuilder:
    num_DLA_cores = 0

    def __init__(self, logger: Any) -> None:
        pass

    def create_network(self, flags: int) -> types.SimpleNamespace:
        return types.SimpleNamespace(flags=flags, inputs=[], outputs=[])

    def create_builder_config(self) -> types.SimpleNamespace:
        c: dict[str, Any] = {"set": [], "cleared": [], "profiles": [], "pools": {}}
        return types.SimpleNamespace(
            state=c,
            set_flag=c["set"].append,
            clear_flag=c["cleared"].append,
            add_optimization_profile=c["profiles"].append,
            set_memory_pool_limit=c["pools"].__setitem__,
            create_timing_cache=lambda blob: types.SimpleNamespace(serialize=lambda: bytes(blob) + b"+"),
            set_timing_cache=lambda cache, ignore_mismatch: True,
        )

    def create_optimization_profile(self) -> FakeProfile:
        return FakeProfile()

    def build_serialized_network(self, network: Any, config: Any) -> bytes:
        c = config.state
        profiles = [dict(p) for p in c["profiles"]]
        level = getattr(config, "hardware_compatibility_level", None)
        return json.dumps({**c, "profiles": profiles, "network_flags": network.flags, "hw": level}).encode()


class FakeProfile(dict[str, Any]):
    def set_shape(self, name: str, lo: list[int], opt: list[int], hi: list[int]) -> None:
        self[name] = [lo, opt, hi]


class FakeParser:
    def __init__(self, network: Any, logger: Any) -> None:
        self.network, self.num_errors = network, 0

    def parse_from_file(self, path: str) -> bool:
        graph = onnx.load(path).graph

        def io(v: Any) -> types.SimpleNamespace:
            return types.SimpleNamespace(
                name=v.name, shape=[d.dim_value or -1 for d in v.type.tensor_type.shape.dim]
            )

        self.network.inputs, self.network.outputs = (
            [io(v) for v in graph.input],
            [io(v) for v in graph.output],
        )
        self.network.num_inputs, self.network.num_outputs = len(graph.input), len(graph.output)
        self.network.get_input, self.network.get_output = (
            self.network.inputs.__getitem__,
            self.network.outputs.__getitem__,
        )
        return True


@pytest.fixture
def fake_tensorrt(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Installs a FakeTensorRT of a given version and a fake SM 8.7 GPU, for one test."""

    def install(version: str) -> None:
        monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT(version))
        monkeypatch.setattr(trt_build, "cuda_device", lambda: ("Fake GPU", "8.7"))
        monkeypatch.setattr(trt_build, "trt_logger", trt_build.trt_logger.__wrapped__)  # no cached fake

    return install


@pytest.mark.parametrize(("version", "flags"), [("10.13.0.35", 1 << 1), ("11.0.0.1", 0)])
def test_build_wiring(tmp_path: Path, fake_tensorrt: Callable[[str], None], version: str, flags: int) -> None:
    """Strongly typed on 10 (the flag) and 11 (implicit), no precision flags, options reach the config."""
    fake_tensorrt(version)
    tiny_graphs(tmp_path)
    records = {
        IMAGE_ONNX: {"role": "image", "precision": "fp16"},
        TEXT_ONNX: {"role": "text", "precision": "fp32"},
    }
    write_artifact(tmp_path, records, precision="fp16")
    argv = ["build", str(tmp_path), "--max-batch", "4", "--workspace", "64", "--version-compatible"]
    assert fsa_cli.main([*argv, "--hardware-compatible"]) == 0
    art = Artifact.load(tmp_path)
    art.verify_all()
    record = art.files()["image.fp16.engine"]
    plan = json.loads((tmp_path / "image.fp16.engine").read_bytes())
    assert (
        plan["network_flags"] == flags
        and plan["set"] == ["VERSION_COMPATIBLE"]
        and plan["cleared"] == ["TF32"]
    )
    assert plan["hw"] == "AMPERE_PLUS" and plan["pools"] == {"WORKSPACE": 64 << 20}
    assert plan["profiles"] == [
        {
            IMAGE: [[1, 3, CROP, CROP], [1, 3, CROP, CROP], [4, 3, CROP, CROP]],
            TEXT_EMBEDDINGS: [[1, DIM], [32, DIM], [256, DIM]],
        }
    ]
    assert record["precision"] == "fp16" and record["engine"]["trt_version"] == version
    assert record["engine"]["profiles"][IMAGE]["max"] == [4, 3, CROP, CROP]
    assert record["engine"]["version_compatible"] and record["engine"]["hardware_compatible"]
    assert record["engine"]["source_sha256"] == art.files()[IMAGE_ONNX]["sha256"]
    text = art.files()[TEXT_ENGINE]
    assert text["precision"] == "fp32" and text["engine"]["profiles"][TOKENS]["opt"] == [64, CONTEXT]
    assert (tmp_path / TIMING_CACHE).read_bytes() == b"++"  # loaded by the second engine, extended, saved
    check_engine_record(record, version, "8.7")  # the record the builder writes is one the runtime accepts


def test_build_refuses_missing_precision_and_dla(
    tmp_path: Path, fake_tensorrt: Callable[[str], None]
) -> None:
    fake_tensorrt("10.13.0.35")
    tiny_graphs(tmp_path)
    write_artifact(
        tmp_path, {IMAGE_ONNX: {"role": "image", "precision": "fp32"}, TEXT_ONNX: {"role": "text"}}
    )
    with pytest.raises(FSAError, match="no int8 image graph"):
        trt_build.run_build(
            fsa_cli.build_parser("build").parse_args(["build", str(tmp_path), "--precision", "int8"])
        )
    with pytest.raises(FSAError, match="--dla-core 0: this device has 0 DLA core"):
        trt_build.run_build(
            fsa_cli.build_parser("build").parse_args(["build", str(tmp_path), "--dla-core", "0"])
        )


def test_build_checks_the_source_and_its_external_data(
    tmp_path: Path, fake_tensorrt: Callable[[str], None]
) -> None:
    fake_tensorrt("10.13.0.35")
    tiny_graphs(tmp_path)
    (tmp_path / "image.onnx.data").write_bytes(b"weights")
    records = {IMAGE_ONNX: {"role": "image"}, "image.onnx.data": {"role": "external-data"}}
    write_artifact(tmp_path, records)
    (tmp_path / "image.onnx.data").write_bytes(b"changed")
    with pytest.raises(FSAError, match="image.onnx.data: sha256 does not match"):
        trt_build.run_build(fsa_cli.build_parser("build").parse_args(["build", str(tmp_path), "--no-text"]))


# ---------------------------------------------------------------- real engines (TensorRT and a GPU)


def test_tiny_graphs_match_their_reference_on_onnxruntime(tmp_path: Path) -> None:
    """The graphs and references the engine tests use, checked where TensorRT is absent."""
    ort = pytest.importorskip("onnxruntime")
    w = tiny_graphs(tmp_path)
    image = torch.rand(2, 3, CROP, CROP) * 255
    text = torch.nn.functional.normalize(torch.randn(3, DIM), dim=1)
    tokens = torch.randint(0, VOCAB, (5, CONTEXT), dtype=torch.int32)
    run = ort.InferenceSession(str(tmp_path / IMAGE_ONNX), providers=["CPUExecutionProvider"]).run
    (logits,) = run([LOGITS], {IMAGE: image.numpy(), TEXT_EMBEDDINGS: text.numpy()})
    torch.testing.assert_close(
        torch.from_numpy(logits), reference_logits(w, image, text), rtol=1e-4, atol=1e-3
    )
    run = ort.InferenceSession(str(tmp_path / TEXT_ONNX), providers=["CPUExecutionProvider"]).run
    (embeddings,) = run([EMBEDDINGS], {TOKENS: tokens.numpy()})
    torch.testing.assert_close(torch.from_numpy(embeddings), reference_embeddings(w, tokens))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    if MISSING:
        pytest.skip(MISSING)
    root = tmp_path_factory.mktemp("artefact")
    w = tiny_graphs(root)
    write_artifact(
        root,
        {
            IMAGE_ONNX: {"role": "image", "precision": "fp32"},
            TEXT_ONNX: {"role": "text", "precision": "fp32"},
        },
    )
    argv = [
        "build",
        str(root),
        "--max-batch",
        "4",
        "--opt-batch",
        "2",
        "--max-classes",
        "8",
        "--opt-classes",
        "4",
        "--max-prompts",
        "8",
        "--opt-prompts",
        "4",
    ]
    assert fsa_cli.main(argv) == 0
    return root, w


@pytest.mark.tensorrt
@needs_tensorrt
def test_build_records_engines(built: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, _ = built
    art = Artifact.load(root)
    art.verify_all()
    files = art.files()
    image = files[image_engine_name("fp32")]["engine"]
    assert image["source"] == IMAGE_ONNX and image["source_sha256"] == files[IMAGE_ONNX]["sha256"]
    assert image["profiles"][IMAGE]["max"] == [4, 3, CROP, CROP]
    assert image["profiles"][TEXT_EMBEDDINGS]["opt"] == [4, DIM]
    assert files[TEXT_ENGINE]["engine"]["profiles"][TOKENS]["max"] == [8, CONTEXT]
    assert image["trt_version"] == require_tensorrt() and TIMING_CACHE in files


@pytest.mark.tensorrt
@needs_tensorrt
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_engine_matches_reference(built: tuple[Path, dict[str, np.ndarray]], cuda_graph: bool) -> None:
    root, w = built
    backend = TensorRTBackend(root, cuda_graph=cuda_graph)
    gen = torch.Generator().manual_seed(1)
    # repeated shapes (warm-up, capture, replay), a batch above --max-batch (chunked), another K
    for batch, classes in [(2, 3), (2, 3), (2, 3), (6, 3), (2, 5), (2, 3)]:
        image = torch.rand(batch, 3, CROP, CROP, generator=gen) * 255
        text = torch.nn.functional.normalize(torch.randn(classes, DIM, generator=gen), dim=1)
        out = backend.run(image.cuda(), text.cuda())
        assert out.device.type == "cuda" and out.dtype == torch.float32
        torch.testing.assert_close(out.cpu(), reference_logits(w, image, text), rtol=1e-4, atol=1e-3)


@pytest.mark.tensorrt
@needs_tensorrt
def test_text_engine_matches_reference(built: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, w = built
    tokens = torch.randint(0, VOCAB, (11, CONTEXT), dtype=torch.int64)  # 11 > --max-prompts: chunked
    out = TensorRTBackend(root).encode_text(tokens)
    torch.testing.assert_close(out.cpu(), reference_embeddings(w, tokens), rtol=1e-5, atol=1e-5)


@pytest.mark.tensorrt
@needs_tensorrt
def test_profile_overflow_is_one_line(built: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, _ = built
    backend = TensorRTBackend(root)
    with pytest.raises(FSAError, match=r"text_embeddings of shape \[9, 8\] is outside"):
        backend.run(torch.zeros(1, 3, CROP, CROP).cuda(), torch.zeros(9, DIM).cuda())

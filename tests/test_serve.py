"""Serving: `fsa triton` repositories checked offline, and `fsa serve` (the bundled
tritonserver on 127.0.0.1, free ports) answering HTTP and gRPC with `Segmenter`'s label maps.

One server for the module; it is stopped by the last test, which checks that no process of its
group and no shared-memory region is left. Clients come from the `serve` extra (tritonclient).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, assert_one_line_error, missing, photos, require, run_cli

from benchmarks.ports import free_ports
from fsa_deploy.contract import IMAGE_MODEL, SEGMENT_MODEL, TEXT_MODEL
from fsa_deploy.errors import FSAError
from fsa_deploy.runtime.artifact import Artifact
from fsa_deploy.runtime.serve.check import check_repository, parse_configs
from fsa_deploy.runtime.serve.env import find_serve_env
from fsa_deploy.runtime.serve.repository import RepoOptions, write_repository

th = require("tritonclient.http")  # the serve extra: make setup installs it
tg = require("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

CLASSES = "sky, person; astronaut, grass, cat; kitten, road"
MAX_PIXELS = 1_000_000  # the server's FSA_MAX_PIXELS: above the photos (at most 0.4 MP), below a 1.2 MP PNG


# ---------------------------------------------------------------- offline: fsa triton


def test_container_repository_passes_the_offline_check(tiny_artifact, tmp_path):
    out = tmp_path / "repo"
    proc = run_cli("triton", tiny_artifact.root, "--out", out, "--batch", "8")
    assert proc.returncode == 0, proc.stderr
    assert "configs checked" in proc.stdout
    assert sorted(p.parent.name for p in out.glob("*/config.pbtxt")) == sorted([SEGMENT_MODEL, IMAGE_MODEL, TEXT_MODEL])
    assert (out / IMAGE_MODEL / "1" / "model.onnx").read_bytes() == tiny_artifact.path("image.onnx").read_bytes()
    assert (out / SEGMENT_MODEL / "1" / "fsa_deploy" / "runtime" / "segmenter.py").is_file()
    for cfg in out.glob("*/config.pbtxt"):  # NVIDIA's container runs it unchanged: no path of this machine
        assert str(tiny_artifact.root) not in cfg.read_text() and "/tmp" not in cfg.read_text()
    image_cfg = parse_configs(out)[IMAGE_MODEL]
    assert (image_cfg.backend, image_cfg.max_batch_size) == ("onnxruntime", 0)
    assert check_repository(out) == []


def test_offline_check_catches_typos_and_wiring(tiny_artifact, tmp_path):
    out = write_repository(tiny_artifact, tmp_path / "repo")
    cfg = out / IMAGE_MODEL / "config.pbtxt"
    good = cfg.read_text()
    assert "instance_group" in good
    cfg.write_text(good.replace("instance_group", "instance_grup"))
    with pytest.raises(FSAError, match=r"instance_grup"):
        check_repository(out)
    # wiring: fsa_segment sends FP32 embeddings; the model now takes FP16
    fp32 = '"text_embeddings"\n  data_type: TYPE_FP32'
    assert fp32 in good
    cfg.write_text(good.replace(fp32, fp32.replace("FP32", "FP16")))
    problems = check_repository(out)
    assert any("text_embeddings: sends TYPE_FP32, model takes TYPE_FP16" in p for p in problems), problems
    cfg.write_text(good.replace('"logits"', '"scores"'))
    assert any("no output 'logits'" in p for p in check_repository(out))


# the old hand-written writer's configs for the tiny artefact (captured before it was replaced by
# ModelConfig + text_format): the new files must parse into equal messages, field by field
REFERENCE = Path(__file__).parent / "data" / "triton_reference"
REFERENCE_OPTIONS = {
    "container": RepoOptions(),
    "container-options": RepoOptions(batch=8, segment_instances=3, image_instances=2, cache_dir="/srv/cache"),
    "tensorrt": RepoOptions(image_backend="tensorrt", batch=16),
    "local": RepoOptions(target="local", batch=8, threads=2, backend="onnx", queue_delay_us=500),
}


def with_stand_in_engine(tiny_artifact, folder: Path) -> Path:
    """A copy of the artefact with an fp16 engine record (a stand-in file: the writer never opens it)."""
    shutil.copytree(tiny_artifact.root, folder)
    art = Artifact.load(folder)
    (folder / "image.fp16.engine").write_bytes(b"plan bytes")
    profiles = {"image": {"min": [1, 3, 112, 112], "opt": [4, 3, 112, 112], "max": [6, 3, 112, 112]},
                "text_embeddings": {"min": [1, 64], "opt": [21, 64], "max": [300, 64]}}
    art.record("image.fp16.engine", role="engine", precision="fp16", engine={"profiles": profiles})
    art.save()
    return folder


def test_configs_equal_the_hand_written_writers(tiny_artifact, tmp_path):
    from google.protobuf import text_format

    pb = tg.model_config_pb2
    art = with_stand_in_engine(tiny_artifact, tmp_path / "art")
    for variant, opts in REFERENCE_OPTIONS.items():
        written = parse_configs(write_repository(art, tmp_path / variant, opts))
        assert sorted(written) == sorted(p.stem for p in (REFERENCE / variant).glob("*.pbtxt"))
        for model, got in written.items():
            text = (REFERENCE / variant / f"{model}.pbtxt").read_text().replace("{artifact}", str(art.resolve()))
            want = text_format.Parse(text, pb.ModelConfig())
            fields = {f.name for f, _ in [*got.ListFields(), *want.ListFields()]}
            assert fields >= {"name", "input", "output"}, (variant, model)
            for name in sorted(fields):
                assert getattr(got, name) == getattr(want, name), (variant, model, name)
            assert got == want


def test_the_writer_needs_the_serve_extra_and_loads_without_grpc(tiny_artifact, tmp_path, monkeypatch, capsys):
    """tritonclient[http] alone has no grpc: `import tritonclient.grpc` fails there, the writer does
    not (model_config_pb2 loaded by file); without tritonclient, fsa triton exits 2 in one line."""
    from fsa_deploy.cli import main
    from fsa_deploy.runtime.serve import model_config

    for name in [m for m in sys.modules if m.startswith("tritonclient.grpc")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "grpc", None)  # an http-only install
    with pytest.raises(RuntimeError, match="grpc support"):
        __import__("tritonclient.grpc")
    assert check_repository(write_repository(tiny_artifact, tmp_path / "repo")) == []
    monkeypatch.delitem(sys.modules, model_config.NAME)
    monkeypatch.setitem(sys.modules, "tritonclient", None)  # no serve extra
    assert main(["triton", str(tiny_artifact.root), "--out", str(tmp_path / "none")]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "pip install 'fsa-deploy[serve]'" in err[0], err
    assert not (tmp_path / "none").exists()


def test_tensorrt_repository_takes_the_engine_limits(tiny_artifact, tmp_path):
    """The plan file and the batch / class limits come from the engine's record in meta.json
    (a stand-in engine file: the repository writer never opens it)."""
    art_dir = with_stand_in_engine(tiny_artifact, tmp_path / "art")
    out = write_repository(art_dir, tmp_path / "repo", RepoOptions(image_backend="tensorrt", batch=16))
    assert (out / IMAGE_MODEL / "1" / "model.plan").read_bytes() == b"plan bytes"
    assert 'platform: "tensorrt_plan"' in (out / IMAGE_MODEL / "config.pbtxt").read_text()
    seg = parse_configs(out)[SEGMENT_MODEL].parameters
    assert (seg["max_batch"].string_value, seg["max_classes"].string_value) == ("6", "300")
    assert check_repository(out) == []


def test_local_repository_batches_the_image_model(tiny_artifact, tmp_path):
    out = write_repository(tiny_artifact, tmp_path / "repo", RepoOptions(target="local", batch=8))
    image_cfg = (out / IMAGE_MODEL / "config.pbtxt").read_text()
    assert "max_batch_size: 8" in image_cfg and "dynamic_batching" in image_cfg and 'backend: "python"' in image_cfg
    assert check_repository(out, portable=False) == []
    assert check_repository(out) == [f"{m}: parameter artifact is a path of this machine ({tiny_artifact.root})"
                                     for m in (IMAGE_MODEL, TEXT_MODEL)]


# ---------------------------------------------------------------- fsa serve: refusals (exit 2, one line)


def test_serve_refuses_a_bad_folder_a_busy_port_and_a_missing_env(tiny_artifact, tmp_path):
    assert_one_line_error(run_cli("serve", tmp_path / "nope", timeout=60), "not a folder")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        http, metrics = free_ports(2)
        proc = run_cli("serve", tiny_artifact.root, "--http-port", http, "--grpc-port", port,
                       "--metrics-port", metrics, timeout=60)
        assert_one_line_error(proc, f"--grpc-port {port}", "in use")
    (tmp_path / "a-file").write_text("x")
    proc = run_cli("serve", tiny_artifact.root, "--http-port", free_ports(1)[0], "--cache-dir", tmp_path / "a-file",
                   timeout=60)
    assert_one_line_error(proc, "--cache-dir", "a-file", "cannot be made a folder")
    env = {**os.environ, "FSA_SERVE_VENV": str(tmp_path / "no-env")}
    proc = subprocess.run([sys.executable, "-m", "fsa_deploy", "serve", str(tiny_artifact.root), "--http-port",
                           str(free_ports(1)[0])], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert_one_line_error(proc, "no serve environment", "make setup")


# ---------------------------------------------------------------- fsa serve: the server


class Served:
    """`fsa serve` as a subprocess (its own process group), with its ports and tritonserver's pid."""

    def __init__(self, artifact: Path, log: Path, cache: Path):
        self.http, self.grpc, self.metrics = free_ports(3)
        self.log, self.cache = log, cache
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fsa_deploy", "serve", str(artifact), "--http-port", str(self.http),
             "--grpc-port", str(self.grpc), "--metrics-port", str(self.metrics), "--backend", "onnx",
             "--log-file", str(log), "--cache-dir", str(cache)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
            env=dict(os.environ, FSA_MAX_PIXELS=str(MAX_PIXELS)))
        self.triton_pid: int | None = None

    def wait_ready(self, timeout: float = 120) -> None:
        line = self.proc.stderr.readline()  # one line: "ready ... tritonserver pid N" or the error
        if "ready" not in line:
            self.proc.wait(timeout=30)
            raise RuntimeError(f"fsa serve exited {self.proc.returncode}: {line.strip()}")
        self.triton_pid = int(line.split("tritonserver pid ")[1].split(";")[0])

    def terminate(self) -> None:
        """SIGTERM without waiting: several servers then shut down side by side."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)

    def stop(self) -> int:
        self.terminate()
        return self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def server(tiny_artifact, tmp_path_factory):
    try:
        find_serve_env()
    except FSAError as e:
        missing(f"no serve environment: {e}")
    folder = tmp_path_factory.mktemp("serve")
    s = Served(tiny_artifact.root, folder / "tritonserver.log", folder / "text-cache")
    # no excuse here: a runtime that imports torch (absent from the serve env) fails every server test
    s.wait_ready()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def reference(tiny_artifact):
    """`fsa segment`'s Segmenter on the same artefact, backend and classes."""
    from fsa_deploy.runtime.segmenter import Segmenter

    seg = Segmenter.from_artifact(tiny_artifact.root, "onnx", cache_dir=None).set_classes(CLASSES)
    return {p: seg.segment(p) for p in photos()[:3]}


def inputs(module, image: bytes, classes: str | bytes) -> list:
    out = []
    for name, value in (("IMAGE", image), ("CLASSES", classes)):
        t = module.InferInput(name, [1], "BYTES")
        t.set_data_from_numpy(np.array([value if isinstance(value, bytes) else value.encode()], dtype=np.object_))
        out.append(t)
    return out


def segment(client, module, path: str, classes: str = CLASSES) -> tuple[np.ndarray, dict]:
    r = client.infer(SEGMENT_MODEL, inputs(module, Path(path).read_bytes(), classes))
    return r.as_numpy("LABELS"), json.loads(r.as_numpy("SUMMARY")[0])


def clients(s: Served):
    return [(th.InferenceServerClient(f"127.0.0.1:{s.http}"), th),
            (tg.InferenceServerClient(f"127.0.0.1:{s.grpc}"), tg)]


def test_http_and_grpc_label_maps_equal_the_segmenter(server, reference):
    for client, module in clients(server):
        try:
            for path, ref in list(reference.items())[:2]:
                labels, summary = segment(client, module, path)
                assert labels.dtype == np.uint16 and labels.shape == ref.labels.shape
                assert np.array_equal(labels, ref.labels), f"{path}: {(labels != ref.labels).sum()} pixels differ"
                want = ref.summary()
                assert summary.keys() - {"served"} == want.keys()  # plus what it serves (fsa eval --server checks)
                assert summary["served"]["image_sha256"] == want["artifact_sha256"]
                assert summary["classes"] == want["classes"] and summary["vocabulary"] == want["vocabulary"]
                assert (summary["height"], summary["width"]) == ref.labels.shape
                assert summary["artifact_sha256"] == want["artifact_sha256"]
        finally:
            client.close()


def test_eight_concurrent_clients_are_batched(server, reference):
    http = th.InferenceServerClient(f"127.0.0.1:{server.http}")
    before = http.get_inference_statistics(IMAGE_MODEL)["model_stats"][0]
    paths = list(reference)

    def worker(i: int) -> int:
        client, module = clients(server)[i % 2]
        ok = 0
        try:
            for j in range(5):
                path = paths[(i + j) % len(paths)]
                labels, _ = segment(client, module, path)
                ok += int(np.array_equal(labels, reference[path].labels))
        finally:
            client.close()
        return ok

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(worker, range(8))) == 40
    after = http.get_inference_statistics(IMAGE_MODEL)["model_stats"][0]
    http.close()
    crops = after["inference_count"] - before["inference_count"]
    runs = after["execution_count"] - before["execution_count"]
    assert crops >= 40 and runs < crops, f"{crops} crops in {runs} executions: no batching"
    per_request = max(reference[p].timings["crops"] for p in paths)
    sizes = [int(b["batch_size"]) for b in after["batch_stats"]]
    assert max(sizes) > per_request, f"batch sizes {sizes}: no batch merged requests"


def test_instances_encode_a_new_class_list_once(server, tiny_artifact):
    """Four fsa_segment instances meet a class list at once: one encodes it (fsa_text runs one
    classifier's batches), the others wait on the shared cache and read its entries."""
    from fsa_deploy.runtime.segmenter import as_vocabulary

    classes = "tree, water; lake, building, sand"
    prompts = len(as_vocabulary(classes).queries) * len(tiny_artifact.meta["templates"])
    http = th.InferenceServerClient(f"127.0.0.1:{server.http}")
    before = http.get_inference_statistics(TEXT_MODEL)["model_stats"][0]["execution_count"]
    entries = set(server.cache.glob("text-*.npy"))

    def one(i: int) -> tuple:
        client, module = clients(server)[1]
        try:
            return tuple(segment(client, module, photos()[i % 2], classes)[1]["vocabulary"])
        finally:
            client.close()

    with ThreadPoolExecutor(4) as pool:
        names = set(pool.map(one, range(4)))
    runs = http.get_inference_statistics(TEXT_MODEL)["model_stats"][0]["execution_count"] - before
    http.close()
    assert names == {("tree", "water", "building", "sand")}
    assert runs == -(-prompts // 64), f"fsa_text ran {runs} times for {prompts} prompts (64 a batch)"
    # one cache entry per class name (a list with one name more costs that name)
    assert len(set(server.cache.glob("text-*.npy")) - entries) == len(as_vocabulary(classes).queries)


BAD = {
    "corrupt image bytes": (lambda m: inputs(m, b"\x89PNG\r\n\x1a\n" + b"\0" * 64, CLASSES),
                            "IMAGE: not an image Pillow can read"),
    "image above FSA_MAX_PIXELS": (lambda m: inputs(m, png_bytes(1200, 1000), CLASSES), "above the limit of 1,000,000"),
    "empty CLASSES": (lambda m: inputs(m, Path(photos()[0]).read_bytes(), " , ;"), "no class names"),
    "2,000 classes": (lambda m: inputs(m, Path(photos()[0]).read_bytes(), ",".join(f"c{i}" for i in range(2000))),
                      "at most"),
}


def png_bytes(width: int, height: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (90, 140, 200)).save(buf, format="PNG")
    return buf.getvalue()


def _wrong_dtype(m):
    t = m.InferInput("IMAGE", [1], "FP32")
    t.set_data_from_numpy(np.zeros(1, np.float32))
    return [t, inputs(m, b"", CLASSES)[1]]


BAD["wrong dtype"] = (_wrong_dtype, "data-type")
BAD["missing input"] = (lambda m: inputs(m, Path(photos()[0]).read_bytes(), CLASSES)[:1], "CLASSES")


@pytest.mark.parametrize("case", list(BAD))
def test_bad_requests_get_errors_and_the_server_keeps_serving(server, reference, case):
    make, needle = BAD[case]
    for client, module in clients(server):
        try:
            with pytest.raises(InferenceServerException, match=needle):
                client.infer(SEGMENT_MODEL, make(module))
            path = photos()[0]
            labels, _ = segment(client, module, path)
            assert np.array_equal(labels, reference[path].labels)
        finally:
            client.close()


def test_a_video_stream_fed_at_a_fixed_rate_comes_back_in_order(server, tiny_artifact, tmp_path):
    """runtime.video.triton: a clip's frames sent at 12 frames/s, at most 3 in flight; every frame
    answered in order, each label map equal to the Segmenter's on that frame (~2 s)."""
    require("av")
    from benchmarks.clips import decoded_frames, pan_zoom_frames, write_clip
    from fsa_deploy.runtime.segmenter import Segmenter
    from fsa_deploy.runtime.video.triton import StreamStats, stream_to_triton

    clip = write_clip(tmp_path / "feed.mp4", pan_zoom_frames(photos()[1], 10, (96, 64)), 12)
    frames = decoded_frames(clip)
    seg = Segmenter.from_artifact(tiny_artifact.root, "onnx", cache_dir=None).set_classes(CLASSES)
    list(stream_to_triton(str(clip), f"127.0.0.1:{server.http}", CLASSES, rate=12, limit=1))  # classes encoded
    stats = StreamStats()
    t0 = time.monotonic()
    got = list(stream_to_triton(str(clip), f"127.0.0.1:{server.http}", CLASSES, rate=12, in_flight=4, stats=stats))
    assert time.monotonic() - t0 >= 9 / 12  # paced: the 10th frame is due 9 periods after the first
    assert [f.index for f in got] == sorted(f.index for f in got) == stats.order
    assert stats.sent == len(got) == 10 - stats.dropped and len(got) >= 4  # a slow server: frames dropped
    for f in got:
        ref = seg.segment(frames[f.index]).labels
        assert f.labels.dtype == np.uint16 and np.array_equal(f.labels, ref), f"frame {f.index}"
        assert f.time == pytest.approx(f.index / 12, abs=2e-3) and f.latency_ms > 0


def test_shutdown_leaves_no_process(server):
    assert server.stop() == 0
    assert "stopped" in server.proc.stderr.read()
    with pytest.raises(ProcessLookupError):
        os.killpg(server.triton_pid, 0)
    assert not list(Path("/dev/shm").glob(f"fsa_serve_{server.proc.pid}_*"))

"""Video sources of `fsa segment` (PyAV, the `video` extra): files, image sequences, a loopback
HTTP stream of our own, bad inputs, SIGTERM.

The clips are made here from scikit-image's photos (a pan and a zoom, 160x120 or 96x64, a few
seconds at 12 fps). The reference for every frame is `fsa segment` on that frame saved as a PNG
(decoded by the same code), pixel for pixel. Servers are threads of this process bound to
127.0.0.1; the one subprocess (SIGTERM) is waited for by its PID.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, assert_one_line_error, photos, require
from PIL import Image

av = require("av")

from benchmarks.clips import decoded_frames, pan_zoom_frames, write_clip  # noqa: E402
from fsa_deploy.contract import OUTPUTS_MANIFEST  # noqa: E402

CLASSES = "sky, person, grass, cat, road"
FPS = 12


def photo(name: str) -> str:
    return next(p for p in photos() if Path(p).name.startswith(name))


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    small = pan_zoom_frames(photo("astronaut"), 8, (96, 64))
    out = {
        "clip": write_clip(d / "clip.mp4", pan_zoom_frames(photo("chelsea"), 30, (160, 120)), FPS),
        "ten": write_clip(d / "ten.mkv", small, FPS, pix_fmt="yuv420p10le"),
        "rot": write_clip(d / "rot.mp4", small, FPS, rotation=90),
        "vfr": write_clip(d / "vfr.mkv", small, FPS, times=[0.0, 0.05, 0.3, 0.35, 0.9, 1.0, 1.4, 1.45]),
        "odd": write_clip(d / "odd.avi", [f[:63, :95] for f in small], 10, codec="mpeg4"),
        "ts": write_clip(d / "live.ts", pan_zoom_frames(photo("coffee"), 24, (96, 64)), FPS, fmt="mpegts"),
    }
    (d / "empty.mp4").write_bytes(b"")
    (d / "junk.mkv").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    data = out["clip"].read_bytes()
    (d / "cut.mp4").write_bytes(data[: len(data) // 2])  # moov at the end: nothing can be read
    data = out["ten"].read_bytes()
    (d / "cut.mkv").write_bytes(data[: len(data) // 2])  # the first frames decode
    return out


def segment(run_here, *args) -> subprocess.CompletedProcess:
    return run_here("segment", *map(str, args), "--classes", CLASSES, "--backend", "onnx", "--no-cache")


@pytest.fixture(scope="module")
def clip_run(clips, tiny_artifact, tmp_path_factory):
    """The 160x120 clip through `fsa segment` once (in this process): outputs and frames."""
    from fsa_deploy.cli import main

    out = tmp_path_factory.mktemp("clip-out")
    assert main(["segment", str(clips["clip"]), "--artifact", str(tiny_artifact.root), "--out", str(out),
                 "--classes", CLASSES, "--backend", "onnx", "--no-cache"]) == 0
    summary = json.loads((out / "clip.json").read_text())
    return out, summary, np.load(out / "clip.labels.npz")["labels"], decoded_frames(clips["clip"])


def reference_labels(run_here, tiny_artifact, frames: list[np.ndarray], tmp: Path) -> list[np.ndarray]:
    """`fsa segment` on each frame saved as a PNG: the reference labels."""
    tmp.mkdir(parents=True, exist_ok=True)
    names = []
    for i, rgb in enumerate(frames):
        Image.fromarray(rgb).save(tmp / f"f{i}.png")
        names.append(tmp / f"f{i}.png")
    proc = segment(run_here, *names, "--artifact", tiny_artifact.root, "--out", tmp / "out")
    assert proc.returncode == 0, proc.stderr
    return [np.asarray(Image.open(tmp / "out" / f"f{i}.png")) for i in range(len(frames))]


# ---------------------------------------------------------------- files


def test_video_labels_equal_segment_on_each_frame_as_png(clip_run, run_here, tiny_artifact, tmp_path):
    out, summary, labels, frames = clip_run
    assert labels.shape == (30, 120, 160) and labels.dtype == np.uint8
    assert summary["complete"] and summary["frame_count"] == 30 == len(summary["frames"])
    assert [f["time"] for f in summary["frames"][:3]] == pytest.approx([0, 1 / FPS, 2 / FPS], abs=1e-3)
    # crops of consecutive frames shared backend calls (2 crops a frame, 16 a call)
    assert max(f["timings_ms"]["batched_frames"] for f in summary["frames"]) > 1
    picked = [0, 13, 29]
    refs = reference_labels(run_here, tiny_artifact, [frames[k] for k in picked], tmp_path)
    for k, ref in zip(picked, refs):
        assert np.array_equal(labels[k], ref), f"frame {k}: {(labels[k] != ref).mean():.2%} of pixels differ"
        image_json = json.loads((tmp_path / "out" / f"f{picked.index(k)}.json").read_text())
        assert summary["frames"][k]["classes"] == image_json["classes"]
    assert len(np.unique(labels)) > 1


def test_overlay_is_h264_at_the_source_rate_and_size(clip_run):
    out, summary, labels, frames = clip_run
    with av.open(str(out / "clip_overlay.mp4")) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264" and (s.width, s.height) == (160, 120)
        assert float(s.guessed_rate) == pytest.approx(FPS)
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
    assert len(decoded) == 30
    # the top of a frame is the frame blended with its classes' colours, not the frame itself
    assert np.abs(decoded[5][:60].astype(int) - frames[5][:60]).mean() > 5


def test_selection_options_and_frames_folder(clip_run, clips, run_here, tiny_artifact, tmp_path):
    _, _, labels, _ = clip_run
    proc = segment(run_here, clips["clip"], "--artifact", tiny_artifact.root, "--out", tmp_path, "--frames",
                   "--start", "0.5", "--every", "2", "--limit", "4")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "clip.json").read_text())
    numbers = [f["source_frame"] for f in summary["frames"]]
    assert numbers == [6, 8, 10, 12] and not (tmp_path / "clip.labels.npz").exists()
    assert sorted(p.name for p in (tmp_path / "clip").iterdir() if p.name != OUTPUTS_MANIFEST) == [
        f"{i:06d}.png" for i in range(4)]
    for i, n in enumerate(numbers):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "clip" / f"{i:06d}.png")), labels[n])
    proc = segment(run_here, clips["clip"], "--artifact", tiny_artifact.root, "--out", tmp_path / "b",
                   "--max-fps", "4", "--duration", "1.5")
    assert proc.returncode == 0, proc.stderr
    got = json.loads((tmp_path / "b" / "clip.json").read_text())["frames"]
    assert [f["source_frame"] for f in got] == [0, 3, 6, 9, 12, 15]
    assert np.array_equal(np.load(tmp_path / "b" / "clip.labels.npz")["labels"], labels[[0, 3, 6, 9, 12, 15]])


def test_image_sequence_glob_equals_segment_on_its_files(clip_run, run_here, tiny_artifact, tmp_path):
    _, _, labels, frames = clip_run
    seq = tmp_path / "seq"
    seq.mkdir()
    for i in range(4):
        Image.fromarray(frames[i]).save(seq / f"{i:04d}.png")
    proc = segment(run_here, f"{seq}/*.png", "--artifact", tiny_artifact.root, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    got = np.load(tmp_path / "out" / "seq.labels.npz")["labels"]
    assert np.array_equal(got, labels[:4])  # a lossless PNG of a frame is that frame


@pytest.mark.parametrize("key, shape, rate", [("ten", (8, 64, 96), FPS), ("rot", (8, 96, 64), FPS),
                                              ("odd", (8, 63, 95), 10), ("vfr", (8, 64, 96), None)])
def test_odd_formats_rotation_and_variable_rate(clips, key, shape, rate, run_here, tiny_artifact, tmp_path):
    proc = segment(run_here, clips[key], "--artifact", tiny_artifact.root, "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert np.load(tmp_path / f"{key}.labels.npz")["labels"].shape == shape
    summary = json.loads((tmp_path / f"{key}.json").read_text())
    with av.open(str(tmp_path / f"{key}_overlay.mp4")) as c:
        s = c.streams.video[0]
        times = [f.time for f in c.decode(s)]
        assert (s.height, s.width) == (shape[1] + shape[1] % 2, shape[2] + shape[2] % 2)  # 4:2:0: even sides
    if rate is not None:
        assert times == pytest.approx([i / rate for i in range(8)], abs=2e-3)
    else:  # a variable rate keeps its timestamps, in NAME.json and in the overlay
        want = [0.0, 0.05, 0.3, 0.35, 0.9, 1.0, 1.4, 1.45]
        assert [f["time"] for f in summary["frames"]] == pytest.approx(want, abs=2e-3)
        assert times == pytest.approx(want, abs=2e-3)
    if key == "rot":  # turned as FFmpeg's player turns it: frame 0 rotated a quarter counter-clockwise
        frames = decoded_frames(clips[key])
        with av.open(str(clips[key])) as c:
            raw = next(c.decode(video=0)).to_ndarray(format="rgb24")
        assert np.array_equal(frames[0], np.rot90(raw))


@pytest.mark.parametrize("name, needle", [("empty.mp4", "empty file"), ("junk.mkv", "not a video"),
                                          ("cut.mp4", "not a video"), ("/dev/video63", "no such camera"),
                                          ("nothing/*.png", "no files match"), ("gopher://x/y", "unknown stream"),
                                          ("missing.webm", "no such file")])
def test_unreadable_sources_are_one_line_and_leave_nothing(clips, name, needle, run_here, tiny_artifact, tmp_path):
    source = name if name.startswith(("/", "gopher")) else str(clips["clip"].parent / name)
    proc = segment(run_here, source, "--artifact", tiny_artifact.root, "--out", tmp_path / "out")
    assert_one_line_error(proc, needle)
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_truncated_file_keeps_its_good_frames_with_one_warning(clips, run_here, tiny_artifact, tmp_path):
    proc = segment(run_here, clips["clip"].parent / "cut.mkv", "--artifact", tiny_artifact.root, "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    warnings = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(warnings) == 1 and "ends early" in warnings[0], proc.stderr
    n = json.loads((tmp_path / "cut.json").read_text())["frame_count"]
    assert 0 < n < 8 and np.load(tmp_path / "cut.labels.npz")["labels"].shape[0] == n
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != OUTPUTS_MANIFEST) == [
        "cut.json", "cut.labels.npz", "cut_overlay.mp4"]


# ---------------------------------------------------------------- a loopback HTTP stream of our own


class Served:
    """A ThreadingHTTPServer on 127.0.0.1 in this process: /file.mp4 whole (Content-Length), /live.ts
    paced at `rate` bytes/s and then silent (a stalled live stream), /silent never answers."""

    def __init__(self, files: dict[str, Path], pace_s: float) -> None:
        stop = self.stop = threading.Event()

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a) -> None:
                pass

            def do_GET(self) -> None:  # http.server's name
                name = self.path.lstrip("/")
                if name == "silent":
                    stop.wait(30)
                    return
                data = files[name].read_bytes()
                self.send_response(200)
                if name.endswith(".ts"):
                    self.send_header("Content-Type", "video/mp2t")
                    self.end_headers()
                    step = len(data) // 20
                    for i in range(0, len(data), step):
                        try:
                            self.wfile.write(data[i : i + step])
                            self.wfile.flush()
                        except OSError:  # the client went away
                            return
                        if stop.wait(pace_s / 20):
                            return
                    stop.wait(30)  # stalls with the connection open
                    return
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def served(clips):
    s = Served({"file.mp4": clips["clip"], "live.ts": clips["ts"]}, pace_s=2.0)
    yield s
    s.close()


def test_http_file_equals_the_local_file(served, clip_run, run_here, tiny_artifact, tmp_path):
    _, _, labels, _ = clip_run
    proc = segment(run_here, f"{served.url}/file.mp4", "--artifact", tiny_artifact.root, "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "file.json").read_text())
    assert summary["kind"] == "stream" and not summary["live"] and summary["frames_dropped"] == 0
    assert np.array_equal(np.load(tmp_path / "file.labels.npz")["labels"], labels)


def test_live_stream_that_stalls_keeps_its_frames_and_says_so(served, clips, run_here, tiny_artifact, tmp_path):
    t0 = time.monotonic()
    proc = segment(run_here, f"{served.url}/live.ts", "--artifact", tiny_artifact.root, "--out", tmp_path,
                   "--stream-timeout", "1")
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - t0 < 20
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "stalled" in lines[0] and "--stream-timeout" in lines[0], proc.stderr
    summary = json.loads((tmp_path / "live.json").read_text())
    assert summary["live"] and summary["frames_read"] == summary["frame_count"] + summary["frames_dropped"]
    assert 0 < summary["frame_count"] <= 24
    # the last kept frame's labels are those of the source's frame of the same timestamp
    from fsa_deploy.runtime.video.sources import Source, classify

    src = Source(classify(str(clips["ts"])))
    by_time = {round(t, 3): rgb for t, rgb in src.frames()}
    src.close()
    ref = reference_labels(run_here, tiny_artifact, [by_time[round(summary["frames"][-1]["time"], 3)]],
                           tmp_path / "ref")[0]
    assert np.array_equal(np.load(tmp_path / "live.labels.npz")["labels"][-1], ref)


def test_stream_that_never_answers_is_one_line_within_the_timeout(served, run_here, tiny_artifact, tmp_path):
    t0 = time.monotonic()
    proc = segment(run_here, f"{served.url}/silent", "--artifact", tiny_artifact.root, "--out", tmp_path / "o",
                   "--stream-timeout", "1")
    assert time.monotonic() - t0 < 15
    assert_one_line_error(proc, "cannot open the stream", "--stream-timeout")
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


# ---------------------------------------------------------------- SIGTERM: a shorter, valid result


def test_sigterm_publishes_the_frames_done(clips, tiny_artifact, tmp_path):
    frames = pan_zoom_frames(photo("rocket"), 400, (160, 120))
    long = write_clip(tmp_path / "long.mp4", frames, FPS)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "fsa_deploy", "segment", str(long), "--artifact",
                             str(tiny_artifact.root), "--out", str(out), "--classes", CLASSES, "--backend", "onnx",
                             "--no-cache"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (out / "long.json").exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)  # the first checkpoint: frames are flowing
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err
    summary = json.loads((out / "long.json").read_text())
    n = summary["frame_count"]
    assert summary["complete"] and summary["stopped_by"] == "signal" and 0 < n < 400
    assert np.load(out / "long.labels.npz")["labels"].shape == (n, 120, 160)
    with av.open(str(out / "long_overlay.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == n
    assert sorted(p.name for p in out.iterdir() if p.name != OUTPUTS_MANIFEST) == [
        "long.json", "long.labels.npz", "long_overlay.mp4"]


def test_source_kinds_are_told_apart():
    from fsa_deploy.runtime.video.sources import classify

    kinds = {s: (c.kind, c.name) if (c := classify(s)) else None for s in
             ("rtsp://cam.local:554/live/main", "udp://127.0.0.1:5000", "/dev/video0", "0", "clips/run1/*.png",
              "clips/run2/%06d.png", "a/b/movie.MKV", "photo.jpg")}
    assert kinds == {"rtsp://cam.local:554/live/main": ("stream", "main"), "udp://127.0.0.1:5000": ("stream",
                     "127.0.0.1_5000"), "/dev/video0": ("camera", "video0"), "0": ("camera", "camera0"),
                     "clips/run1/*.png": ("sequence", "run1"), "clips/run2/%06d.png": ("sequence", "run2"),
                     "a/b/movie.MKV": ("file", "movie"), "photo.jpg": None}


# ---------------------------------------------------------------- fsa app --source in Chromium


def mjpeg_frames(port: int, count: int, timeout: float = 60) -> tuple[str, list[Image.Image]]:
    """The content type of GET /api/stream and its first `count` JPEG parts."""
    import http.client
    import io

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/api/stream")
        r = conn.getresponse()
        ctype, images = r.getheader("Content-Type"), []
        while len(images) < count:
            headers = {}
            line = r.readline()
            while line.strip() == b"":
                line = r.readline()
            assert line.strip() == b"--fsaframe", line
            while (line := r.readline().strip()):
                k, v = line.decode().split(":", 1)
                headers[k.lower()] = v.strip()
            assert headers["content-type"] == "image/jpeg"
            images.append(Image.open(io.BytesIO(r.read(int(headers["content-length"])))))
        return ctype, images
    finally:
        conn.close()


def test_app_source_streams_the_annotated_video_to_chromium(clips, tiny_artifact, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from test_app import App, browser_driver

    app = App(tiny_artifact.root, tmp_path, "--backend", "onnx", "--source", str(clips["clip"]))
    driver = None
    try:
        app.wait_ready()
        ctype, images = mjpeg_frames(app.port, 2)
        assert ctype.startswith("multipart/x-mixed-replace; boundary=fsaframe")
        assert images[0].width == 160 and images[0].height > 120  # the frame above its legend
        driver = browser_driver()
        driver.get(app.url + "/")
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.ID, "live-stats"))  # /api/info names a source
        stats = driver.find_element(By.ID, "live-stats")
        img = driver.find_element(By.ID, "live-stream")
        WebDriverWait(driver, 60).until(lambda d: "frames/s" in stats.text and "latency" in stats.text
                                        and d.execute_script("return arguments[0].naturalWidth", img) == 160)
        assert driver.find_element(By.ID, "camera").is_displayed()  # the page's own camera mode is still there
        box = driver.find_element(By.ID, "classes")
        box.clear()
        box.send_keys("cat, grass; lawn, sky")  # edited live: the stream's classes follow
        WebDriverWait(driver, 30).until(lambda d: stats.get_attribute("data-classes") == "cat, grass; lawn, sky")
        done = int(stats.get_attribute("data-frames-done"))
        WebDriverWait(driver, 30).until(lambda d: int(stats.get_attribute("data-frames-done")) > done + 3)
        info = json.loads(app.request("GET", "/api/stream/info")[1])
        assert info["frames_per_s"] > 0 and info["latency_ms"] > 0 and info["error"] is None
        assert info["frames_read"] >= info["frames_done"] + info["frames_dropped"]
        status, body = app.request("POST", "/api/stream/classes", b'{"classes": ""}',
                                   {"Content-Type": "application/json"})
        assert status == 400 and "no class names" in json.loads(body)["error"]
    finally:
        if driver is not None:
            driver.quit()
        if app.proc.poll() is None:
            os.kill(app.proc.pid, signal.SIGINT)
        assert app.proc.wait(timeout=30) == 130


def test_app_with_a_bad_source_is_one_line_before_serving(tiny_artifact, tmp_path):
    from conftest import run_cli

    from benchmarks.ports import free_ports

    proc = run_cli("app", tiny_artifact.root, "--port", str(free_ports(1)[0]), "--source", "/dev/video63",
                   timeout=60)
    assert_one_line_error(proc, "/dev/video63", "no such camera")

"""`fsa app`: the page in a real Chromium (Selenium, Debian's chromium + chromedriver), its API
against `fsa segment`'s files, bad requests, Host/Origin refusals, cancelled work, and SIGINT.

One server for the module (`fsa app` as a subprocess on 127.0.0.1, a free port, the tiny export,
ONNX Runtime CPU); the last test stops it with SIGINT and checks that nothing is left. The
browser tests need chromium: `make setup` installs it where it can (root, Debian's apt) and
`make test` then sets FSA_REQUIRE_BROWSER=1, so a missing browser fails instead of skipping.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import io
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, assert_one_line_error, missing, photos, require, run_cli
from PIL import Image

from benchmarks.ports import free_ports

CLASSES = "sky, person, grass, cat, road, tree, building"
OTHER = "background, cat; kitten, sofa"
MAX_PIXELS = 1_000_000  # the server's FSA_MAX_PIXELS: above the photos (at most 0.4 MP), below a 1.2 MP PNG
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
BROWSER_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,1000",
                 "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")


# ---------------------------------------------------------------- helpers


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body and its content type (the standard library has no encoder)."""
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
        out.write(value.encode() + b"\r\n")
    for name, (filename, data) in files.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                  "Content-Type: application/octet-stream\r\n\r\n".encode())
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


class App:
    """`fsa app` as a subprocess (its own process group, its own TMPDIR)."""

    def __init__(self, artifact: Path, tmp: Path, *options: str) -> None:
        self.port = free_ports(1)[0]
        self.tmp = tmp / "tmpdir"
        self.tmp.mkdir(parents=True)
        env = dict(os.environ, FSA_MAX_PIXELS=str(MAX_PIXELS), TMPDIR=str(self.tmp),
                   FSA_CACHE_DIR=str(tmp / "text-cache"))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fsa_deploy", "app", str(artifact), "--port", str(self.port),
             *(options or ("--backend", "onnx"))],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 60) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if "serving http://127.0.0.1" not in line:
            self.proc.kill()
            raise RuntimeError(f"fsa app did not start: {line!r} {self.proc.stderr.read()}")
        self.tmp_at_start = set(self.tmp.iterdir())  # what the interpreter's own start left there
        return line

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def segment(self, image: tuple[str, bytes] | None, classes: str | None, **extra: str):
        fields = {**({"classes": classes} if classes is not None else {}), **extra}
        body, ctype = multipart(fields, {"image": image} if image else {})
        status, data = self.request("POST", "/api/segment", body, {"Content-Type": ctype})
        return status, json.loads(data)


@pytest.fixture(scope="module")
def app(tiny_artifact, tmp_path_factory):
    a = App(tiny_artifact.root, tmp_path_factory.mktemp("app"))
    a.wait_ready()
    yield a
    if a.proc.poll() is None:
        os.killpg(a.proc.pid, signal.SIGKILL)
        a.proc.wait()


@pytest.fixture(scope="module")
def reference(tiny_artifact, tmp_path_factory):
    """What `fsa segment` writes for two photos and two class lists: {(classes, stem): (png bytes, json)},
    and {("overlay", classes, stem): overlay png bytes}."""
    from fsa_deploy.cli import main

    out: dict[tuple, tuple[bytes, dict] | bytes] = {}
    for classes in (CLASSES, OTHER):
        folder = tmp_path_factory.mktemp("segment")
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):  # in this process
            rc = main(["segment", *photos()[:2], "--artifact", str(tiny_artifact.root), "--out", str(folder),
                       "--backend", "onnx", "--classes", classes, "--no-cache"])
        assert rc == 0, err.getvalue()
        for p in photos()[:2]:
            stem = Path(p).stem
            out[classes, stem] = ((folder / f"{stem}.png").read_bytes(),
                                  json.loads((folder / f"{stem}.json").read_text()))
            out["overlay", classes, stem] = (folder / f"{stem}_overlay.png").read_bytes()
    return out


def browser_driver():
    """A headless Chromium (Debian's) under chromedriver, or a skip / failure saying what is missing."""
    why = None
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        why = "selenium is not installed (pip install 'fsa-deploy[dev]')"
    if why is None and not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        why = f"no {CHROMIUM} and {CHROMEDRIVER} (Debian: apt-get install chromium chromium-driver; `make setup`)"
    if why:
        if os.environ.get("FSA_REQUIRE_BROWSER") == "1":
            pytest.fail(f"FSA_REQUIRE_BROWSER=1 but {why}")
        pytest.skip(why)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in BROWSER_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    return driver


@pytest.fixture(scope="module")
def browser():
    driver = browser_driver()
    yield driver
    driver.quit()


def open_page(driver, app: App, classes: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(app.url + "/")
    box = driver.find_element(By.ID, "classes")
    WebDriverWait(driver, 30).until(lambda d: box.get_attribute("value"))  # /api/info filled the defaults
    box.clear()
    box.send_keys(classes)


def frames(driver) -> int:
    from selenium.webdriver.common.by import By

    return int(driver.find_element(By.ID, "overlay").get_attribute("data-frames") or 0)


def upload_and_wait(driver, path: str) -> None:
    """Choose `path` in #image, click Segment, wait for a new overlay or an error in #status."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    status = driver.find_element(By.ID, "status")
    before = int(status.get_attribute("data-done") or 0)
    chooser = driver.find_element(By.ID, "image")
    driver.execute_script("arguments[0].value = ''", chooser)  # chromedriver adds to a `multiple` input's files
    chooser.send_keys(path)
    driver.find_element(By.ID, "segment").click()
    WebDriverWait(driver, 60).until(lambda d: int(status.get_attribute("data-done") or 0) == before + 1)


def legend(driver) -> list[tuple[str, float, str]]:
    from selenium.webdriver.common.by import By

    return [(li.get_attribute("data-index"), float(li.get_attribute("data-fraction")), li.text)
            for li in driver.find_elements(By.CSS_SELECTOR, "#legend li")]


# ---------------------------------------------------------------- the page in Chromium


def canvas_pixels(driver) -> np.ndarray:
    """#overlay's pixels as on screen: uint8 [H, W, 4]."""
    data = driver.execute_script(
        "const c = document.getElementById('overlay');"
        "return [c.width, c.height, c.toDataURL('image/png')];")
    w, h, url = data
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGBA")).reshape(h, w, 4)


def set_value(driver, element_id: str, value: str) -> None:
    """An input's value as if typed (input event), without typing thousands of characters."""
    driver.execute_script("const e = document.getElementById(arguments[0]); e.value = arguments[1];"
                          "e.dispatchEvent(new Event('input'));", element_id, value)


def palette_rgb(indices: np.ndarray) -> np.ndarray:
    from fsa_deploy.runtime.segmenter import palette

    return palette()[indices]


def test_page_segments_a_photo_with_fsa_segments_legend_colours_and_files(app, reference, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    open_page(browser, app, CLASSES)
    empty = browser.find_element(By.ID, "empty")
    assert empty.is_displayed() and not browser.find_element(By.ID, "overlay").is_displayed()  # no broken image
    photo = photos()[0]
    upload_and_wait(browser, photo)
    status = browser.find_element(By.ID, "status")
    assert "error" not in (status.get_attribute("class") or ""), status.text
    want_png, want = reference[CLASSES, Path(photo).stem]
    got = legend(browser)
    present = {c["index"]: c["fraction"] for c in want["classes"]}
    assert len(present) >= 2  # a photo where the tiny model finds more than one class
    # every class of the list, in order, absent ones at 0.0%
    assert [(str(i), present.get(i, 0.0)) for i in range(len(want["vocabulary"]))] == [(i, f) for i, f, _ in got]
    for name, (_, f, text) in zip(want["vocabulary"], got):
        assert text == f"{name} {100 * f:.1f}%"
    # at opacity 1 the canvas shows fsa segment's label map in the palette's bright colours
    set_value(browser, "opacity", "1")
    labels = np.asarray(Image.open(io.BytesIO(want_png)))
    pixels = canvas_pixels(browser)
    assert pixels.shape[:2] == labels.shape == (want["height"], want["width"])
    assert np.array_equal(pixels[..., :3], palette_rgb(labels))
    luminance = palette_rgb(labels).astype(float) @ [0.2126, 0.7152, 0.0722]
    assert luminance.min() >= 70, "a class drawn near black"
    # the downloads: NAME.png is fsa segment's file byte for byte, the overlay is the canvas on screen
    links = {a.get_attribute("download"): a for a in browser.find_elements(By.CSS_SELECTOR, "#downloads a")}
    stem = Path(photo).stem
    assert set(links) == {f"{stem}.png", f"{stem}_overlay.png", f"{stem}.json"}
    browser.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path)})
    for name, link in links.items():
        link.click()
        WebDriverWait(browser, 20).until(lambda d, f=tmp_path / name: f.is_file() and f.stat().st_size)
    assert (tmp_path / f"{stem}.png").read_bytes() == want_png
    saved = np.asarray(Image.open(tmp_path / f"{stem}_overlay.png").convert("RGBA"))
    assert np.array_equal(saved, pixels)  # the overlay at the opacity on screen (1 here)
    summary = json.loads((tmp_path / f"{stem}.json").read_text())
    assert summary["classes"] == want["classes"] and summary["vocabulary"] == want["vocabulary"]
    timings = browser.find_element(By.ID, "timings").text
    assert all(f"{k} " in timings for k in ("decode", "text", "forward", "encode")), timings
    # segmenting the same photo again (other classes) replaces its thumbnail
    set_value(browser, "classes", OTHER)
    upload_and_wait(browser, photo)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#thumbs img")) == 1
    assert [t for _, _, t in legend(browser)][0].startswith("background ")
    # the plain label map toggle redraws from the label PNG alone
    before = frames(browser)
    browser.find_element(By.ID, "labelmap").click()
    WebDriverWait(browser, 20).until(lambda d: frames(d) > before)
    browser.find_element(By.ID, "labelmap").click()


def test_threshold_leaves_pixels_unlabelled_and_transparent(app, browser):

    open_page(browser, app, CLASSES)
    set_value(browser, "prob-thd", "0.99")
    photo = photos()[1]
    upload_and_wait(browser, photo)
    set_value(browser, "prob-thd", "")
    got = legend(browser)
    assert got[-1][0] == "255" and got[-1][2].startswith("unlabelled ") and got[-1][1] > 0.5, got
    assert len(got) == len(CLASSES.split(",")) + 1
    set_value(browser, "opacity", "1")
    pixels = canvas_pixels(browser)
    shown = np.asarray(Image.open(photo).convert("RGB"))
    # where nothing passed the threshold the photo shows through (the label PNG is transparent there)
    status, out = app.segment((Path(photo).name, Path(photo).read_bytes()), CLASSES, prob_thd="0.99")
    labels = np.asarray(Image.open(io.BytesIO(base64.b64decode(out["labels"]))))
    mask = labels == 255
    assert mask.mean() > 0.5
    assert np.abs(pixels[..., :3][mask].astype(int) - shown[mask]).max() <= 1


def test_legend_hover_highlights_its_class(app, reference, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    open_page(browser, app, CLASSES)
    photo = photos()[0]
    upload_and_wait(browser, photo)
    set_value(browser, "opacity", "1")
    want_png, want = reference[CLASSES, Path(photo).stem]
    labels = np.asarray(Image.open(io.BytesIO(want_png)))
    index = want["classes"][0]["index"]
    item = browser.find_element(By.CSS_SELECTOR, f'#legend li[data-index="{index}"]')
    ActionChains(browser).move_to_element(item).perform()
    from selenium.webdriver.support.ui import WebDriverWait

    overlay = browser.find_element(By.ID, "overlay")
    WebDriverWait(browser, 10).until(lambda d: overlay.get_attribute("data-highlight") == str(index))
    pixels = canvas_pixels(browser)[..., :3]
    shown = np.asarray(Image.open(photo).convert("RGB"))
    mine = labels == index
    assert np.array_equal(pixels[mine], palette_rgb(labels)[mine])
    assert np.abs(pixels[~mine].astype(int) - shown[~mine]).max() <= 1  # the other classes: the photo
    ActionChains(browser).move_to_element(browser.find_element(By.ID, "status")).perform()
    WebDriverWait(browser, 10).until(lambda d: overlay.get_attribute("data-highlight") == "")


def test_a_bad_file_shows_an_error_in_plain_words_and_clears_the_result(app, reference, browser, tmp_path):
    from selenium.webdriver.common.by import By

    open_page(browser, app, CLASSES)
    upload_and_wait(browser, photos()[1])
    assert browser.find_element(By.ID, "overlay").is_displayed() and legend(browser)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    upload_and_wait(browser, str(bad))
    status = browser.find_element(By.ID, "status")
    assert "error" in status.get_attribute("class"), status.text
    assert status.text.count("broken.png") == 1 and "Pillow" not in status.text, status.text
    assert not browser.find_element(By.ID, "overlay").is_displayed() and not legend(browser)  # the old result went
    assert browser.find_element(By.ID, "empty").is_displayed()
    photo = photos()[1]
    upload_and_wait(browser, photo)
    assert "error" not in (status.get_attribute("class") or ""), status.text
    want = reference[CLASSES, Path(photo).stem][1]
    assert {str(c["index"]): c["fraction"] for c in want["classes"]} == {i: f for i, f, _ in legend(browser) if f}


def fresh_classes(n: int) -> str:
    """`n` class names no cache holds: their text encoding takes seconds (~16 ms a class here)."""
    return ", ".join(f"t{uuid.uuid4().hex[:10]}" for _ in range(n))


def test_cancel_and_replace_a_request_in_flight(app, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    open_page(browser, app, CLASSES)
    button = browser.find_element(By.ID, "segment")
    status = browser.find_element(By.ID, "status")
    chooser = browser.find_element(By.ID, "image")
    chooser.send_keys(photos()[0])
    # a slow request (1,000 new classes: ~15 s of text encoding) shows its elapsed time and cancels
    set_value(browser, "classes", fresh_classes(1000))
    button.click()
    WebDriverWait(browser, 10).until(lambda d: float(button.get_attribute("data-elapsed") or 0) >= 0.5
                                     and "text" in (button.get_attribute("data-step") or ""))
    assert re.fullmatch(r"Cancel \([\d.]+ s, text \d+%\)", button.text), button.text  # the server's progress
    button.click()
    WebDriverWait(browser, 10).until(lambda d: status.text == "cancelled" and button.text == "Segment")
    # another slow one, replaced by new classes: the server stops the old work, the new answer comes at once
    set_value(browser, "classes", fresh_classes(1000))
    button.click()
    WebDriverWait(browser, 10).until(lambda d: button.text.startswith("Cancel"))
    t0 = time.monotonic()
    set_value(browser, "classes", "sky, grass")
    assert button.text == "Segment with new classes"
    done = int(status.get_attribute("data-done") or 0)
    button.click()
    WebDriverWait(browser, 30).until(lambda d: int(status.get_attribute("data-done") or 0) >= done + 2
                                     and button.text == "Segment")
    assert time.monotonic() - t0 < 8, "the new request waited behind the abandoned one"
    assert [t.split()[0] for _, _, t in legend(browser)] == ["sky", "grass"]


def test_habits_paste_ctrl_enter_remembered_classes_and_the_phone_layout(app, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    open_page(browser, app, "cat\ngrass, sky; cloud")
    status = browser.find_element(By.ID, "status")
    done = int(status.get_attribute("data-done") or 0)
    # paste an image (a clipboard event carrying a file): it is segmented
    browser.execute_script(
        "const blob = await (await fetch('/samples/' + arguments[0])).blob();"
        "const dt = new DataTransfer(); dt.items.add(new File([blob], 'pasted.jpg', {type: 'image/jpeg'}));"
        "document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: dt}));", "chelsea.jpg")
    WebDriverWait(browser, 30).until(lambda d: int(status.get_attribute("data-done") or 0) == done + 1)
    assert "pasted.jpg" in status.text and "error" not in (status.get_attribute("class") or ""), status.text
    assert [t.split()[0] for _, _, t in legend(browser)] == ["cat", "grass", "sky"]  # a newline separates classes
    # Ctrl+Enter segments again with the classes typed
    box = browser.find_element(By.ID, "classes")
    box.send_keys(Keys.END, ", road")
    box.send_keys(Keys.CONTROL, Keys.ENTER)
    WebDriverWait(browser, 30).until(lambda d: int(status.get_attribute("data-done") or 0) == done + 2)
    assert [t.split()[0] for _, _, t in legend(browser)] == ["cat", "grass", "sky", "road"]
    # the last classes come back on the next visit
    browser.get(app.url + "/")
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "classes").get_attribute("value"))
    assert browser.find_element(By.ID, "classes").get_attribute("value") == "cat\ngrass, sky; cloud, road"
    assert "random weights" in browser.find_element(By.ID, "weights").text
    # a phone: 390 px wide, no sideways scroll, the result scrolled into view
    # (a headless window is at least 500 px wide: the phone's viewport is emulated)
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True})
    status = browser.find_element(By.ID, "status")
    try:
        browser.execute_script("document.getElementById('classes').value = arguments[0]", "x" * 300 + ", sky")
        browser.find_element(By.CSS_SELECTOR, '#samples button[data-sample="coffee.jpg"]').click()
        WebDriverWait(browser, 30).until(lambda d: int(status.get_attribute("data-done") or 0) >= 1
                                         and "coffee.jpg: shown" in status.text)
        width, inner = browser.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
        assert inner == 390 and width <= inner, f"horizontal scroll at 390 px: {width} > {inner}"
        top = browser.execute_script("return document.getElementById('overlay').getBoundingClientRect().top")
        assert 0 <= top < 844 / 2, f"the result is not in view ({top} px from the top)"
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_live_camera_draws_video_with_masks_pauses_when_hidden_and_esc_stops(app, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    open_page(browser, app, CLASSES)
    overlay = browser.find_element(By.ID, "overlay")
    video_frames = lambda d: int(overlay.get_attribute("data-video-frames") or 0)
    before = frames(browser)
    browser.find_element(By.ID, "camera").click()
    fps = browser.find_element(By.ID, "fps")
    WebDriverWait(browser, 60).until(lambda d: frames(d) >= before + 3 and "masks" in fps.text)
    # the video is drawn at its own rate, more often than masks arrive
    assert video_frames(browser) > frames(browser) - before
    rate = float(re.search(r"masks ([\d.]+)/s", fps.text).group(1))
    assert rate > 0
    # the camera picker lists the fake device once the camera runs
    WebDriverWait(browser, 10).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#camera-select option")) > 2)
    # a hidden tab sends no frames
    browser.execute_script("Object.defineProperty(document, 'hidden', {value: true, configurable: true});"
                           "document.dispatchEvent(new Event('visibilitychange'));")
    time.sleep(1.0)  # a frame in flight may still land
    paused = frames(browser)
    time.sleep(1.5)
    assert frames(browser) == paused, "frames were segmented while the tab was hidden"
    browser.execute_script("delete document.hidden; document.dispatchEvent(new Event('visibilitychange'));")
    WebDriverWait(browser, 30).until(lambda d: frames(d) > paused)
    # Esc stops it
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "camera").text == "Live camera")
    status = browser.find_element(By.ID, "status")
    assert status.text == "camera stopped", status.text
    assert len(legend(browser)) == len(CLASSES.split(","))


# ---------------------------------------------------------------- the API


def test_info_names_the_artefact_backend_precision_and_classes(app, tiny_artifact):
    status, data = app.request("GET", "/api/info")
    info = json.loads(data)
    assert status == 200
    assert info["backend"] == "onnxruntime-cpu" and info["precision"] == "fp32"
    assert info["artifact_sha256"] == tiny_artifact.files()["image.onnx"]["sha256"]
    assert info["classes"].startswith("background") and ", cat, " in info["classes"]
    assert info["weights"] == json.loads((tiny_artifact.root / "meta.json").read_text())["weights"]
    assert info["weights"]["source"] == "random-init"


def test_api_labels_are_fsa_segments_png_pixel_for_pixel(app, reference):
    for photo, overlay in zip(photos()[:2], ("1", None)):
        status, out = app.segment((Path(photo).name, Path(photo).read_bytes()), CLASSES,
                                  **({"overlay": overlay} if overlay else {}))
        assert status == 200, out
        want_png, want = reference[CLASSES, Path(photo).stem]
        got_png = base64.b64decode(out["labels"])
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(got_png))), np.asarray(Image.open(io.BytesIO(want_png))))
        assert got_png == want_png  # the very bytes fsa segment writes
        summary = out["summary"]
        assert summary["image"] == Path(photo).name
        assert summary["classes"] == want["classes"] and summary["vocabulary"] == want["vocabulary"]
        assert {"decode", "text", "encode", "forward", "total"} <= set(summary["timings_ms"])
        if overlay:  # NAME_overlay.png only when asked
            assert base64.b64decode(out["overlay"]) == reference["overlay", CLASSES, Path(photo).stem]
        else:
            assert set(out) == {"summary", "labels"}


def test_newlines_separate_classes_as_in_a_class_file(app, reference):
    photo = photos()[0]
    status, out = app.segment((Path(photo).name, Path(photo).read_bytes()), CLASSES.replace(", ", "\r\n"))
    assert status == 200, out
    assert base64.b64decode(out["labels"]) == reference[CLASSES, Path(photo).stem][0]


def test_concurrent_requests_with_different_classes_keep_their_own(app, reference):
    jobs = [(classes, p) for _ in range(3) for classes in (CLASSES, OTHER) for p in photos()[:2]]

    def one(job):
        classes, photo = job
        status, out = app.segment((Path(photo).name, Path(photo).read_bytes()), classes)
        return status, base64.b64decode(out.get("labels", "")), out.get("summary", out)

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one, jobs))
    for (classes, photo), (status, png, summary) in zip(jobs, results):
        assert status == 200, summary
        want_png, want = reference[classes, Path(photo).stem]
        assert png == want_png and summary["vocabulary"] == want["vocabulary"], (classes, photo)


def test_prob_thd_is_applied_and_checked(app):
    photo = photos()[0]
    image = (Path(photo).name, Path(photo).read_bytes())
    status, out = app.segment(image, CLASSES, prob_thd="1")
    assert status == 200 and out["summary"]["prob_thd"] == 1.0
    # every pixel below 1: unlabelled (255, no colour), not the first class
    assert out["summary"]["classes"] == [{"index": 255, "name": "unlabelled", "fraction": 1.0, "color": None}]
    labels = Image.open(io.BytesIO(base64.b64decode(out["labels"])))
    assert labels.mode == "P" and labels.info.get("transparency") == 255 and set(np.unique(labels)) == {255}
    status, out = app.segment(image, CLASSES)  # the next request has the default again
    assert out["summary"]["prob_thd"] == 0.0 and len(out["summary"]["classes"]) >= 2


def png_of(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 30)).save(buf, format="PNG")
    return buf.getvalue()


PHOTO = ("ok.png", png_of(64, 48))
BAD = {  # case -> (image, classes, extra fields, status, words of the error)
    "not an image": (("notes.txt", b"hello"), CLASSES, {}, 400, "notes.txt: not an image"),
    "empty file": (("empty.png", b""), CLASSES, {}, 400, "empty.png"),
    "too many pixels": (("big.png", png_of(1200, 1000)), CLASSES, {}, 400, "above the limit"),
    "empty classes": (PHOTO, " , ; ", {}, 400, "no class names"),
    "too many classes": (PHOTO, ",".join(f"c{i}" for i in range(1025)), {}, 400, "at most 1024"),
    "classes too long": (PHOTO, "x" * 20_001, {}, 400, "characters"),
    "missing image": (None, CLASSES, {}, 400, "field image missing"),
    "missing classes": (PHOTO, None, {}, 400, "field classes missing"),
    "prob_thd nan": (PHOTO, CLASSES, {"prob_thd": "nan"}, 400, "not a finite number"),
    "prob_thd above 1": (PHOTO, CLASSES, {"prob_thd": "1.5"}, 400, "outside [0, 1]"),
    "prob_thd text": (PHOTO, CLASSES, {"prob_thd": "half"}, 400, "not a number"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_requests_get_one_line_errors_and_the_server_keeps_serving(app, case):
    image, classes, extra, want_status, words = BAD[case]
    status, out = app.segment(image, classes, **extra)
    assert status == want_status and set(out) == {"error"}, (status, out)
    assert words in out["error"] and "\n" not in out["error"], out
    status, out = app.segment(PHOTO, "sky, grass")
    assert status == 200 and out["summary"]["image"] == "ok.png"


def test_uploads_over_the_cap_get_413(app):
    from fsa_deploy.runtime.app.web import MAX_UPLOAD

    # announced by Content-Length: refused before the body is read
    status, data = app.request("POST", "/api/segment", b"x" * 10, {
        "Content-Type": "multipart/form-data; boundary=b", "Content-Length": str(MAX_UPLOAD + 1)})
    assert status == 413 and "above the limit" in json.loads(data)["error"]
    # not announced (chunked): counted while it arrives
    body, ctype = multipart({"classes": CLASSES}, {"image": ("huge.png", b"\0" * (MAX_UPLOAD + 1))})
    conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=60)
    try:
        conn.request("POST", "/api/segment", body=iter([body[i:i + (1 << 20)] for i in range(0, len(body), 1 << 20)]),
                     headers={"Content-Type": ctype}, encode_chunked=True)
        r = conn.getresponse()
        assert r.status == 413 and "above the limit" in json.loads(r.read())["error"]
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed while the client still sent: the refusal we want
    finally:
        conn.close()
    status, out = app.segment(PHOTO, "sky")
    assert status == 200
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    status, data = app.request("POST", "/api/segment", b"classes=sky", form)
    assert status == 400 and "multipart" in json.loads(data)["error"]


def test_static_files_and_samples_stay_in_their_folders(app):
    status, page = app.request("GET", "/")
    assert status == 200 and b'id="overlay"' in page
    assert app.request("GET", "/static/app.js")[0] == 200
    for path in ("/static/../__init__.py", "/static/..%2f__init__.py", "/static/%2e%2e/web.py",
                 "/static/..%2f..%2f..%2fpyproject.toml", "/static//etc/passwd", "/samples/..%2f..%2f__init__.py",
                 "/samples/%2fetc%2fpasswd"):
        status, data = app.request("GET", path)
        assert status == 404 and b"def " not in data and b"root:" not in data, path
    # the example photos ship with the package, small, with their licences
    from fsa_deploy.runtime.app.web import EXAMPLES

    status, data = app.request("GET", "/api/samples")
    names = json.loads(data)["samples"]
    assert names == ["astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg"]
    licences = (EXAMPLES / "LICENSES.txt").read_text()
    for name in names:
        status, data = app.request("GET", f"/samples/{name}")
        assert status == 200 and data == (EXAMPLES / name).read_bytes() and len(data) < 64_000
        assert name in licences
        assert max(Image.open(io.BytesIO(data)).size) <= 480


def test_foreign_host_and_cross_site_origin_get_403(app):
    ok = {"Host": f"127.0.0.1:{app.port}"}
    assert app.request("GET", "/api/info", headers=ok)[0] == 200
    for host in (f"localhost:{app.port}", f"[::1]:{app.port}", "app.localhost"):
        assert app.request("GET", "/api/info", headers={"Host": host})[0] == 200, host
    for host in ("evil.example", f"attacker.example:{app.port}", "10.0.0.1"):
        status, data = app.request("GET", "/", headers={"Host": host})
        assert status == 403 and "--allow-host" in json.loads(data)["error"], host
    body, ctype = multipart({"classes": "sky"}, {"image": PHOTO})
    same = {"Content-Type": ctype, "Origin": f"http://127.0.0.1:{app.port}"}
    assert app.request("POST", "/api/segment", body, same)[0] == 200
    for origin in ("http://evil.example", f"http://127.0.0.1:{app.port + 1}", "null"):
        status, data = app.request("POST", "/api/segment", body, {**same, "Origin": origin})
        assert status == 403 and "--allow-origin" in json.loads(data)["error"], origin


def test_allow_host_and_allow_origin_open_the_guard():
    """The options' effect on the check the server runs (runtime.app.web.Guard), in-process: ~0 s."""
    import argparse

    from fsa_deploy.runtime.app import guard_of

    guard = guard_of(argparse.Namespace(allow_host=["Box.lan"], allow_origin=["https://ui.example/"]), "127.0.0.1")
    assert guard.problem({"host": "box.lan:7860"}) is None
    assert guard.problem({"host": "127.0.0.1:7860", "origin": "https://ui.example"}) is None
    assert "Host" in guard.problem({"host": "other.lan"})
    assert "Origin" in guard.problem({"host": "box.lan", "origin": "https://other.example"})
    wild = guard_of(argparse.Namespace(allow_host=[], allow_origin=[]), "0.0.0.0")
    assert wild.problem({"host": "192.168.1.5:7860"}) is None and wild.problem({"host": "rebind.example"})


def test_app_pixel_limit_follows_memory():
    from fsa_deploy.runtime.app import BYTES_PER_PIXEL, MEMORY_SHARE, app_pixel_limit
    from fsa_deploy.runtime.images import MAX_PIXELS

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert app_pixel_limit() == min(MAX_PIXELS, memory // (BYTES_PER_PIXEL * MEMORY_SHARE))


def slow_request(app: App, rid: str = "slow") -> socket.socket:
    """A request that takes ~15 s (1,000 new class names to encode), sent on a raw socket."""
    body, ctype = multipart({"classes": fresh_classes(1000), "request_id": rid}, {"image": PHOTO})
    sock = socket.create_connection(("127.0.0.1", app.port))
    sock.sendall(f"POST /api/segment HTTP/1.1\r\nHost: 127.0.0.1:{app.port}\r\nContent-Type: {ctype}\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return sock


def test_a_request_whose_client_left_stops_and_the_next_does_not_wait(app):
    sock = slow_request(app, "left")
    time.sleep(1.0)  # its text encoding runs, holding the backend; GET /api/progress says how far
    steps = []
    for _ in range(2):
        time.sleep(0.3)
        steps.append(json.loads(app.request("GET", "/api/progress/left")[1]))
    assert [s["stage"] for s in steps] == ["text", "text"] and steps[0]["total"] == 1000 * 80
    assert 0 < steps[0]["done"] < steps[1]["done"] < steps[1]["total"], steps
    sock.close()
    t0 = time.monotonic()
    status, out = app.segment(PHOTO, "sky, grass")
    assert status == 200, out
    assert time.monotonic() - t0 < 6, "the request waited behind abandoned work"
    assert app.request("GET", "/api/progress/left")[0] == 404  # gone with its request


def test_torch_backend_through_the_entry_point_gives_fsa_segments_labels(tiny_artifact, tmp_path, run_here):
    """--backend torch: the PyTorch reference, reached as `fsa segment` reaches it (entry point). The
    page's process is the one under test; `fsa segment`'s labels, its reference, are made in this one."""
    photo = photos()[0]
    proc = run_here("segment", photo, "--artifact", tiny_artifact.root, "--out", tmp_path / "out", "--backend",
                   "torch", "--classes", OTHER, "--no-cache")
    assert proc.returncode == 0, proc.stderr
    a = App(tiny_artifact.root, tmp_path, "--backend", "torch")
    try:
        a.wait_ready(timeout=120)
        info = json.loads(a.request("GET", "/api/info")[1])
        assert info["backend"].startswith("pytorch-cpu"), info
        status, out = a.segment((Path(photo).name, Path(photo).read_bytes()), OTHER)
        assert status == 200, out
        assert base64.b64decode(out["labels"]) == (tmp_path / "out" / f"{Path(photo).stem}.png").read_bytes()
    finally:
        a.proc.send_signal(signal.SIGINT)
        assert a.proc.wait(timeout=30) == 130


# ---------------------------------------------------------------- --server: fsa serve behind the page


def test_server_mode_forwards_to_fsa_serve_with_fsa_segments_labels(tiny_artifact, reference, app, tmp_path):
    from fsa_deploy.errors import FSAError
    from fsa_deploy.runtime.serve.env import find_serve_env

    require("tritonclient.http")
    try:
        find_serve_env()
    except FSAError as e:
        missing(f"no serve environment: {e}")
    http_port, grpc, metrics = free_ports(3)
    serve = subprocess.Popen(
        [sys.executable, "-m", "fsa_deploy", "serve", str(tiny_artifact.root), "--http-port", str(http_port),
         "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--backend", "onnx", "--log-file",
         str(tmp_path / "triton.log"), "--cache-dir", str(tmp_path / "cache")],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    apps = []
    try:
        line = serve.stderr.readline()
        assert "ready" in line, line
        other = tmp_path / "other"  # the same files, another recorded image.onnx hash
        shutil.copytree(tiny_artifact.root, other)
        meta = json.loads((other / "meta.json").read_text())
        meta["files"]["image.onnx"]["sha256"] = "0" * 64
        (other / "meta.json").write_text(json.dumps(meta))
        for folder in (tiny_artifact.root, other):
            a = App(folder, tmp_path / folder.name, "--server", f"127.0.0.1:{http_port}")
            apps.append(a)
            assert "triton 127.0.0.1" in a.wait_ready()
        good, wrong = apps
        assert json.loads(good.request("GET", "/api/info")[1])["backend"] == f"triton 127.0.0.1:{http_port}"
        for photo in photos()[:2]:
            status, out = good.segment((Path(photo).name, Path(photo).read_bytes()), CLASSES)
            assert status == 200, out
            want_png, want = reference[CLASSES, Path(photo).stem]
            assert base64.b64decode(out["labels"]) == want_png
            assert out["summary"]["image"] == Path(photo).name and out["summary"]["classes"] == want["classes"]
        # prob_thd travels as fsa_segment's PROB_THD input: the served labels equal the in-process ones
        for thd in ("0.5", "1"):
            status, served = good.segment(PHOTO, CLASSES, prob_thd=thd)
            status_local, local = app.segment(PHOTO, CLASSES, prob_thd=thd)
            assert status == status_local == 200, (served, local)
            assert served["labels"] == local["labels"] and served["summary"]["prob_thd"] == float(thd)
        status, out = good.segment(("notes.txt", b"hello"), CLASSES)
        assert status == 400 and "notes.txt: not an image" in out["error"]
        status, out = wrong.segment(PHOTO, CLASSES)  # the server runs another artefact than DIR
        assert status == 502 and "0000000000" in out["error"] and "runs artefact" in out["error"]
    finally:
        try:
            for a in apps:
                a.proc.send_signal(signal.SIGINT)
                assert a.proc.wait(timeout=30) == 130
        finally:  # the server is stopped even when an app did not stop as it should
            serve.send_signal(signal.SIGTERM)
            serve.wait(timeout=60)


# ---------------------------------------------------------------- the command line


def test_bad_folder_and_busy_port_are_one_line_errors(tiny_artifact, tmp_path, app):
    proc = run_cli("app", tmp_path / "nothing", "--port", str(free_ports(1)[0]), timeout=60)
    assert_one_line_error(proc, "nothing", "not a folder")
    proc = run_cli("app", tiny_artifact.root, "--port", str(app.port), timeout=60)
    assert_one_line_error(proc, f"--port {app.port}", "cannot listen")
    proc = run_cli("app", tiny_artifact.root, "--port", "70000", timeout=60)
    assert_one_line_error(proc, "--port 70000")
    proc = run_cli("app", tiny_artifact.root, "--backend", "torch", "--server", "127.0.0.1:1", timeout=60)
    assert_one_line_error(proc, "--backend torch", "--server")
    proc = run_cli("app", tiny_artifact.root, "--server", "127.0.0.1:1", "--port", str(free_ports(1)[0]), timeout=60)
    assert_one_line_error(proc, "--server 127.0.0.1:1", "not reachable")


def test_a_non_loopback_host_says_there_is_no_authentication(tiny_artifact, tmp_path):
    port = free_ports(1)[0]
    proc = subprocess.Popen([sys.executable, "-m", "fsa_deploy", "app", str(tiny_artifact.root), "--host", "0.0.0.0",
                             "--port", str(port), "--backend", "onnx"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, FSA_CACHE_DIR=str(tmp_path)))
    try:
        warning = proc.stderr.readline()
        assert "--host 0.0.0.0" in warning and "no authentication" in warning
        assert "serving http://0.0.0.0:" in proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130


def test_default_classes_a_server_cannot_carry_are_refused_at_start(tiny_artifact, tmp_path, monkeypatch):
    """A class name holding ',' would come back from the page (or reach fsa_segment's CLASSES) as two
    classes: refused in one line (fsa app's exit 2), in-process and with --server, before the model
    loads or the server is asked (runtime.text.classes_text, the one `fsa eval --server` uses). ~0.1 s."""
    from fsa_deploy.errors import FSAError
    from fsa_deploy.runtime import text
    from fsa_deploy.runtime.app import service
    from fsa_deploy.runtime.app.service import Local, Remote

    classes = tmp_path / "classes.txt"
    classes.write_text("background\ntv, monitor; screen\ncat\n")
    monkeypatch.setattr(service, "DEFAULT_CLASSES", classes)  # where Local and Remote read it
    for make in (lambda: Local(str(tiny_artifact.root), "onnx"),
                 lambda: Remote(str(tiny_artifact.root), f"127.0.0.1:{free_ports(1)[0]}")):
        with pytest.raises(FSAError, match=r"classes\.txt: class name 'tv, monitor' holds ',' or ';'") as e:
            make()
        assert "\n" not in str(e.value)
    assert text.classes_text(text.Vocabulary.parse("cat; kitten, dog")) == "cat; kitten, dog"


def test_sigint_stops_the_server_with_nothing_left(app):
    """The last test of the module: it stops the module's server."""
    assert app.proc.poll() is None
    sock = slow_request(app)  # work in flight: it stops at its next batch, not in ~15 s
    time.sleep(1.5)
    t0 = time.monotonic()
    os.kill(app.proc.pid, signal.SIGINT)
    assert app.proc.wait(timeout=30) == 130
    assert time.monotonic() - t0 < 10, "fsa app took more than 10 s to stop"
    sock.close()
    assert "interrupted" in app.proc.stderr.read()
    time.sleep(0.2)
    with pytest.raises(ProcessLookupError):
        os.killpg(app.proc.pid, 0)  # no process of its group is left
    with socket.socket() as s:  # nothing listens on the port (SO_REUSEADDR: its closed connections may linger)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", app.port))
        s.listen()
    assert set(app.tmp.iterdir()) == app.tmp_at_start  # no spooled upload left
    shutil.rmtree(app.tmp)


# ---------------------------------------------------------------- the threshold rule, in every verb


def test_under_the_threshold_segment_gives_unlabelled_and_eval_keeps_class_0(tiny_artifact, run_here, tmp_path):
    """`fsa segment`: label 255 (transparent, "unlabelled" in NAME.json) under --prob-thd; `fsa eval`'s
    segmenter: class 0, the official rule. Against the class probabilities of the same run. ~2 s."""
    from fsa_deploy.runtime.images import load_image
    from fsa_deploy.runtime.segmenter import Segmenter
    from fsa_deploy.runtime.text import Vocabulary
    from fsa_deploy.validation.eval import _segment_fn

    photo = photos()[0]
    seg = Segmenter.from_artifact(tiny_artifact.root, "onnx", cache_dir=None, keep_probs=True).set_classes(CLASSES)
    probs = seg.segment(photo).probs
    top = probs.max(axis=0)
    thd = round(float(np.median(top)), 3)  # about half the pixels fall under it
    low = top < thd
    assert 0.2 < low.mean() < 0.8
    proc = run_here("segment", photo, "--artifact", tiny_artifact.root, "--out", tmp_path, "--backend", "onnx",
                    "--classes", CLASSES, "--prob-thd", str(thd), "--no-cache")
    assert proc.returncode == 0, proc.stderr
    stem = Path(photo).stem
    png = Image.open(tmp_path / f"{stem}.png")
    labels = np.asarray(png)
    assert png.info.get("transparency") == 255
    assert (labels[low] == 255).all() and np.array_equal(labels[~low], probs.argmax(axis=0)[~low])
    summary = json.loads((tmp_path / f"{stem}.json").read_text())
    assert summary["classes"][-1] == {"index": 255, "name": "unlabelled", "fraction": round(float(low.mean()), 6),
                                      "color": None}
    overlay = np.asarray(Image.open(tmp_path / f"{stem}_overlay.png").convert("RGB"))[: labels.shape[0]]
    assert np.array_equal(overlay[low], np.asarray(Image.open(photo).convert("RGB"))[low])  # left as it is
    # fsa eval's segmenter on the same backend: class 0 there, the same labels elsewhere
    proto = argparse.Namespace(crop=seg.crop, logit_scale=seg.logit_scale, prob_thd=thd, stride=None,
                               short_side=None, long_side=None, resize="float")  # fsa segment's resize
    official = _segment_fn(seg.backend, seg_artifact(tiny_artifact), seg.artifact_sha256, proto,
                           Vocabulary.parse(CLASSES), argparse.Namespace(batch=16), None)(None, load_image(photo))
    assert (official[low] == 0).all() and np.array_equal(official[~low], labels[~low])


def seg_artifact(tiny_artifact):
    from fsa_deploy.runtime.artifact import Artifact

    return Artifact.load(tiny_artifact.root)


def test_palette_is_bright_distinct_and_keeps_indices():
    from fsa_deploy.runtime.segmenter import label_image, palette

    colours = palette()[:255]
    assert len({tuple(c) for c in colours}) == 255
    assert (colours.astype(float) @ [0.2126, 0.7152, 0.0722]).min() >= 70  # none near black
    labels = np.array([[0, 1, 254], [255, 3, 0]], dtype=np.int32)
    buf = io.BytesIO()
    label_image(labels).save(buf, format="PNG")
    back = Image.open(io.BytesIO(buf.getvalue()))
    assert np.array_equal(np.asarray(back), labels) and back.info["transparency"] == 255
    assert np.array_equal(np.asarray(back.convert("RGBA"))[0, :, :3], colours[[0, 1, 254]])
    assert np.asarray(back.convert("RGBA"))[1, 0, 3] == 0  # unlabelled: transparent

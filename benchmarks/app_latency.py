"""`fsa app` in Chromium, outside the tests: docs/APP.md's screenshot, and the page's
latency against `fsa segment` on the same photos.

    python -m benchmarks.app_latency screenshot --out docs/app.png [--artifact DIR]  (make app-screenshot)
    python -m benchmarks.app_latency bench --json out/bench/app.json [--artifact DIR]   (make bench-app)
    python -m benchmarks.app_latency text --artifact DIR --json out/bench/text.json     (make bench-text)

Without --artifact a tiny artefact (tiny CLIP + tiny DINO, random init, crop 112) is exported to
out/app/tiny (under the current folder) first. The server is `fsa app DIR --backend onnx` on
127.0.0.1 and a free port; the browser is Debian's chromium through its chromedriver (headless).

bench: per photo, `fsa segment`'s per-image work (Segmenter.segment + the three files, in this
process, same backend and classes, warm) against (a) the API round trip POST /api/segment and
(b) the page: from the request to the overlay drawn in Chromium (the page records it). Medians
of --repeats after one warm-up; the server and this process take turns, never both at once.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import platform
import select
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.ports import free_ports
from fsa_deploy.cli import OneLineParser
from fsa_deploy.contract import TOKENIZER_VOCAB
from fsa_deploy.export.tiny import tiny_artifact
from fsa_deploy.ranges import add_ranged
from fsa_deploy.runtime import gate
from fsa_deploy.runtime.artifact import Artifact
from fsa_deploy.runtime.backends.onnxrt import OnnxRuntimeBackend
from fsa_deploy.runtime.images import sample_photos
from fsa_deploy.runtime.segmenter import Segmenter
from fsa_deploy.runtime.text import Vocabulary, cached_classifier, classifier, padded

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars")
SHOT_CLASSES = "cat; kitten, blanket, floor, wall, sofa"
BENCH_CLASSES = "sky, person; astronaut, grass, cat; kitten, road, building, coffee cup, rocket, motorcycle"


TINY = Path("out") / "app" / "tiny"  # relative: the page shows the path as given


class AppServer:
    def __init__(self, artifact: Path) -> None:
        (self.port,) = free_ports(1)
        self.proc = subprocess.Popen([sys.executable, "-m", "fsa_deploy", "app", str(artifact), "--port",
                                      str(self.port), "--backend", "onnx"], stdout=subprocess.PIPE,
                                     text=True, start_new_session=True)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 300)
        line = self.proc.stdout.readline() if ready else ""
        if "serving" not in line:
            self.stop()
            raise SystemExit(f"fsa app did not start: {line!r}")
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=60)

    def segment(self, path: str, classes: str) -> tuple[float, dict]:
        """One POST /api/segment: (round trip ms, the answer)."""
        boundary = uuid.uuid4().hex
        body = (f'--{boundary}\r\nContent-Disposition: form-data; name="classes"\r\n\r\n{classes}\r\n'
                f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{Path(path).name}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n").encode() + Path(path).read_bytes() + \
            f"\r\n--{boundary}--\r\n".encode()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        t0 = time.perf_counter()
        conn.request("POST", "/api/segment", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        r = conn.getresponse()
        data = r.read()
        ms = 1e3 * (time.perf_counter() - t0)
        conn.close()
        if r.status != 200:
            raise SystemExit(f"{path}: HTTP {r.status} {data[:300]!r}")
        return ms, json.loads(data)


def browser(width: int = 1280, height: int = 900):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--window-size={width},{height}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def open_page(driver, server: AppServer, classes: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(server.url + "/")
    box = driver.find_element(By.ID, "classes")
    WebDriverWait(driver, 60).until(lambda d: box.get_attribute("value"))
    box.clear()
    box.send_keys(classes)


def page_segment(driver, path: str) -> tuple[float, float]:
    """Choose `path`, click Segment, wait for the overlay: (the page's request-to-overlay ms, the
    segmentation's own ms in the server, from the summary's timings)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    overlay, status = driver.find_element(By.ID, "overlay"), driver.find_element(By.ID, "status")
    before = int(status.get_attribute("data-done") or 0)
    chooser = driver.find_element(By.ID, "image")
    driver.execute_script("arguments[0].value = ''", chooser)  # chromedriver adds to a `multiple` input's files
    chooser.send_keys(path)
    driver.find_element(By.ID, "segment").click()
    WebDriverWait(driver, 600, poll_frequency=0.05).until(
        lambda d: int(status.get_attribute("data-done") or 0) == before + 1)
    if "error" in (status.get_attribute("class") or ""):
        raise SystemExit(f"{path}: {status.text}")
    return float(overlay.get_attribute("data-shown-ms")), float(overlay.get_attribute("data-server-ms"))


def photo(name: str) -> str:
    found = [p for p in sample_photos() if Path(p).name == name]
    if not found:
        raise SystemExit(f"no scikit-image sample photo {name}")
    return found[0]


def screenshot(args: argparse.Namespace) -> None:
    art = Path(args.artifact) if args.artifact else tiny_artifact(TINY)
    server = AppServer(art)
    driver = browser()
    try:
        server.segment(photo(args.photo), args.classes)  # warm: the class embeddings, so the timings are a photo's
        open_page(driver, server, args.classes)
        page_segment(driver, photo(args.photo))
        out = Path(args.out)
        gate.mkdir(out.parent)
        gate.write_bytes(out, driver.get_screenshot_as_png())  # a picture for the docs: never half-written
        print(out)
    finally:
        driver.quit()
        server.stop()


def bench(args: argparse.Namespace) -> None:
    art = Path(args.artifact) if args.artifact else tiny_artifact(TINY)
    photos = [photo(n) for n in args.photos.split(",")]
    rows = []
    seg = Segmenter.from_artifact(art, "onnx", cache_dir=None).set_classes(args.classes)
    server = AppServer(art)
    driver = browser()
    try:
        open_page(driver, server, args.classes)
        with gate.temp_dir() as tmp:
            for p in photos:
                # per round: (whole ms, the segmentation's own ms as its summary's timings say)
                cli: list[tuple[float, float]] = []
                api: list[tuple[float, float]] = []
                page: list[tuple[float, float]] = []
                for i in range(args.repeats + 1):  # the first round warms each path up
                    t0 = time.perf_counter()
                    result = seg.segment(p)
                    result.write(tmp, "x")
                    cli.append((1e3 * (time.perf_counter() - t0), result.timings["total"]))
                    ms, answer = server.segment(p, args.classes)
                    api.append((ms, answer["summary"]["timings_ms"]["total"]))
                    page.append(page_segment(driver, p))
                    if i == 0:  # same labels as fsa segment's, or the figures mean nothing
                        want = (Path(tmp) / "x.png").read_bytes()
                        assert base64.b64decode(answer["labels"]) == want, p
                cli, api, page = cli[1:], api[1:], page[1:]
                h, w = result.size
                row: dict[str, Any] = {"photo": Path(p).name, "size": f"{w}x{h}"}
                for key, runs in (("fsa_segment", cli), ("api", api), ("page", page)):
                    row[f"{key}_ms"] = statistics.median(r[0] for r in runs)
                    row[f"{key}_segmentation_ms"] = statistics.median(r[1] for r in runs)
                    # the time outside the segmentation: files, transport, browser (robust to the
                    # load of a shared machine, which falls mostly on the long compute)
                    row[f"{key}_outside_ms"] = statistics.median(r[0] - r[1] for r in runs)
                for key in ("api", "page"):  # the overhead per image against fsa segment
                    row[f"{key}_overhead_ms"] = row[f"{key}_outside_ms"] - row["fsa_segment_outside_ms"]
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        driver.quit()
        server.stop()
    report = {"artifact": str(art), "classes": args.classes, "repeats": args.repeats, "rows": rows,
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "python": platform.python_version()}
    out = Path(args.json)
    gate.mkdir(out.parent)
    gate.write_text(out, json.dumps(report, indent=2) + "\n")
    print(markdown(rows))


TEXT_CLASSES = ("aeroplane, bicycle, bird, boat, bottle, bus, car, cat, chair, cow, dining table, dog, horse, "
                "motorbike, person, potted plant, sheep, sofa, train, tv monitor")  # VOC's 20 objects
TEXT_ADDED = "kite"


def text_bench(args: argparse.Namespace) -> None:
    """A new class list's text encoding in the app, before and after: a cold list of 20 classes, then
    the same list with one class added. Before: every prompt at 77 tokens and the cache keyed by the
    whole list (the added class makes a new list: all of it encoded again). After: prompts at the
    batch's longest and one cache entry per class (the added class alone is encoded). One process,
    one backend (ONNX Runtime CPU, text.onnx), the four measurements in turn."""
    art = Artifact.load(args.artifact)
    backend = OnnxRuntimeBackend(art, providers=["CPUExecutionProvider"])
    vocab_file, templates = art.path(TOKENIZER_VOCAB), art.info.templates
    cold = Vocabulary.parse(args.classes).queries
    added = [*cold, args.added]
    # session loaded and its arena grown (a batch of 64 at 77 tokens), not timed
    classifier(lambda t: backend.encode_text(padded(t)), ["warm-up"], templates[:64], vocab_file=vocab_file)
    prompts: list[int] = []

    def counted(encode):
        def run(tokens):
            prompts.append(len(tokens))
            return encode(tokens)
        return run

    def timed(what: str, fn) -> dict[str, Any]:
        prompts.clear()
        t0 = time.perf_counter()
        fn()
        row = {"case": what, "ms": 1e3 * (time.perf_counter() - t0), "prompts": sum(prompts)}
        print(json.dumps(row), flush=True)
        return row

    at77 = counted(lambda t: backend.encode_text(padded(t)))
    trim = counted(backend.encode_text)

    with gate.temp_dir() as cache:
        rows = [timed("before: cold 20 classes", lambda: classifier(at77, cold, templates, vocab_file=vocab_file)),
                timed("before: add one class", lambda: classifier(at77, added, templates, vocab_file=vocab_file)),
                timed("after: cold 20 classes",
                      lambda: cached_classifier(cache, "bench", trim, cold, templates, vocab_file)),
                timed("after: add one class",
                      lambda: cached_classifier(cache, "bench", trim, added, templates, vocab_file))]
    base = rows[0]["ms"]
    for r in rows:
        r["vs_before_cold"] = r["ms"] / base
    report = {"artifact": str(art.root), "model": art.info.model, "classes": args.classes,
              "added": args.added, "templates": len(templates), "rows": rows,
              "add_one_vs_cold_after": rows[3]["ms"] / rows[2]["ms"],
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "python": platform.python_version()}
    out = Path(args.json)
    gate.mkdir(out.parent)
    gate.write_text(out, json.dumps(report, indent=2) + "\n")
    print("| case | prompts encoded | ms | vs before, cold 20 |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['prompts']} | {r['ms']:.0f} | {r['vs_before_cold']:.3f} |")
    print(f"after: adding one class costs {100 * report['add_one_vs_cold_after']:.1f}% of a cold 20-class list")


def markdown(rows: list[dict]) -> str:
    """Medians in ms per photo: whole, and outside the segmentation; the overheads against fsa segment."""
    lines = ["| photo | size | fsa segment | API round trip | page: request to overlay | outside the segmentation: "
             "fsa segment / API / page | API overhead | page overhead |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        whole = [f"{r[k + '_ms']:.0f}" for k in ("fsa_segment", "api", "page")]
        outside = " / ".join(f"{r[k + '_outside_ms']:.0f}" for k in ("fsa_segment", "api", "page"))
        over = [f"{r[k + '_overhead_ms']:+.0f}" for k in ("api", "page")]
        lines.append(f"| {r['photo']} | {r['size']} | {' | '.join(whole)} | {outside} | {' | '.join(over)} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True, parser_class=OneLineParser)
    s = sub.add_parser("screenshot")
    s.add_argument("--out", default="docs/app.png")
    s.add_argument("--artifact", default=None)
    s.add_argument("--photo", default="chelsea.png")
    s.add_argument("--classes", default=SHOT_CLASSES)
    b = sub.add_parser("bench")
    b.add_argument("--json", default="out/bench/app.json")
    b.add_argument("--artifact", default=None)
    b.add_argument("--photos", default="astronaut.png,chelsea.png,coffee.png,rocket.jpg")
    b.add_argument("--classes", default=BENCH_CLASSES)
    add_ranged(b, "--repeats", "timed runs per photo (default 5)", default=5)
    t = sub.add_parser("text")
    t.add_argument("--artifact", required=True)
    t.add_argument("--json", default="out/bench/text.json")
    t.add_argument("--classes", default=TEXT_CLASSES)
    t.add_argument("--added", default=TEXT_ADDED)
    return p


def main() -> None:
    args = build_parser().parse_args()
    {"screenshot": screenshot, "bench": bench, "text": text_bench}[args.what](args)


if __name__ == "__main__":
    main()

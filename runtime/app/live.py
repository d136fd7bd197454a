"""`fsa app DIR --source SRC`: a camera, a video file or a stream on the server's side, annotated
and shown to every browser that opens the page (GET /api/stream: MJPEG).

Two threads: the reader keeps only the newest frame (a frame the worker had no time for is
dropped and counted, never queued); the worker runs the page's own service (runtime.app.service:
the in-process Segmenter or --server) on it with the current classes and keeps the newest
annotated JPEG. Every client of /api/stream gets the newest JPEG when a new one is ready, so a
slow browser skips frames too. A file plays at its own rate and loops; a camera or a stream is
reopened when it stalls.

`close()` stops both threads and joins them before the process exits: a daemon thread still inside
FFmpeg's decoder or ONNX Runtime's `run` while the interpreter finalises aborts the process (C++
std::terminate, SIGABRT) instead of the 130 / 143 exit of a signal.
"""

from __future__ import annotations

import io
import sys
import threading
import time
from collections import deque
from typing import Any

import numpy as np
from PIL import Image

from fsa_deploy.errors import FSAError
from fsa_deploy.runtime.app.service import Job, parse_classes
from fsa_deploy.runtime.video.sources import JOIN_MARGIN_S, Source, classify

JPEG_QUALITY = 80
REOPEN_S = 2.0  # a stalled camera or stream is opened again after this pause
BOUNDARY = "fsaframe"


class LiveSource:
    """The server-side source of `fsa app --source`, its newest annotated frame and its figures."""

    def __init__(self, service: Any, text: str, classes: str, stream_timeout: float = 10.0) -> None:
        spec = classify(text)
        if spec is None:
            raise FSAError(f"--source {text}: not a video file, image sequence, camera or stream")
        self.service, self.spec, self.stream_timeout = service, spec, stream_timeout
        self.source = Source(spec, stream_timeout)  # a bad source is the app's one-line error, before serving
        parse_classes(classes)
        self.classes = classes
        self.prob_thd: float | None = None
        self.cond = threading.Condition()
        self.frame: tuple[float, np.ndarray] | None = None  # (capture time, RGB) waiting for the worker
        self.jpeg: bytes | None = None
        self.seq = 0
        self.read = self.dropped = self.done = 0
        self.latency_ms: float | None = None
        self.error: str | None = None
        self.done_times: deque[float] = deque(maxlen=30)
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self._reader, name="fsa-live-reader", daemon=True),
                        threading.Thread(target=self._worker, name="fsa-live-worker", daemon=True)]

    def start(self) -> LiveSource:
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> None:
        """Ask both threads to stop (at the next frame, or the next crop batch of a model run); returns
        at once, so a signal handler may call it."""
        self.stopped.set()
        with self.cond:
            self.cond.notify_all()

    def close(self) -> None:
        """stop(), then wait for both threads: the reader closes its decoder itself (a codec context is
        not freed under a thread decoding with it), the worker leaves the model run it is in. Bounded by
        the source's own read timeout; a thread that still runs after it is reported, not waited for."""
        self.stop()
        deadline = time.monotonic() + self.stream_timeout + JOIN_MARGIN_S
        for t in self.threads:
            if t.is_alive() and t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))
        if late := [t.name for t in self.threads if t.is_alive()]:
            print(f"fsa app: --source: {', '.join(late)} did not stop in time", file=sys.stderr, flush=True)

    def set_classes(self, classes: str, prob_thd: float | None) -> None:
        parse_classes(classes)  # FSAError (HTTP 400) before it replaces the running classes
        with self.cond:
            self.classes, self.prob_thd = classes, prob_thd

    # ---------------------------------------------------------------- threads

    def _frames(self):
        """(time, RGB) forever: a file at its own rate, looping; a live source reopened after a stall."""
        source: Source | None = self.source
        while not self.stopped.is_set():
            if source is None:  # opened again after the end of a file, a stall or a failed reopen
                try:
                    source = Source(self.spec, self.stream_timeout)
                except FSAError as e:
                    self.error = str(e)
                    self.stopped.wait(REOPEN_S)
                    continue
            t0, first = time.monotonic(), None
            frames = source.frames()
            try:
                for t, rgb in frames:
                    if self.stopped.is_set():
                        break
                    if not source.live:  # play a file at its rate
                        first = t if first is None else first
                        if self.stopped.wait(max(0.0, (t - first) - (time.monotonic() - t0))):
                            break
                    yield rgb
            finally:  # the decoder is closed in this thread, the one that decodes with it
                frames.close()
                source.close()
            if source.error:
                self.error = source.error
            if source.live:
                self.stopped.wait(REOPEN_S)
            source = None

    def _reader(self) -> None:
        for rgb in self._frames():
            with self.cond:
                if self.frame is not None:
                    self.dropped += 1  # the worker had no time for it: the newest frame wins
                self.frame = (time.monotonic(), rgb)
                self.read += 1
                self.cond.notify_all()

    def _worker(self) -> None:
        while not self.stopped.is_set():
            with self.cond:
                while self.frame is None and not self.stopped.is_set():
                    self.cond.wait(0.5)
                if self.stopped.is_set() or self.frame is None:
                    return
                (captured, rgb), self.frame = self.frame, None
                classes, prob = self.classes, self.prob_thd
            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
            try:
                job = Job(buf.getvalue(), f"{self.spec.name}.png", classes, prob, overlay=True, stop=self.stopped)
                answer = self.service.segment(job)
            except FSAError as e:
                self.error = str(e)
                continue
            except Exception as e:  # noqa: BLE001 - stopped at shutdown, or a backend error: shown, not fatal
                if self.stopped.is_set():
                    return
                self.error = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
                continue
            out = io.BytesIO()
            Image.open(io.BytesIO(answer.overlay_png)).convert("RGB").save(out, format="JPEG", quality=JPEG_QUALITY)
            now = time.monotonic()
            with self.cond:
                self.jpeg, self.seq = out.getvalue(), self.seq + 1
                self.done += 1
                self.latency_ms = 1e3 * (now - captured)
                self.done_times.append(now)
                self.error = None
                self.cond.notify_all()

    # ---------------------------------------------------------------- what the routes read

    def stats(self) -> dict[str, Any]:
        with self.cond:
            times = list(self.done_times)
            fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else None
            return {"source": self.spec.text, "kind": self.spec.kind, "live": self.source.live,
                    "classes": self.classes, "prob_thd": self.prob_thd, "frames_read": self.read,
                    "frames_done": self.done, "frames_dropped": self.dropped,
                    "frames_per_s": None if fps is None else round(fps, 2),
                    "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 1), "error": self.error}

    def wait_newer(self, seq: int, timeout: float) -> tuple[int, bytes | None]:
        """The newest JPEG once it is newer than `seq` (or after `timeout`): (its number, its bytes)."""
        with self.cond:
            self.cond.wait_for(lambda: self.seq > seq or self.stopped.is_set(), timeout)
            return self.seq, self.jpeg


def routes(live: LiveSource | None) -> list:
    """GET /api/stream (MJPEG), GET /api/stream/info, POST /api/stream/classes (JSON {classes, prob_thd})."""
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    from fsa_deploy.runtime.app.web import BadRequest, error, parse_prob_thd

    def absent() -> Response:
        return error("no --source: start `fsa app DIR --source SRC` to stream a camera, file or stream", 404)

    async def stream(request: Request) -> Response:
        if live is None:
            return absent()

        async def parts():
            seq = 0
            while not live.stopped.is_set():
                seq, jpeg = await run_in_threadpool(live.wait_newer, seq, 1.0)
                if await request.is_disconnected():
                    return
                if jpeg is not None:
                    yield (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                           ).encode() + jpeg + b"\r\n"

        return StreamingResponse(parts(), media_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}",
                                 headers={"Cache-Control": "no-cache, no-store"})

    async def info(request: Request) -> Response:
        return absent() if live is None else JSONResponse(live.stats())

    async def classes(request: Request) -> Response:
        if live is None:
            return absent()
        try:
            body = await request.json()
            if not isinstance(body, dict) or not isinstance(body.get("classes"), str):
                raise BadRequest('expected JSON {"classes": "cat, grass, sky", "prob_thd": optional}')
            prob = body.get("prob_thd")
            live.set_classes(body["classes"], parse_prob_thd(None if prob is None else str(prob)))
        except BadRequest as e:
            return error(str(e), e.status)
        except FSAError as e:
            return error(str(e), 400)
        except ValueError as e:
            return error(f"expected a JSON body ({e})", 400)
        return JSONResponse(live.stats())

    return [Route("/api/stream", stream), Route("/api/stream/info", info),
            Route("/api/stream/classes", classes, methods=["POST"])]

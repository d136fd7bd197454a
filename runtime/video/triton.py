"""A video source fed to Triton's `fsa_segment` (`fsa serve` or NVIDIA's container) at a fixed
rate, with the label maps back in the order of the frames.

`fsa serve` takes one image per request (images in, labels out), so a stream is a sequence of
requests: one frame every 1/rate seconds (the wall clock paces them), each a lossless PNG of
the decoded frame, at most `in_flight` requests outstanding. Answers are collected in the order
the requests were sent (a FIFO of pending requests), whatever order the server finishes them in.
A frame that falls due while the window is full is dropped and counted: a live feed never builds
a backlog. Needs tritonclient (the `serve` extra) and PyAV for the source.

    for frame in stream_to_triton("cam.mp4", "127.0.0.1:8000", "cat, grass, sky", rate=10):
        frame.index, frame.time, frame.labels  # uint16 [H, W], as `fsa segment` on that frame
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from fsa_deploy.contract import OUT_LABELS, OUT_SUMMARY, SEGMENT_MODEL
from fsa_deploy.errors import FSAError
from fsa_deploy.runtime.serve.client import segment_inputs, server_address
from fsa_deploy.runtime.video.sources import Source, classify


@dataclass
class StreamedFrame:
    """One answered frame: its index among the frames sent, the source timestamp, the labels, the
    summary (fsa segment's NAME.json) and the round trip in ms."""

    index: int
    time: float
    labels: np.ndarray
    summary: dict[str, Any]
    latency_ms: float


@dataclass
class StreamStats:
    sent: int = 0
    dropped: int = 0
    answered: int = 0
    order: list[int] = field(default_factory=list)


def png_of(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def stream_to_triton(source: str, url: str, classes: str, rate: float, in_flight: int = 4, limit: int | None = None,
                     stats: StreamStats | None = None, timeout_s: float = 120.0) -> Iterator[StreamedFrame]:
    """Frames of `source` (any `fsa segment` video source) sent to `url` at `rate` frames/s, at most
    `in_flight` outstanding; the answers in frame order. A bad reply raises FSAError naming the frame."""
    import tritonclient.http as th

    spec = classify(source)
    if spec is None:
        raise FSAError(f"{source}: not a video source")
    stats = stats if stats is not None else StreamStats()
    local = threading.local()

    def infer(png: bytes) -> Any:  # one HTTP client per worker thread: a client is not shared
        if not hasattr(local, "client"):
            local.client = th.InferenceServerClient(server_address(url), network_timeout=timeout_s)
        return local.client.infer(SEGMENT_MODEL, segment_inputs(png, classes))

    def answer() -> StreamedFrame:
        index, t, sent_at, future = pending.popleft()
        try:
            reply = future.result(timeout=timeout_s)
        except Exception as e:  # the server's or the connection's error, as one line
            raise FSAError(f"{source}: frame {index}: {type(e).__name__}: {str(e).splitlines()[0][:160]}") from e
        stats.answered += 1
        stats.order.append(index)
        summary = json.loads(reply.as_numpy(OUT_SUMMARY).reshape(-1)[0])
        return StreamedFrame(index, t, reply.as_numpy(OUT_LABELS), summary, 1e3 * (time.monotonic() - sent_at))

    pending: deque[tuple[int, float, float, Future]] = deque()
    src = Source(spec)
    period, t0 = 1.0 / rate, time.monotonic()
    try:
        with ThreadPoolExecutor(in_flight, thread_name_prefix="fsa-triton-stream") as pool:
            for n, (t, rgb) in enumerate(src.frames()):
                if limit is not None and n >= limit:
                    break
                while pending and pending[0][3].done():  # what is back, in order
                    yield answer()
                time.sleep(max(0.0, t0 + n * period - time.monotonic()))  # the fixed rate
                while pending and pending[0][3].done():
                    yield answer()
                if len(pending) >= in_flight:
                    stats.dropped += 1  # the window is full: a fixed-rate feed drops, never queues
                    continue
                assert rgb is not None  # frames before a start come as None; this source starts at 0
                pending.append((n, t, time.monotonic(), pool.submit(infer, png_of(rgb))))
                stats.sent += 1
            while pending:
                yield answer()
    finally:
        src.close()

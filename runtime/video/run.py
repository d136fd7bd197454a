"""A video source through `fsa segment`'s Segmenter: a four-stage pipeline with bounded queues.

    reader (decode + resize + windows) -> forward (this thread) -> post (stitch + labels)
    -> writer (overlay, H.264, labels, NAME.json)

Each queue holds at most QUEUE frames, so memory is flat in the video's length; a fast file
source waits for the model, a live source (camera, stream) drops its oldest queued frame instead
and counts it. Each frame goes through the very functions `fsa segment` runs on an image
(runtime.pipeline's resize, windows, Canvas and postprocess), so frame k's labels equal
`fsa segment` on frame k saved as a PNG. Frames of few crops share one backend call with their
neighbours (up to --batch crops); a frame whose own call would hold a single crop runs alone,
as `fsa segment` runs it (ONNX Runtime's CPU kernels at batch 1 differ from batch >= 2 in the
last bits, measured; at batch >= 2 a crop's logits do not depend on its neighbours).
"""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fsa_deploy import interrupts
from fsa_deploy.errors import FSAError, escape
from fsa_deploy.runtime.pipeline import Canvas, batches, crops_of, postprocess, resize_image
from fsa_deploy.runtime.video.sink import Sink
from fsa_deploy.runtime.video.sources import JOIN_MARGIN_S, SEQUENCE_FPS, Selection, Source, SourceSpec, require_av

QUEUE = 4  # frames per queue between two stages
_END = object()


@dataclass
class VideoOptions:
    """Frame selection and the outputs' form (the CLI's video options)."""

    selection: Selection = field(default_factory=Selection)
    stream_timeout: float = 10.0
    sequence_fps: float = SEQUENCE_FPS
    frames_folder: bool = False  # --frames: NAME/000000.png ... instead of NAME.labels.npz
    progress: bool = True


@dataclass
class Job:
    """One frame on its way through the stages."""

    index: int
    number: int  # decoded frame number in the source (after --start)
    time: float
    rgb: np.ndarray  # uint8 [H, W, 3]
    chw: np.ndarray  # uint8 [3, H, W] contiguous, as runtime.images.load_image gives
    crops: np.ndarray
    wins: list
    size: tuple[int, int]  # the resized image's
    timings: dict[str, float]
    logits: np.ndarray | None = None
    labels: np.ndarray | None = None


@dataclass
class Counters:
    read: int = 0
    dropped: int = 0
    done: int = 0


class Stage(threading.Thread):
    """A daemon thread around `work`; its exception is kept for the main thread."""

    def __init__(self, name: str, work: Callable[[], None]) -> None:
        super().__init__(name=f"fsa-video-{name}", daemon=True)
        self.work = work
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.work()
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, which raises it
            self.error = e


def put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Blocking put that gives up when `stop` is set (False then)."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def put_latest(q: queue.Queue, item: Any, counters: Counters) -> None:
    """A live source's put: the oldest queued frame makes room (counted as dropped)."""
    while True:
        try:
            q.put_nowait(item)
            return
        except queue.Full:
            with contextlib.suppress(queue.Empty):
                if q.get_nowait() is not _END:
                    counters.dropped += 1


def single_call(n: int, batch: int) -> bool:
    """Whether `fsa segment` would run one of this frame's backend calls with a single crop."""
    return n % batch == 1 or batch == 1


class VideoRun:
    """One source through one Segmenter into `out` (outputs.py's files)."""

    def __init__(self, seg: Any, spec: SourceSpec, out: Path, options: VideoOptions) -> None:
        self.seg, self.spec, self.out, self.options = seg, spec, out, options
        self.counters = Counters()
        self.stop = threading.Event()
        self.error: str | None = None  # the line that ended the source early
        self.t_start = 0.0

    # ---------------------------------------------------------------- stages

    def _reader(self, source: Source, q: queue.Queue) -> None:
        geo, live = self.seg.geometry, source.live
        try:
            frames = self.options.selection.filter(source.frames())
            while not self.stop.is_set():
                t0 = time.perf_counter()
                item = next(frames, None)
                if item is None:
                    break
                number, t, rgb = item
                t1 = time.perf_counter()
                chw = np.ascontiguousarray(rgb.transpose(2, 0, 1))
                resized = resize_image(chw, geo)
                crops, wins = crops_of(resized, geo)
                t2 = time.perf_counter()
                job = Job(self.counters.read, number, t, rgb, chw, crops, wins, resized.shape[-2:],
                          {"decode": 1e3 * (t1 - t0), "preprocess": 1e3 * (t2 - t1)})
                self.counters.read += 1
                if live:
                    put_latest(q, job, self.counters)
                elif not put(q, job, self.stop):
                    break
            self.error = source.error
        finally:
            source.close()
            if live:
                put_latest(q, _END, Counters())
            else:
                put(q, _END, self.stop)

    def _forward(self, q_in: queue.Queue, q_out: queue.Queue, signals: list[int]) -> None:
        """This thread: backend calls, frames of few crops packed into one."""
        batch = self.seg.batch
        carry: Any = None
        while True:
            job = carry if carry is not None else self._get(q_in, signals)
            carry = None
            if job is _END or job is None:
                break
            group = [job]
            n = len(job.wins)
            if n <= batch and not single_call(n, batch):
                while n < batch:
                    try:
                        nxt = q_in.get_nowait()
                    except queue.Empty:
                        break
                    m = len(nxt.wins) if nxt is not _END else 0
                    if nxt is _END or single_call(m, batch) or n + m > batch:
                        carry = nxt
                        break
                    group.append(nxt)
                    n += m
            self._run_group(group, batch)
            for j in group:
                self._put(q_out, j)
            if signals:
                self.stop.set()
                break
        self._put(q_out, _END)

    def _put(self, q: queue.Queue, item: Any) -> None:
        """Downstream put: waits while the next stage works, gives up if a stage failed."""
        while not any(s.error for s in self.stages):
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _get(self, q: queue.Queue, signals: list[int]) -> Any:
        while True:
            if signals:
                self.stop.set()
                return None
            for stage in self.stages:
                if stage.error is not None:
                    return None
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                continue

    def _run_group(self, group: list[Job], batch: int) -> None:
        t0 = time.perf_counter()
        if len(group) == 1:
            job = group[0]
            parts = [self.seg._forward(job.crops[sl]) for sl in batches(len(job.wins), batch)]
            job.logits = np.concatenate([np.asarray(p, dtype=np.float32) for p in parts])
        else:
            logits = np.asarray(self.seg._forward(np.concatenate([j.crops for j in group])), dtype=np.float32)
            at = 0
            for j in group:
                j.logits, at = logits[at : at + len(j.wins)], at + len(j.wins)
        ms = 1e3 * (time.perf_counter() - t0)
        for j in group:
            j.timings["forward"] = ms / len(group)
            j.timings["batched_frames"] = len(group)
            j.crops = np.empty(0, np.float32)  # freed as soon as they ran

    def _post(self, q_in: queue.Queue, q_out: queue.Queue) -> None:
        seg = self.seg
        while (job := q_in.get()) is not _END:
            t0 = time.perf_counter()
            canvas = Canvas(job.size, seg.geometry.crop)
            canvas.add(job.logits, job.wins)
            mean = canvas.mean()
            if not np.isfinite(mean).all():
                bad = int((~np.isfinite(mean)).sum())
                raise FSAError(f"{self.spec.text}: frame {job.index}: the {seg.backend.name} backend gave {bad} NaN "
                               "or infinite logits (a broken engine or weights; `fsa validate` checks it)")
            job.labels = postprocess(mean, job.rgb.shape[:2], seg.vocabulary.query_class, seg.logit_scale,
                                     seg.prob_thd).labels
            job.logits = None
            job.timings["postprocess"] = 1e3 * (time.perf_counter() - t0)
            q_out.put(job)
        q_out.put(_END)

    def _writer(self, q_in: queue.Queue, sink: Any, bar: Any) -> None:
        while (job := q_in.get()) is not _END:
            sink.add(job)
            self.counters.done += 1
            if bar is not None:
                bar.update(1)
                if self.counters.dropped:
                    bar.set_postfix(dropped=self.counters.dropped, refresh=False)

    # ---------------------------------------------------------------- the run

    def run(self) -> dict[str, Any]:
        """Segment every selected frame; the summary written to NAME.json. FSAError (nothing
        written) when no frame could be read."""
        require_av()  # the overlay's encoder, for an image sequence too: one line before any work
        o = self.options
        source = Source(self.spec, o.stream_timeout, o.sequence_fps, o.selection.start)
        self.stages: list[Stage] = []
        q_read: queue.Queue = queue.Queue(QUEUE)
        q_post: queue.Queue = queue.Queue(QUEUE)
        q_write: queue.Queue = queue.Queue(QUEUE)
        bar = self._bar(source)
        self.t_start = time.perf_counter()
        sink_of = Sink(self.seg, self.spec, self.out, source.info, o.frames_folder)
        with interrupts.deferred() as signals, sink_of as sink:
            self.stages = [Stage("reader", lambda: self._reader(source, q_read)),
                           Stage("post", lambda: self._post(q_post, q_write)),
                           Stage("writer", lambda: self._writer(q_write, sink, bar))]
            for s in self.stages:
                s.start()
            try:
                self._forward(q_read, q_post, signals)
                for s in self.stages[1:]:
                    while s.is_alive():
                        s.join(0.1)
                        if any(x.error for x in self.stages):
                            break
            finally:
                self.stop.set()
                # the reader leaves its decoder at the next frame and closes it itself: joined, so no
                # FFmpeg thread outlives the run (one still decoding at interpreter exit aborts the process)
                self.stages[0].join(o.stream_timeout + JOIN_MARGIN_S)
                if bar is not None:
                    bar.close()
            for s in self.stages:
                if s.error is not None:
                    raise s.error
            if self.counters.done == 0:
                why = self.error or "no frame in the selected range (--start, --duration)"
                raise FSAError(f"{escape(self.spec.text)}: nothing could be read: {why}")
            elapsed = time.perf_counter() - self.t_start
            tail = {"frames_read": self.counters.read, "frames_dropped": self.counters.dropped,
                    "stopped_by": self.error or ("signal" if signals else None),
                    "elapsed_s": round(elapsed, 3), "frames_per_s": round(self.counters.done / max(elapsed, 1e-9), 3)}
            sink.finish(**tail)
            return sink.summary(**tail)

    def _bar(self, source: Source) -> Any:
        if not self.options.progress:
            return None
        try:
            from tqdm import tqdm
        except ImportError:
            return None
        return tqdm(total=None if source.live else self._expected(source), unit="frame", file=sys.stderr,
                    desc=self.spec.name, disable=None, smoothing=0.1)

    def _expected(self, source: Source) -> int | None:
        n = source.info.frames
        s = self.options.selection
        if n is None:
            return s.limit
        n = max(0, n - int(s.start * source.info.fps))
        if s.duration is not None:
            n = min(n, int(np.ceil(s.duration * source.info.fps)))
        n = -(-n // s.every)
        return min(n, s.limit) if s.limit else n

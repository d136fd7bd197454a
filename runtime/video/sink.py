"""The writer stage's end: one source's outputs (outputs.py) opened together, published together.

Entering opens the temporaries (runtime.gate.atomic); `add` takes each finished frame;
`finish` closes the encoder and writes the npz; leaving without an error renames them into
place, leaving with one removes them (and the NAME.json checkpoint this run wrote).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fsa_deploy.runtime import gate
from fsa_deploy.runtime.gate import atomic
from fsa_deploy.runtime.segmenter import SegmentationResult
from fsa_deploy.runtime.video.outputs import (
    FramePNGs,
    LabelSpool,
    OverlayWriter,
    SummaryWriter,
    check_frames_folder,
    legend_strip,
    output_paths,
)

LEGEND_OPACITY = 0.8


def annotate(seg: Any, rgb: np.ndarray, labels: np.ndarray, timings: dict[str, float], legend: Image.Image | None,
             source: str | None = None) -> tuple[Any, np.ndarray]:
    """(the frame's SegmentationResult, its overlay as uint8 [H, W, 3]): runtime.segmenter's own
    overlay (palette, alpha, unlabelled pixels) cut to the frame, the legend blended into its bottom rows."""
    result = SegmentationResult(labels=labels, probs=None, classes=seg.vocabulary.names, image=rgb, timings=timings,
                                backend=seg.backend.name, artifact_sha256=seg.artifact_sha256, source=source,
                                prob_thd=seg.prob_thd)
    h, w = labels.shape
    frame = np.asarray(result.overlay().crop((0, 0, w, h)))
    if legend is not None:
        lh = min(legend.height, h)
        strip = np.asarray(legend)[-lh:, :w].astype(np.float32)
        bottom = frame[h - lh :, : strip.shape[1]].astype(np.float32)
        frame = frame.copy()
        frame[h - lh :, : strip.shape[1]] = (bottom * (1 - LEGEND_OPACITY) + strip * LEGEND_OPACITY + 0.5).astype(
            np.uint8)
    return result, frame


class Sink:
    def __init__(self, seg: Any, spec: Any, out: Path, info: Any, frames_folder: bool) -> None:
        self.seg, self.spec, self.info = seg, spec, info
        self.paths = output_paths(out, spec.name, frames_folder)
        self.stack = contextlib.ExitStack()
        self.overlay: OverlayWriter | None = None
        self.labels: LabelSpool | None = None
        self.pngs: FramePNGs | None = None
        self.size: tuple[int, int] | None = None
        self.legend: Image.Image | None = None
        self.skipped = 0  # frames whose size differs from the first (the mp4 holds one size)
        self.summary_writer = SummaryWriter(self.paths["summary"], self._head())

    def _head(self) -> dict[str, Any]:
        seg, spec = self.seg, self.spec
        return {"source": spec.text, "kind": spec.kind, "live": self.info.live, "fps": round(self.info.fps, 6),
                "outputs": {k: p.name for k, p in self.paths.items()}, "vocabulary": seg.vocabulary.names,
                "prob_thd": seg.prob_thd, "backend": seg.backend.name, "artifact_sha256": seg.artifact_sha256}

    def __enter__(self) -> Sink:
        gate.mkdir(self.paths["overlay"].parent)
        if "frames" in self.paths:
            check_frames_folder(self.paths["frames"])
            self.pngs = FramePNGs(self.paths["frames"])
        try:
            self.overlay_tmp = self.stack.enter_context(atomic(self.paths["overlay"]))
            if "labels" in self.paths:
                self.npz_tmp = self.stack.enter_context(atomic(self.paths["labels"]))
                spool = Path(gate.mkstemp_beside(self.paths["labels"], ".spool"))
                self.stack.callback(lambda: gate.unlink(spool))
                self.labels = LabelSpool(spool, len(self.seg.vocabulary.names))
                self.stack.callback(self.labels.close)
        except BaseException:
            self.stack.close()
            raise
        return self

    def add(self, job: Any) -> None:
        h, w = job.labels.shape
        if self.size is None:
            self.size = (h, w)
            self.overlay = OverlayWriter(self.overlay_tmp, self.info.fps, w, h)
            self.stack.callback(self.overlay.close)
            self.legend = legend_strip(self.seg.vocabulary.names, w)
            self.summary_writer.head.update(width=w, height=h)
        elif (h, w) != self.size:
            self.skipped += 1
            return

        t0 = time.perf_counter()
        result, frame = annotate(self.seg, job.rgb, job.labels, job.timings, self.legend)
        assert self.overlay is not None
        self.overlay.add(frame, job.time)
        if self.labels is not None:
            self.labels.add(job.labels)
        if self.pngs is not None:
            self.pngs.add(job.labels)
        job.timings["write"] = 1e3 * (time.perf_counter() - t0)
        self.summary_writer.add({"index": len(self.summary_writer.frames), "source_frame": job.number,
                                 "time": round(job.time, 6), "classes": result.summary()["classes"],
                                 "timings_ms": {k: round(v, 3) for k, v in job.timings.items()}})

    def summary(self, **tail: Any) -> dict[str, Any]:
        return {**self.summary_writer.head, **tail, "frame_count": len(self.summary_writer.frames)}

    def finish(self, **tail: Any) -> None:
        """The source ended (or the run was stopped): close the video, write the npz and the final JSON."""
        if self.overlay is not None:
            self.overlay.close()
        if self.labels is not None:
            self.labels.close()
            self.labels.write_npz(self.npz_tmp)
        if self.pngs is not None:
            self.pngs.finish()
        self.tail = {"frames_skipped_size": self.skipped, **tail}

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        try:
            self.stack.__exit__(kind, exc, tb)  # the renames, or the temporaries removed
        except BaseException:
            self.summary_writer.remove()
            raise
        if kind is not None:
            self.summary_writer.remove()
        elif hasattr(self, "tail"):  # last: a complete NAME.json only beside the published files
            self.summary_writer.write(complete=True, **self.tail)

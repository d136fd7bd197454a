"""What a video run writes for a source NAME, and how a stopped run stays valid.

- NAME_overlay.mp4: H.264 (yuv420p), the source's rate and size (an odd side padded by one
  pixel: 4:2:0 needs even sides), frames drawn by runtime.segmenter's own overlay (palette,
  alpha, unlabelled pixels), the class legend drawn in the frame's bottom rows.
- NAME.labels.npz: one array `labels` [frames, H, W] (uint8 below 256 classes, else uint16),
  written at the end from a spool file, a row of frames at a time: memory flat in the length.
- or, with --frames, NAME/000000.png, ...: each label PNG written whole as its frame is done.
- NAME.json: the run's summary and `frames` (one entry per frame), rewritten atomically as the
  run goes (`complete` false until the end).

The mp4 and the npz are written under temporary names (runtime.gate.atomic) and renamed
when the run ends: at the source's end, or at SIGINT/SIGTERM (fsa_deploy.interrupts.deferred),
then with the frames done so far. A run that fails before its first frame leaves nothing; a
SIGKILL leaves the last NAME.json (and --frames' PNGs), all valid; its temporaries are swept by
the next run in that folder.
"""

from __future__ import annotations

import contextlib
import re
import time
import zipfile
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fsa_deploy.contract import VIDEO_FRAME_PNG, VIDEO_LABELS, VIDEO_LABELS_KEY, VIDEO_OVERLAY, VIDEO_SUMMARY
from fsa_deploy.errors import FSAError
from fsa_deploy.runtime import gate
from fsa_deploy.runtime.gate import write_json
from fsa_deploy.runtime.images import encode
from fsa_deploy.runtime.segmenter import _rgb, label_image, legend_name, palette, with_legend
from fsa_deploy.runtime.video.sources import require_av

H264_ENCODERS = ("libx264", "h264", "libopenh264")  # the first PyAV's FFmpeg has
_FRAME_NAME = re.compile(r"^\d{6,}\.png$")
TIME_BASE = Fraction(1, 90000)  # the overlay's timestamps: MPEG's 90 kHz clock
JSON_EVERY_S = 1.0  # NAME.json is rewritten at most this often (and at least 20x its own write time apart)


def output_paths(out: Path, name: str, frames_folder: bool) -> dict[str, Path]:
    paths = {"overlay": out / VIDEO_OVERLAY.format(name), "summary": out / VIDEO_SUMMARY.format(name)}
    paths["frames" if frames_folder else "labels"] = out / name if frames_folder else out / VIDEO_LABELS.format(name)
    return paths


def check_frames_folder(folder: Path) -> None:
    """--frames writes into NAME/: a folder of our frame PNGs (an earlier run's) or none at all."""
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise FSAError(f"--frames {folder}: exists and is not a folder")
    if folder.is_dir():
        other = [p.name for p in folder.iterdir() if not _FRAME_NAME.match(p.name) and not p.name.startswith(".")]
        if other:
            raise FSAError(f"--frames {folder}: holds files that are not frame PNGs ({other[0]}, ...); "
                           "choose another --out")


def legend_strip(classes: list[str], width: int) -> Image.Image:
    """The legend of every class (swatch and name), as wide as the frame: runtime.segmenter's."""
    entries = [(legend_name(n), _rgb(palette()[i % 256])) for i, n in enumerate(classes)]
    strip = with_legend(Image.new("RGB", (width, 1), (255, 255, 255)), entries)
    return strip.crop((0, 1, min(width, strip.width), strip.height))


class OverlayWriter:
    """H.264 frames into an .mp4 at `path` (a temporary name): pts from the frames' timestamps at the
    source's rate, so a variable-rate or dropping source keeps its timing."""

    def __init__(self, path: Path, fps: float, width: int, height: int) -> None:
        av = require_av()
        self.container = av.open(str(path), mode="w", format="mp4")
        codec = next((c for c in H264_ENCODERS if c in av.codecs_available), None)
        if codec is None:
            raise FSAError("this PyAV's FFmpeg has no H.264 encoder (libx264); reinstall PyAV from its wheel")
        self.rate = Fraction(fps).limit_denominator(1001)
        self.stream = self.container.add_stream(codec, rate=self.rate)
        self.stream.width, self.stream.height = width + width % 2, height + height % 2
        self.stream.pix_fmt = "yuv420p"
        self.stream.codec_context.time_base = TIME_BASE  # frames keep the source's timestamps (variable rate)
        if codec == "libx264":
            self.stream.options = {"crf": "23", "preset": "veryfast"}
        self.size = (width, height)
        self.t0: float | None = None
        self.last_pts = -1

    def add(self, rgb: np.ndarray, t: float) -> None:
        import av

        h, w = rgb.shape[:2]
        pw, ph = self.stream.width - w, self.stream.height - h
        if pw or ph:
            rgb = np.pad(rgb, ((0, ph), (0, pw), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        self.t0 = t if self.t0 is None else self.t0
        pts = max(self.last_pts + 1, int(round((t - self.t0) / TIME_BASE)))
        frame.pts, frame.time_base = pts, TIME_BASE
        self.last_pts = pts
        self._mux(self.stream.encode(frame))

    def _mux(self, packets: Any) -> None:
        tick = int(round(1 / (self.rate * TIME_BASE)))  # a frame's nominal duration: the mp4's rate is the source's
        for packet in packets:
            packet.duration = tick
            self.container.mux(packet)

    def close(self) -> None:
        if self.container is None:
            return
        try:
            self._mux(self.stream.encode())
        finally:
            self.container.close()
            self.container = None


class LabelSpool:
    """Label maps appended to a spool file as they come; `write_npz` streams them into one .npz
    array [frames, H, W] (the npy header is written once the count is known)."""

    def __init__(self, path: Path, classes: int) -> None:
        self.path, self.count = path, 0
        self.shape: tuple[int, ...] | None = None
        self.dtype = np.dtype(np.uint8 if classes < 256 else np.uint16)
        self.file = gate.open_write(path)  # closed by close()

    def add(self, labels: np.ndarray) -> None:
        self.shape = self.shape or labels.shape
        self.file.write(labels.astype(self.dtype).tobytes())
        self.count += 1

    def close(self) -> None:
        self.file.close()

    def write_npz(self, target: Path) -> None:
        h, w = self.shape or (0, 0)
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (self.count, h, w)}
        frame_bytes = h * w * self.dtype.itemsize
        with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1, allowZip64=True) as zf, \
                zf.open(f"{VIDEO_LABELS_KEY}.npy", "w", force_zip64=True) as member, open(self.path, "rb") as spool:
            np.lib.format.write_array_header_2_0(member, header)
            while block := spool.read(max(frame_bytes, 1) * 16):
                member.write(block)


class SummaryWriter:
    """NAME.json, rewritten atomically now and then as frames come, and once at the end."""

    def __init__(self, path: Path, head: dict[str, Any]) -> None:
        self.path, self.head = path, head
        self.frames: list[dict[str, Any]] = []
        self.written, self.last, self.cost = False, 0.0, 0.0

    def add(self, entry: dict[str, Any]) -> None:
        self.frames.append(entry)
        now = time.monotonic()
        if now - self.last >= max(JSON_EVERY_S, 20 * self.cost):
            self.write(complete=False)

    def write(self, complete: bool, **tail: Any) -> None:
        t0 = time.monotonic()
        write_json(self.path, {**self.head, **tail, "complete": complete, "frame_count": len(self.frames),
                                      "frames": self.frames})
        self.written, self.last, self.cost = True, time.monotonic(), time.monotonic() - t0

    def remove(self) -> None:
        """A run that failed: its checkpoint goes too (we wrote it)."""
        if self.written:
            with contextlib.suppress(OSError):
                gate.unlink(self.path)


class FramePNGs:
    """--frames: NAME/000000.png, ... each written whole as its frame is done; at the end the frame
    PNGs of an earlier, longer run beyond this run's count are removed (they were ours)."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.count = folder, 0

    def add(self, labels: np.ndarray) -> None:
        if self.count == 0:
            gate.mkdir(self.folder)
        gate.write_bytes(self.folder / VIDEO_FRAME_PNG.format(self.count), encode(label_image(labels)))
        self.count += 1

    def finish(self) -> None:
        if not self.folder.is_dir():
            return
        for p in self.folder.iterdir():
            if _FRAME_NAME.match(p.name) and int(p.stem) >= self.count:
                with contextlib.suppress(OSError):
                    gate.unlink(p)

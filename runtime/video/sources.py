"""Video sources: what an `fsa segment` argument names, and its frames as RGB arrays.

A source is a video file, an image sequence (a glob or a printf pattern such as `f/%06d.png`),
a camera (`/dev/videoN` or an index) or a network stream (rtsp://, rtmp://, http(s)://, udp://,
...). Files, cameras and streams are decoded by PyAV (FFmpeg; the `video` extra); an image
sequence by runtime.images' own loader, so its frame k is exactly `fsa segment` on that image.
Rotation metadata is applied, as FFmpeg's command line does by default. PyAV is imported only
when a source is opened.
"""

from __future__ import annotations

import glob
import math
import os
import re
import sys
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fsa_deploy.contract import CAMERA_PREFIX, STREAM_SCHEMES, VIDEO_SUFFIXES
from fsa_deploy.errors import FSAError, escape
from fsa_deploy.runtime.images import load_image

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_PRINTF = re.compile(r"%0?(\d*)d")
_GLOB = re.compile(r"[*?\[]")
MAX_BAD_PACKETS = 50  # damaged packets in a row before a source counts as unreadable from there on
SEQUENCE_FPS = 25.0  # an image sequence's frame rate unless --sequence-fps says otherwise (FFmpeg's image2 default)
ANALYZE_S = 1.0  # seconds of a network stream probed for its format (FFmpeg's default is 5)
JOIN_MARGIN_S = 10.0  # beyond --stream-timeout: how long a stopped consumer waits for a thread in a decode


@dataclass(frozen=True)
class Selection:
    """Which decoded frames are kept: from `start` s for `duration` s, one in `every`, at most
    `max_fps` per second of source time, at most `limit` frames."""

    every: int = 1
    max_fps: float | None = None
    start: float = 0.0
    duration: float | None = None
    limit: int | None = None

    def filter(self, frames: Iterator[tuple[float, Any]]) -> Iterator[tuple[int, float, Any]]:
        """(time, payload) in decode order -> (source frame number, time, payload) of the kept ones."""
        kept, seen, next_time = 0, 0, -math.inf
        end = math.inf if self.duration is None else self.start + self.duration
        for number, (t, payload) in enumerate(frames):
            if t < self.start - 1e-9:
                continue
            if t >= end - 1e-9 or (self.limit is not None and kept >= self.limit):
                return
            seen += 1
            if (seen - 1) % self.every:
                continue
            if self.max_fps is not None:
                if t < next_time - 1e-6:
                    continue
                next_time = max(next_time + 1.0 / self.max_fps, t) if math.isfinite(next_time) else t + 1 / self.max_fps
            kept += 1
            yield number, t, payload


@dataclass(frozen=True)
class SourceSpec:
    """One video source as given on the command line. `kind`: file, sequence, camera or stream;
    `name` the stem of its outputs."""

    text: str
    kind: str
    name: str


def _clean(name: str, fallback: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return name[:100] or fallback


def classify(item: str) -> SourceSpec | None:
    """The SourceSpec of a command-line argument, or None for an image or a folder of images
    (what `fsa segment` did before videos: those keep their meaning)."""
    m = _SCHEME.match(item)
    if m:
        if m.group(1).lower() not in STREAM_SCHEMES:
            raise FSAError(f"{escape(item)}: unknown stream scheme {m.group(1)}:// (known: "
                           f"{', '.join(s + '://' for s in STREAM_SCHEMES)})")
        rest = item[m.end():].split("?")[0].rstrip("/")
        name = Path(rest.rsplit("/", 1)[-1]).stem if "/" in rest else rest.replace(":", "_")
        return SourceSpec(item, "stream", _clean(name, "stream"))
    if item.startswith(CAMERA_PREFIX) or (item.isdigit() and not os.path.lexists(item)):
        return SourceSpec(item, "camera", _clean(Path(item).name if not item.isdigit() else f"camera{item}", "camera"))
    path = Path(item)
    if not os.path.lexists(item) and (_GLOB.search(path.name) or _PRINTF.search(path.name)):
        parent = path.parent.name or "frames"
        return SourceSpec(item, "sequence", _clean(parent, "frames"))
    if path.suffix.lower() in VIDEO_SUFFIXES and not path.is_dir():
        return SourceSpec(item, "file", _clean(path.stem, "video"))
    return None


def sequence_files(pattern: str) -> list[Path]:
    """The files of an image sequence, in order: a glob sorted by name, or a printf pattern's numbers."""
    path = Path(pattern)
    m = _PRINTF.search(path.name)
    if m:
        rx = re.compile(re.escape(path.name[: m.start()]) + r"(\d+)" + re.escape(path.name[m.end():]) + "$")
        folder = path.parent if str(path.parent) else Path(".")
        found = [(int(mm.group(1)), p) for p in (folder.iterdir() if folder.is_dir() else [])
                 if (mm := rx.match(p.name)) and p.is_file()]
        return [p for _, p in sorted(found)]
    return [Path(p) for p in sorted(glob.glob(pattern)) if os.path.isfile(p)]


# ---------------------------------------------------------------- decoding


@dataclass
class VideoInfo:
    """What the outputs need of a source: frame rate (frames/s), size of its first frame, time base."""

    fps: float
    width: int
    height: int
    frames: int | None  # as the container says (None: unknown or live)
    live: bool = False


def require_av():
    try:
        import av
    except ImportError as e:
        raise FSAError(f"video sources need PyAV: pip install 'fsa-deploy[video]' ({e})") from e
    return av


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:160] if text else type(e).__name__


def _camera_target(text: str) -> tuple[str, str | None]:
    """(FFmpeg's device name, its input format) of a camera argument on this platform."""
    if sys.platform.startswith("linux"):
        device = text if not text.isdigit() else f"{CAMERA_PREFIX}{text}"
        if not os.path.exists(device):
            raise FSAError(f"{text}: no such camera ({device} does not exist)")
        return device, "v4l2"
    if sys.platform == "darwin":
        return (text if text.isdigit() else text.removeprefix(CAMERA_PREFIX)), "avfoundation"
    if os.name == "nt":
        return f"video={text}", "dshow"
    return text, None


class Source:
    """An opened source: `info`, then `frames()` yields (time s, RGB uint8 [H, W, 3]) in decode
    order. `error` holds the line that ended the decoding early (truncated, corrupt, stalled), or None.
    `live`: frames arrive in real time (a camera, a stream of no known length, rtsp/rtmp/udp/srt),
    so a slower model drops them instead of queueing; a file served over http(s) is not live."""

    def __init__(self, spec: SourceSpec, stream_timeout: float = 10.0, sequence_fps: float = SEQUENCE_FPS,
                 start: float = 0.0) -> None:
        self.spec, self.live = spec, spec.kind == "camera"
        self.error: str | None = None
        self.stream_timeout, self.start = stream_timeout, start
        self.container: Any = None
        if spec.kind == "sequence":
            self.files = sequence_files(spec.text)
            if not self.files:
                raise FSAError(f"{escape(spec.text)}: no such file, and no files match it as an image sequence")

            first = load_image(self.files[0])
            self.info = VideoInfo(sequence_fps, first.shape[2], first.shape[1], len(self.files))
            return
        self._open()

    def _open(self) -> None:
        av = require_av()
        spec, text = self.spec, self.spec.text
        target, fmt, options = text, None, {}
        if spec.kind == "file":
            if not os.path.isfile(text):
                raise FSAError(f"{escape(text)}: no such file" if not os.path.exists(text) else
                               f"{escape(text)}: not a regular file")
            if os.path.getsize(text) == 0:
                raise FSAError(f"{escape(text)}: empty file (0 bytes), no video")
        elif spec.kind == "camera":
            target, fmt = _camera_target(text)
        open_timeout = self.stream_timeout
        if spec.kind == "stream":  # probe ANALYZE_S of stream time, not FFmpeg's 5 s, and wait for it
            options = {"analyzeduration": str(int(ANALYZE_S * 1e6))}
            open_timeout += ANALYZE_S
            if text.lower().startswith("rtsp"):
                options["rtsp_transport"] = "tcp"
        try:
            self.container = av.open(target, format=fmt, options=options, timeout=(open_timeout, self.stream_timeout))
        except (av.FFmpegError, OSError) as e:
            what = {"camera": "cannot open the camera (absent, or busy in another program?)",
                    "stream": f"cannot open the stream (no answer or no video within {open_timeout:g} s: "
                              "--stream-timeout)",
                    }.get(spec.kind, "not a video PyAV/FFmpeg can read")
            raise FSAError(f"{escape(text)}: {what} ({escape(_first_line(e))})") from None
        video = self.container.streams.video
        if not video:
            self.container.close()
            raise FSAError(f"{escape(text)}: has no video stream")
        stream = video[0]
        stream.thread_type = "AUTO"  # frame and slice threads in the decoder: decoding overlaps itself
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 25.0
        if not math.isfinite(fps) or fps <= 0 or fps > 1000:
            fps = 25.0
        self.stream = stream
        if spec.kind == "stream":
            scheme = text.split(":", 1)[0].lower()
            self.live = scheme not in ("http", "https") or not self.container.duration
        self.info = VideoInfo(fps, stream.codec_context.width, stream.codec_context.height, stream.frames or None,
                              self.live)
        if self.start > 0 and spec.kind == "file":
            try:  # to the key frame before `start`; Selection drops the frames before it
                self.container.seek(int(self.start / stream.time_base), stream=stream, backward=True)
            except (av.FFmpegError, OSError):
                self.container.seek(0)

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
            self.container = None

    def frames(self) -> Generator[tuple[float, np.ndarray | None], None, None]:
        if self.spec.kind == "sequence":
            yield from self._sequence()
        else:
            yield from self._decode()

    def _sequence(self) -> Iterator[tuple[float, np.ndarray | None]]:
        for i, f in enumerate(self.files):
            t = i / self.info.fps
            if t < self.start - 1e-9:
                yield t, None  # Selection skips it: no decode
                continue
            try:
                yield t, load_image(f).transpose(1, 2, 0)
            except FSAError as e:
                self.error = f"{e}; the sequence stops there"
                return

    def _decode(self) -> Iterator[tuple[float, np.ndarray]]:
        """Decode order; a packet that does not decode is skipped (counted), a demuxer error or a stall
        ends the source with `error` set, as does a file that ends before the frames it announced."""
        av = require_av()
        assert self.container is not None
        last, count, bad, run_of_bad = None, 0, 0, 0
        packets = self.container.demux(self.stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except (av.FFmpegError, OSError) as e:
                if isinstance(e, (av.ExitError, TimeoutError)) or "Immediate exit" in str(e):
                    self.error = f"no data for {self.stream_timeout:g} s (stalled; --stream-timeout)"
                else:
                    self.error = f"reading stopped ({_first_line(e)}); the rest of the source is lost"
                return
            try:
                decoded = packet.decode()
                run_of_bad = 0
            except (av.FFmpegError, OSError) as e:
                bad, run_of_bad = bad + 1, run_of_bad + 1
                self.error = f"{bad} damaged packet(s) skipped ({_first_line(e)})"
                if run_of_bad >= MAX_BAD_PACKETS:
                    self.error = f"decoding stopped after {bad} damaged packets ({_first_line(e)})"
                    return
                continue
            for frame in decoded:
                t = frame.time if frame.time is not None else (0.0 if last is None else last + 1 / self.info.fps)
                if last is not None and t <= last:  # a repeated or backward timestamp: keep the order
                    t = last + 1e-6
                last = t
                count += 1
                yield t, rgb_of(frame)
        if self.error is None and self.spec.kind == "file":
            self.error = self._ended_early(count, last)

    def _ended_early(self, count: int, last: float | None) -> str | None:
        """A file whose frames stop before what its header announces (a frame count or a duration)."""
        announced = self.info.frames
        if announced and self.start == 0 and count < announced:
            return f"the file ends early: {count} of the {announced} frames it announces (truncated?)"
        duration = self.container.duration / 1e6 if self.container and self.container.duration else None
        if duration and (last is None or last + 3 / self.info.fps < duration):
            return f"the file ends early: frames up to {last or 0:.2f} s of the {duration:.2f} s it announces " \
                   "(truncated or damaged?)"
        return None


def rgb_of(frame: Any) -> np.ndarray:
    """A decoded PyAV frame -> uint8 [H, W, 3] RGB, rotation metadata applied (FFmpeg's autorotate):
    any pixel format FFmpeg knows (10-bit, 4:2:2, 4:4:4, gray, palettes) goes through swscale."""
    rgb = frame.to_ndarray(format="rgb24")
    turns = int(round(getattr(frame, "rotation", 0) or 0)) % 360
    if turns:  # the display matrix's counter-clockwise angle
        rgb = np.ascontiguousarray(np.rot90(rgb, k=turns // 90))
    return rgb

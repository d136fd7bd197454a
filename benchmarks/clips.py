"""Small test videos made from scikit-image's sample photos: a pan and a zoom over one photo,
encoded with PyAV (the tests and `make bench-video` use them; nothing is downloaded)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from fsa_deploy.runtime.images import load_image
from fsa_deploy.runtime.video.sources import Source, classify


def pan_zoom_frames(photo: str | Path, frames: int, size: tuple[int, int]) -> list[np.ndarray]:
    """`frames` RGB frames [H, W, 3] of `size` (width, height): a window over the photo that pans
    left to right while it zooms in from the whole photo to half of it."""
    img = Image.fromarray(load_image(photo).transpose(1, 2, 0))
    w, h = img.size
    aspect = size[0] / size[1]
    out = []
    for i in range(frames):
        a = i / max(frames - 1, 1)
        zoom = 1.0 - 0.5 * a
        cw = min(w, h * aspect) * zoom
        ch = cw / aspect
        x0 = (w - cw) * a
        y0 = (h - ch) * 0.5
        out.append(np.asarray(img.resize(size, Image.Resampling.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))))
    return out


def write_clip(path: str | Path, frames: list[np.ndarray], fps: float = 12, codec: str = "libx264",
               pix_fmt: str = "yuv420p", fmt: str | None = None, rotation: int | None = None,
               times: list[float] | None = None) -> Path:
    """Encode RGB frames into a video file with PyAV; `times` (seconds) gives a variable frame rate,
    `rotation` a display-matrix rotation in degrees (as phones record)."""
    import av

    path = Path(path)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w", format=fmt) as c:
        s = c.add_stream(codec, rate=rate)
        assert isinstance(s, av.VideoStream), codec
        s.height, s.width = frames[0].shape[:2]
        s.pix_fmt = pix_fmt
        if times is not None:
            s.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:  # the display matrix, as phones record
            s.set_display_rotation(rotation)
        for i, rgb in enumerate(frames):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            if times is not None:
                f.pts, f.time_base = int(round(times[i] * 1000)), Fraction(1, 1000)
            else:
                f.pts, f.time_base = i, 1 / rate
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def decoded_frames(path: str | Path) -> list[np.ndarray]:
    """Every frame of a video as `fsa segment` decodes it (runtime.video.sources)."""
    spec = classify(str(path))
    assert spec is not None, path
    src = Source(spec)
    try:
        return [rgb for _, rgb in src.frames() if rgb is not None]  # None: before a start, which is 0 here
    finally:
        src.close()

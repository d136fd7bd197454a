"""The official test pipeline's decode and resize, as mmcv does them (the paper's protocol).

The official configs run `LoadImageFromFile` (mmcv.imfrombytes: cv2.imdecode, IMREAD_COLOR, BGR)
and `Resize(scale=(2048, short), keep_ratio=True)` (mmcv.imrescale: rescale_size's scale factor,
each side `int(side * scale + 0.5)`, then cv2.resize with INTER_LINEAR on the uint8 image, whose
fixed-point arithmetic rounds to uint8). Sources: open-mmlab/mmcv@a8073c7 mmcv/image/geometric.py
(`_scale_size`, `rescale_size`, `imrescale`, `imresize`), mmcv/image/io.py (`imfrombytes`),
mmcv/transforms/processing.py (`Resize._resize_img`, interpolation 'bilinear', backend 'cv2').

`fsa segment` keeps its float32 resize of the decoded image (runtime/pipeline.py, no OpenCV in the
runtime): the two differ on a few pixels per image (docs/METHOD.md, "Evaluation"). OpenCV is the
`eval` extra's, imported only here.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from fsa_deploy.errors import FSAError
from fsa_deploy.runtime.images import max_pixels

INSTALL = "pip install 'fsa-deploy[eval]'"


def cv2() -> Any:
    try:
        import cv2 as cv
    except ImportError as e:
        raise FSAError(f"fsa eval's mmcv pipeline needs OpenCV: {INSTALL} (or --resize float) ({e})") from e
    return cv


def rescale_size(h: int, w: int, short_side: int, long_side: int) -> tuple[int, int]:
    """(new h, new w) as mmcv.rescale_size((w, h), (long, short)) then _scale_size: Python floats."""
    max_long, max_short = max(long_side, short_side), min(long_side, short_side)
    scale = min(max_long / max(h, w), max_short / min(h, w))
    return int(h * float(scale) + 0.5), int(w * float(scale) + 0.5)


def decode(path: str | os.PathLike[str]) -> np.ndarray:
    """An image file as mmcv's LoadImageFromFile decodes it, as RGB uint8 [3, H, W] (EXIF orientation
    applied by IMREAD_COLOR, as mmcv's 'color' flag does)."""
    cv = cv2()
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise FSAError(f"{path}: unreadable image ({e.strerror or type(e).__name__})") from e
    img = cv.imdecode(data, cv.IMREAD_COLOR) if data.size else None
    if img is None:
        raise FSAError(f"{path}: unreadable image (OpenCV cannot decode it)")
    if img.shape[0] * img.shape[1] > max_pixels():
        raise FSAError(f"{path}: {img.shape[1]}x{img.shape[0]} pixels, above the limit of {max_pixels()}")
    return np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1))


def imrescale(image: np.ndarray, short_side: int, long_side: int) -> np.ndarray:
    """RGB uint8 [3, H, W] -> float32 [3, h, w]: mmcv.imrescale(img, (long, short), 'bilinear'),
    cv2 on the uint8 image (channel order does not matter: cv2 resizes each channel alike)."""
    cv = cv2()
    h, w = image.shape[-2:]
    nh, nw = rescale_size(h, w, short_side, long_side)
    hwc = np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(1, 2, 0))
    out = cv.resize(hwc, (nw, nh), interpolation=cv.INTER_LINEAR)
    if out.ndim == 2:
        out = out[:, :, None]
    return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32)

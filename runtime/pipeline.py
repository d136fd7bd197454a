"""The segmentation pipeline around the crop forward (docs/METHOD.md, "Segmentation").

Resize, sliding windows, padding, stitching and post-processing, in numpy on the host. The
PyTorch reference and every runtime backend use this same code (a backend sees only crop
batches), so the pipeline is identical by construction and a comparison of backends compares
only their crop forwards.

Memory does not grow with classes x pixels: the crop logits are stitched at the resized
size ([K, h, w], h and w at most a few crops), and the upsampling to the original size,
the softmax, the synonym merge and the argmax run one band of rows at a time. The full
[K, H0, W0] planes exist only when a caller asks for them (`keep_probs`, `keep_logits`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from fsa_deploy.contract import CLIP_MEAN, UNLABELLED, UNLABELLED_WIDE
from fsa_deploy.runtime.cancel import checkpoint

CropForward = Callable[[np.ndarray], np.ndarray]  # crops [B, 3, S, S] -> logits [B, K, H', W']
BAND_BYTES = 16 << 20  # one band of full-resolution class planes: bounds post-processing memory
# bands in flight at once (numpy releases the GIL in its loops): post-processing memory is
# BAND_WORKERS x a few bands, whatever K and the image size
BAND_WORKERS = min(4, os.cpu_count() or 1)


@dataclass(frozen=True)
class Geometry:
    """Resize and window parameters. Defaults follow the official configs at crop 336:
    Resize(2048, 336) keeping the aspect ratio, windows of 336 with stride 112."""

    crop: int = 336
    stride: int | None = None  # default crop // 3
    short_side: int | None = None  # default crop
    long_side: int | None = None  # default crop * 2048 / 336

    @property
    def step(self) -> int:
        return self.stride or max(1, self.crop // 3)

    def resized_size(self, h: int, w: int) -> tuple[int, int]:
        """mmcv's keep-ratio rescale: the largest scale with short <= short_side and long <= long_side."""
        short = self.short_side or self.crop
        long = self.long_side or int(round(self.crop * 2048 / 336))
        scale = min(long / max(h, w), short / min(h, w))
        return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))


@dataclass(frozen=True)
class Window:
    y1: int
    y2: int
    x1: int
    x2: int
    pad: tuple[int, int, int, int]  # left, right, top, bottom (to reach crop x crop)


def windows(h: int, w: int, geo: Geometry) -> list[Window]:
    """The official sliding-window grid; a window smaller than the crop is padded to the crop."""
    s, st = geo.crop, geo.step
    rows = max(h - s + st - 1, 0) // st + 1
    cols = max(w - s + st - 1, 0) // st + 1
    out = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * st + s, h), min(c * st + s, w)
            y1, x1 = max(y2 - s, 0), max(x2 - s, 0)
            ph, pw = s - (y2 - y1), s - (x2 - x1)
            out.append(Window(y1, y2, x1, x2, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)))
    return out


# ---------------------------------------------------------------- bilinear resize


@dataclass(frozen=True)
class Taps:
    """One axis of a bilinear resize: output i = (1 - frac[i]) * in[lo[i]] + frac[i] * in[hi[i]]."""

    lo: np.ndarray
    hi: np.ndarray
    frac: np.ndarray  # float32

    @classmethod
    def of(cls, n_in: int, n_out: int) -> Taps:
        """torch's `interpolate(mode='bilinear', align_corners=False)` with an output size (no
        antialias), rounding as its CPU kernel does: a float32 scale, the source index
        (i + 0.5) * scale - 0.5 in double, clamped at 0, then float32 (measured equal to ~1e-7)."""
        scale = float(np.float32(n_in / n_out))
        src = np.maximum((np.arange(n_out) + 0.5) * scale - 0.5, 0.0).astype(np.float32)
        lo = np.minimum(src.astype(np.int64), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        return cls(lo, hi, (src - lo.astype(np.float32)).astype(np.float32))

    def rows(self, x: np.ndarray, sl: slice = slice(None)) -> np.ndarray:
        """Resize axis -2 of x [..., n_in, W] for the output rows `sl`."""
        f = self.frac[sl][:, None]
        a = x[..., self.lo[sl], :].astype(np.float32, copy=False)
        b = x[..., self.hi[sl], :].astype(np.float32, copy=False)
        return a * (np.float32(1) - f) + b * f

    def cols(self, x: np.ndarray) -> np.ndarray:
        """Resize the last axis of x [..., n_in]."""
        f = self.frac
        out = x[..., self.lo]
        out *= np.float32(1) - f
        hi = x[..., self.hi]
        hi *= f
        out += hi
        return out


def resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """x [..., H, W] (any real dtype) -> float32 [..., h, w]: bilinear, align_corners=False,
    no antialias (torch.nn.functional.interpolate's and cv2's resize), rows first."""
    h, w = size
    if tuple(x.shape[-2:]) == (h, w):
        return x.astype(np.float32)
    return Taps.of(x.shape[-1], w).cols(Taps.of(x.shape[-2], h).rows(x))


def resize_image(image: np.ndarray, geo: Geometry) -> np.ndarray:
    """[3, H, W] RGB 0-255 -> float32 [3, h, w] resized to the geometry's scale."""
    return resize(image, geo.resized_size(image.shape[-2], image.shape[-1]))


# ---------------------------------------------------------------- crops and stitching


def pad_value() -> np.ndarray:
    """Padding colour: CLIP's mean, i.e. 0 after normalisation, as the official code pads
    the normalised image with zeros."""
    return (np.asarray(CLIP_MEAN, dtype=np.float32) * np.float32(255.0)).reshape(3, 1, 1)


def cut_crop(image: np.ndarray, win: Window, crop: int) -> np.ndarray:
    """image float32 [3, H, W] -> crop [3, S, S] (padded with the CLIP mean colour where needed)."""
    part = image[:, win.y1 : win.y2, win.x1 : win.x2]
    if not any(win.pad):
        return part
    left, _, top, _ = win.pad
    out = np.empty((3, crop, crop), dtype=np.float32)
    out[...] = pad_value()
    out[:, top : top + part.shape[1], left : left + part.shape[2]] = part
    return out


def crops_of(image: np.ndarray, geo: Geometry) -> tuple[np.ndarray, list[Window]]:
    """The resized image's windows as one batch float32 [n, 3, S, S] (the image already resized)."""
    wins = windows(image.shape[-2], image.shape[-1], geo)
    return np.stack([cut_crop(image, w, geo.crop) for w in wins]).astype(np.float32, copy=False), wins


def batches(n: int, batch: int) -> Iterator[slice]:
    for i in range(0, n, batch):
        yield slice(i, min(i + batch, n))


class Canvas:
    """Crop logits summed at the resized size: [K, h, w] and a window count per pixel.

    Each crop's logits are upsampled to the crop size one crop at a time, so a batch of many
    crops and many classes never holds more than one crop-sized [K, S, S] plane set.
    """

    def __init__(self, size: tuple[int, int], crop: int):
        self.size, self.crop = size, crop
        self.sum: np.ndarray | None = None
        self.count = np.zeros(size, dtype=np.float32)

    def add(self, logits: np.ndarray, wins: Sequence[Window]) -> None:
        """logits [n, K, H', W'] of the windows `wins`."""
        if self.sum is None:
            self.sum = np.zeros((logits.shape[1], *self.size), dtype=np.float32)
        for lg, w in zip(logits, wins):
            up = resize(lg, (self.crop, self.crop))
            left, _, top, _ = w.pad
            self.sum[:, w.y1 : w.y2, w.x1 : w.x2] += up[:, top : top + w.y2 - w.y1, left : left + w.x2 - w.x1]
            self.count[w.y1 : w.y2, w.x1 : w.x2] += 1

    def mean(self) -> np.ndarray:
        """The stitched image logits at the resized size [K, h, w]."""
        assert self.sum is not None, "no crops added"
        return self.sum / self.count


def stitch_canvas(logits: np.ndarray, wins: Sequence[Window], size: tuple[int, int], crop: int) -> np.ndarray:
    """Crop logits [n, K, H', W'] -> image logits at the resized size [K, h, w]: each crop upsampled
    to the crop size, padding cut, summed, divided by the window count."""
    canvas = Canvas(size, crop)
    canvas.add(np.asarray(logits, dtype=np.float32), wins)
    return canvas.mean()


def stitch(logits: np.ndarray, wins: Sequence[Window], size: tuple[int, int], out_size: tuple[int, int],
           crop: int) -> np.ndarray:
    """`stitch_canvas` resized to the original size: [K, H0, W0] (all K full-size planes: for
    validation on small images; segmentation post-processes band by band, see `postprocess`)."""
    return resize(stitch_canvas(logits, wins, size, crop), out_size)


def canvas_logits(image: np.ndarray, forward: CropForward, geo: Geometry, batch: int = 16) -> np.ndarray:
    """image [3, H0, W0] RGB 0-255 -> image logits at the resized size [K, h, w] (before the scale)."""
    return resized_canvas_logits(resize_image(image, geo), forward, geo, batch)


def resized_canvas_logits(resized: np.ndarray, forward: CropForward, geo: Geometry, batch: int = 16) -> np.ndarray:
    """The image already resized (float32 [3, h, w], by `resize_image` or by `fsa eval`'s mmcv
    resize) -> image logits at that size [K, h, w] (before the scale)."""
    wins = windows(resized.shape[-2], resized.shape[-1], geo)
    canvas = Canvas((resized.shape[-2], resized.shape[-1]), geo.crop)
    for sl in batches(len(wins), batch):
        checkpoint("crops", sl.start, len(wins))  # a cancelled request (fsa app) stops here, between crop batches
        crops = np.stack([cut_crop(resized, w, geo.crop) for w in wins[sl]])
        canvas.add(np.asarray(forward(crops), dtype=np.float32), wins[sl])
    return canvas.mean()


# ---------------------------------------------------------------- post-processing


def class_probs(image_logits: np.ndarray, query_class: Sequence[int], logit_scale: float,
                overwrite: bool = False) -> np.ndarray:
    """Softmax over queries (axis 0) of logit_scale * logits, synonyms merged into their class by max.
    `overwrite` lets it work in the float32 input's memory (one band less at the peak)."""
    z = np.asarray(image_logits, dtype=np.float32)
    if overwrite:
        z *= np.float32(logit_scale)
    else:
        z = z * np.float32(logit_scale)
    z -= z.max(axis=0, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=0, keepdims=True)
    n_cls = max(query_class) + 1
    if n_cls == len(query_class):
        return z
    groups: list[list[int]] = [[] for _ in range(n_cls)]
    for q, c in enumerate(query_class):
        groups[c].append(q)
    return np.stack([z[g].max(axis=0) if len(g) > 1 else z[g[0]] for g in groups])


def unlabelled_label(n_classes: int) -> int:
    """The label of pixels under the threshold: 255 (mmseg's ignore index), or 65535 when 255 is a class."""
    return UNLABELLED if n_classes <= UNLABELLED else UNLABELLED_WIDE


def labels_of(probs: np.ndarray, prob_thd: float, below: int | None = None) -> np.ndarray:
    """argmax over classes (axis 0) as int32; pixels whose top probability is below prob_thd get
    `below`: None is `unlabelled_label` (fsa segment, serve, app); the benchmarks' official rule is 0."""
    labels = probs.argmax(axis=0).astype(np.int32)
    if prob_thd > 0:
        labels[probs.max(axis=0) < prob_thd] = unlabelled_label(probs.shape[0]) if below is None else below
    return labels


@dataclass
class Post:
    """Post-processing's outputs at the original size: labels [H0, W0] int32 always; class
    probabilities [C, H0, W0] and image logits [K, H0, W0] only when asked."""

    labels: np.ndarray
    probs: np.ndarray | None = None
    logits: np.ndarray | None = None


def band_rows(k: int, width: int, budget: int = BAND_BYTES) -> int:
    """Rows per band so that one band of K float32 planes fits in `budget` bytes."""
    return max(1, budget // max(1, 4 * k * width))


def postprocess(canvas: np.ndarray, out_size: tuple[int, int], query_class: Sequence[int], logit_scale: float,
                prob_thd: float = 0.0, keep_probs: bool = False, keep_logits: bool = False,
                band_budget: int = BAND_BYTES, below: int | None = None) -> Post:
    """Canvas logits [K, h, w] -> labels at `out_size`, one band of output rows at a time:
    upsample (bilinear, as `resize`), softmax, synonym max, argmax, threshold (`below`: labels_of's)."""
    k = canvas.shape[0]
    h0, w0 = out_size
    n_cls = max(query_class) + 1
    ty, tx = Taps.of(canvas.shape[-2], h0), Taps.of(canvas.shape[-1], w0)
    same = tuple(canvas.shape[-2:]) == (h0, w0)
    out = Post(np.empty((h0, w0), dtype=np.int32),
               np.empty((n_cls, h0, w0), dtype=np.float32) if keep_probs else None,
               np.empty((k, h0, w0), dtype=np.float32) if keep_logits else None)
    step = band_rows(k, w0, band_budget)

    def one_band(r0: int) -> None:
        rows = slice(r0, min(r0 + step, h0))
        band = canvas[:, rows].astype(np.float32) if same else tx.cols(ty.rows(canvas, rows))
        if out.logits is not None:
            out.logits[:, rows] = band
        probs = class_probs(band, query_class, logit_scale, overwrite=True)
        if out.probs is not None:
            out.probs[:, rows] = probs
        out.labels[rows] = labels_of(probs, prob_thd, below)

    starts = range(0, h0, step)
    if BAND_WORKERS > 1 and len(starts) > 1:
        with ThreadPoolExecutor(BAND_WORKERS) as pool:
            list(pool.map(one_band, starts))
    else:
        for r0 in starts:
            one_band(r0)
    return out

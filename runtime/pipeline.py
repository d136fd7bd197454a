"""The segmentation pipeline around the crop forward (shared/spec/FSA.md, "Segmentation").

Resize, sliding windows, padding, stitching and post-processing, in torch only, on
whatever device the tensors live on. The PyTorch reference and every runtime backend
use this same code, so the pipeline is identical by construction and a comparison of
backends compares only their crop forwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fsa_deploy.contract import CLIP_MEAN

CropForward = Callable[[torch.Tensor], torch.Tensor]  # crops [B, 3, S, S] -> logits [B, K, H', W']


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


def pad_value(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Padding colour: CLIP's mean, i.e. 0 after normalisation, as the official code pads
    the normalised image with zeros."""
    return (torch.tensor(CLIP_MEAN, dtype=dtype, device=device) * 255.0).view(3, 1, 1)


def cut_crop(image: torch.Tensor, win: Window) -> torch.Tensor:
    """image [3, H, W] -> crop [3, S, S] (padded with the CLIP mean colour where needed)."""
    crop = image[:, win.y1 : win.y2, win.x1 : win.x2]
    if any(win.pad):
        left, right, top, bottom = win.pad
        fill = pad_value(image.dtype, image.device)
        crop = F.pad(crop - fill, (left, right, top, bottom)) + fill
    return crop


def resize_image(image: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """[3, H, W] RGB 0-255 -> float32 [3, h, w] resized (bilinear, no antialias, like cv2)."""
    h, w = geo.resized_size(image.shape[-2], image.shape[-1])
    x = image.float().unsqueeze(0)
    if (h, w) != tuple(image.shape[-2:]):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    return x[0]


def crops_of(image: torch.Tensor, geo: Geometry) -> tuple[torch.Tensor, list[Window]]:
    """The resized image's windows as one batch [n, 3, S, S] (the image already resized)."""
    wins = windows(image.shape[-2], image.shape[-1], geo)
    return torch.stack([cut_crop(image, w) for w in wins]), wins


def batches(n: int, max_batch: int) -> Iterator[slice]:
    for i in range(0, n, max_batch):
        yield slice(i, min(i + max_batch, n))


def stitch(logits: torch.Tensor, wins: list[Window], size: tuple[int, int], out_size: tuple[int, int],
           crop: int) -> torch.Tensor:
    """Crop logits [n, K, H', W'] -> image logits [K, H0, W0]: each crop upsampled to the crop
    size, padding cut, summed, divided by the window count, resized to the original size."""
    k = logits.shape[1]
    canvas = logits.new_zeros((k, *size))
    count = logits.new_zeros((1, *size))
    up = F.interpolate(logits, size=(crop, crop), mode="bilinear", align_corners=False)
    for u, w in zip(up, wins):
        left, _, top, _ = w.pad
        canvas[:, w.y1 : w.y2, w.x1 : w.x2] += u[:, top : top + w.y2 - w.y1, left : left + w.x2 - w.x1]
        count[:, w.y1 : w.y2, w.x1 : w.x2] += 1
    canvas = canvas / count
    return F.interpolate(canvas.unsqueeze(0), size=out_size, mode="bilinear", align_corners=False)[0]


def class_probs(image_logits: torch.Tensor, query_class: list[int], logit_scale: float) -> torch.Tensor:
    """Softmax over queries of logit_scale * logits, synonyms merged into their class by max."""
    probs = torch.softmax(image_logits * logit_scale, dim=0)
    n_cls = max(query_class) + 1
    if n_cls == len(query_class):
        return probs
    groups: list[list[int]] = [[] for _ in range(n_cls)]
    for q, c in enumerate(query_class):
        groups[c].append(q)
    return torch.stack([probs[g].amax(dim=0) if len(g) > 1 else probs[g[0]] for g in groups])


def labels_of(probs: torch.Tensor, prob_thd: float) -> torch.Tensor:
    """argmax over classes; pixels whose top probability is below prob_thd become class 0."""
    top, labels = probs.max(dim=0)
    return torch.where(top < prob_thd, torch.zeros_like(labels), labels)


def segment_logits(image: torch.Tensor, forward: CropForward, geo: Geometry, max_batch: int = 16,
                   device: torch.device | None = None) -> torch.Tensor:
    """image [3, H0, W0] RGB 0-255 -> image logits [K, H0, W0] (before the logit scale)."""
    device = device or image.device
    resized = resize_image(image.to(device), geo)
    crops, wins = crops_of(resized, geo)
    outs = [forward(crops[sl].contiguous()) for sl in batches(len(wins), max_batch)]
    return stitch(torch.cat(outs).to(device).float(), wins, tuple(resized.shape[-2:]),
                  tuple(image.shape[-2:]), geo.crop)

"""The benchmarks' on-disk layouts, as mmsegmentation's dataset classes and the official configs
read them, and the check of every mask before the first image is run.

A layout is data (`LAYOUTS`): image and mask folders under the dataset root, their suffixes,
the split file (None: the image folder is scanned, sorted, as mmsegmentation does without an
`ann_file`), `reduce_zero_label`, and the class count. Each entry cites where it comes from.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fsa_deploy.errors import FSAError

IGNORE_INDEX = 255  # mmseg IoUMetric's default ignore_index (mmseg/evaluation/metrics/iou_metric.py)
FOLDER_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class Layout:
    """Where a benchmark keeps its files, relative to `--root` (the configs' `data_root`)."""

    img_dir: str
    ann_dir: str
    img_suffix: str
    seg_suffix: str
    split: str | None  # the configs' ann_file; None: scan img_dir (recursively, sorted)
    reduce_zero_label: bool  # mask 0 -> ignore, k -> k - 1 (mmseg LoadAnnotations)
    num_classes: int | None  # None: the class file decides (folder)
    root_hint: str  # what `--root` should name, for error messages and docs/EVALUATION.md
    source: str


LAYOUTS: dict[str, Layout] = {
    "voc21": Layout("JPEGImages", "SegmentationClass", ".jpg", ".png", "ImageSets/Segmentation/val.txt", False, 21,
                    "VOCdevkit/VOC2012",
                    "chi-chi-zx/FSA configs/cfg_voc21.py; open-mmlab/mmsegmentation mmseg/datasets/voc.py"),
    "voc20": Layout("JPEGImages", "SegmentationClass", ".jpg", ".png", "ImageSets/Segmentation/val.txt", True, 20,
                    "VOCdevkit/VOC2012",
                    "chi-chi-zx/FSA configs/cfg_voc20.py, custom_datasets.py PascalVOC20Dataset"),
    "context60": Layout("JPEGImages", "SegmentationClassContext", ".jpg", ".png",
                        "ImageSets/SegmentationContext/val.txt", False, 60, "VOCdevkit/VOC2010",
                        "chi-chi-zx/FSA configs/cfg_context60.py, custom_datasets.py PascalContext60Dataset"),
    "context59": Layout("JPEGImages", "SegmentationClassContext", ".jpg", ".png",
                        "ImageSets/SegmentationContext/val.txt", True, 59, "VOCdevkit/VOC2010",
                        "chi-chi-zx/FSA configs/cfg_context59.py (LoadAnnotations reduce_zero_label=True)"),
    "coco-object": Layout("images/val2017", "annotations/val2017", ".jpg", "_instanceTrainIds.png", None, False, 81,
                          "coco_stuff164k",
                          "chi-chi-zx/FSA configs/cfg_coco_object.py, custom_datasets.py COCOObjectDataset"),
    "coco-stuff": Layout("images/val2017", "annotations/val2017", ".jpg", "_labelTrainIds.png", None, False, 171,
                         "coco_stuff164k",
                         "chi-chi-zx/FSA configs/cfg_coco_stuff164k.py; mmseg/datasets/coco_stuff.py"),
    "cityscapes": Layout("leftImg8bit/val", "gtFine/val", "_leftImg8bit.png", "_gtFine_labelTrainIds.png", None,
                         False, 19, "cityscapes",
                         "chi-chi-zx/FSA configs/cfg_city_scapes.py; mmseg/datasets/cityscapes.py"),
    "ade20k": Layout("images/validation", "annotations/validation", ".jpg", ".png", None, True, 150,
                     "ADEChallengeData2016",
                     "chi-chi-zx/FSA configs/cfg_ade20k.py; mmseg/datasets/ade.py (reduce_zero_label=True)"),
    "folder": Layout("images", "masks", "", ".png", None, False, None, "a folder holding images/ and masks/",
                     "fsa-deploy's own layout for users' data"),
}
DATASETS = tuple(LAYOUTS)
# `fsa eval paper --root DATA`: each benchmark's data_root under mmsegmentation's data/ folder
# (open-mmlab/mmsegmentation docs/en/user_guides/2_dataset_prepare.md; the official configs' data_root)
PAPER_ROOTS = {"voc21": "VOCdevkit/VOC2012", "voc20": "VOCdevkit/VOC2012", "context60": "VOCdevkit/VOC2010",
               "context59": "VOCdevkit/VOC2010", "coco-object": "coco_stuff164k", "coco-stuff": "coco_stuff164k",
               "cityscapes": "cityscapes", "ade20k": "ade/ADEChallengeData2016"}


@dataclass(frozen=True)
class Item:
    """One image of the split and its mask; `name` is its path relative to the image folder,
    without the suffix (the split file's entry), and keys the work files."""

    name: str
    image: Path
    mask: Path


def layout_of(dataset: str) -> Layout:
    if dataset not in LAYOUTS:
        raise FSAError(f"dataset {dataset!r}: unknown (choose from {', '.join(DATASETS)})")
    return LAYOUTS[dataset]


def present(dataset: str, root: Path) -> bool:
    """Whether `root` holds the benchmark: its image and mask folders and its split file (COCO-Object
    needs its own masks, made by the official datasets/cvt_coco_object.py)."""
    lay = layout_of(dataset)
    if not ((root / lay.img_dir).is_dir() and (root / lay.ann_dir).is_dir()):
        return False
    if lay.split:
        return (root / lay.split).is_file()
    return any((root / lay.ann_dir).rglob(f"*{lay.seg_suffix}"))


def _inside(root: Path, rel: str, what: str) -> Path:
    """root / rel, refused when a split entry would leave the root (`..`, an absolute path)."""
    p = (root / rel).resolve()
    if not p.is_relative_to(root.resolve()):
        raise FSAError(f"{what}: entry {rel!r} leaves {root}")
    return root / rel


def _split_names(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise FSAError(f"{path}: unreadable split file ({type(e).__name__})") from e
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def _scan(img_dir: Path, suffix: str) -> list[str]:
    """Names (relative, without suffix) of the images under img_dir, in mmseg's order: sorted by
    the image path (suffix included)."""
    found = []
    for dirpath, _, files in os.walk(img_dir):
        for f in files:
            rel = str((Path(dirpath) / f).relative_to(img_dir))
            if (f.endswith(suffix) if suffix else Path(f).suffix.lower() in FOLDER_IMAGE_SUFFIXES):
                found.append(rel)
    if not suffix:  # folder: x.png and x.jpg would both be scored against masks/x.png
        seen: dict[str, str] = {}
        for rel in sorted(found):
            stem = str(Path(rel).with_suffix(""))
            if stem in seen:
                raise FSAError(f"{img_dir}: {seen[stem]} and {rel} both map to the mask {stem}.png; keep one")
            seen[stem] = rel
    return [rel[: len(rel) - len(suffix)] for rel in sorted(found)]


def items(dataset: str, root: str | os.PathLike[str], split: str | None = None, limit: int | None = None) -> list[Item]:
    """The split's images and masks, in the split's order; the first `limit` of them."""
    lay = layout_of(dataset)
    base = Path(root)
    if not base.is_dir():
        raise FSAError(f"--root {root}: no such folder (expected {lay.root_hint})")
    img_dir, ann_dir = base / lay.img_dir, base / lay.ann_dir
    for d in (img_dir, ann_dir):
        if not d.is_dir():
            raise FSAError(f"--root {root}: no {d.relative_to(base)}/ folder (is --root {lay.root_hint}?)")
    split_file = Path(split) if split else (base / lay.split if lay.split else None)
    if split_file is not None and not split_file.is_file():
        raise FSAError(f"{'--split ' if split else ''}{split_file}: no such split file")
    if split_file is not None:
        names = _split_names(split_file)
        what = str(split_file)
    else:
        names = _scan(img_dir, lay.img_suffix)
        what = str(img_dir)
    if not names:
        raise FSAError(f"{what}: empty split (no images)")
    names = names[:limit] if limit else names
    out = []
    for name in names:
        if lay.img_suffix:
            image = _inside(img_dir, name + lay.img_suffix, what)
        else:  # folder: the split may name a stem (any image suffix) or a file name
            image = _find_image(img_dir, name, what)
        stem = name if lay.img_suffix else str(Path(name).with_suffix(""))
        mask = _inside(ann_dir, stem + lay.seg_suffix, what)
        if not image.is_file():
            raise FSAError(f"{image}: no such image (listed in {what})")
        if not mask.is_file():
            raise FSAError(f"{image}: no mask ({mask} missing)")
        out.append(Item(stem, image, mask))
    return out


def _find_image(img_dir: Path, name: str, what: str) -> Path:
    direct = _inside(img_dir, name, what)
    if direct.suffix.lower() in FOLDER_IMAGE_SUFFIXES and direct.is_file():
        return direct
    for suf in FOLDER_IMAGE_SUFFIXES:
        for s in (suf, suf.upper()):
            p = _inside(img_dir, name + s, what)
            if p.is_file():
                return p
    return direct


# ---------------------------------------------------------------- masks


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image as decoded (EXIF orientation applied), from its header only."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            orientation = img.getexif().get(0x0112, 1)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise FSAError(f"{path}: unreadable image ({type(e).__name__})") from e
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def read_raw_mask(path: Path) -> np.ndarray:
    """A mask's values as stored (pillow, unchanged: palette indices for VOC's P-mode PNGs), int64 [H, W]."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
                raise FSAError(f"{path}: mask of mode {img.mode}: expected a single-channel PNG of class indices")
            m = np.asarray(img).astype(np.int64)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise FSAError(f"{path}: unreadable mask ({type(e).__name__})") from e
    if m.ndim != 2:
        raise FSAError(f"{path}: mask of shape {list(m.shape)}: expected a single-channel PNG of class indices")
    return m


def reduce_zero(m: np.ndarray) -> np.ndarray:
    """mmseg's reduce_zero_label: 0 -> 255 (ignore), k -> k - 1, 255 stays 255."""
    m = m.copy()
    m[m == 0] = 256  # becomes 255 below
    m -= 1
    m[m == 254] = IGNORE_INDEX
    return m


def read_mask(path: Path, reduce_zero_label: bool) -> np.ndarray:
    """A label map as mmseg's LoadAnnotations gives it, int64 [H, W]; reduce_zero_label: 0 -> 255, k -> k - 1."""
    m = read_raw_mask(path)
    return reduce_zero(m) if reduce_zero_label else m


def check_mask(item: Item, reduce_zero_label: bool, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
    """One line naming the file (and the value) when the mask cannot be scored. The values are
    checked as stored, before reduce_zero_label's shift: a 16-bit 256 would become the ignore
    index there, silently."""
    raw = read_raw_mask(item.mask)
    h, w = image_size(item.image)
    if raw.shape != (h, w):
        raise FSAError(f"{item.mask}: mask of {raw.shape[1]}x{raw.shape[0]} pixels but its image {item.image} "
                       f"is {w}x{h}")
    lo, hi = (1, num_classes) if reduce_zero_label else (0, num_classes - 1)
    ok = (raw == ignore_index) | ((raw >= lo) & (raw <= hi))
    if reduce_zero_label:
        ok |= raw == 0
    if not ok.all():
        value = int(raw[~ok][0])
        what = (f"0 (ignore) or a class 1-{num_classes} (reduce_zero_label)" if reduce_zero_label
                else f"a class 0-{num_classes - 1}")
        raise FSAError(f"{item.mask}: label value {value} is neither {what} nor the ignore index {ignore_index}")


def check_all(found: list[Item], reduce_zero_label: bool, num_classes: int,
              ignore_index: int = IGNORE_INDEX) -> Iterator[int]:
    """Check every mask before the first image runs; yields the count done (for a progress line)."""
    for i, item in enumerate(found):
        check_mask(item, reduce_zero_label, num_classes, ignore_index)
        yield i + 1

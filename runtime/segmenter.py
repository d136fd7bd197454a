"""The Python API of `fsa segment`, as short as the command:

    seg = Segmenter.from_artifact("artefacts/vit-b16").set_classes("cat; kitty, dog, grass")
    seg.segment("photo.jpg").save("out", "photo")

The pipeline is fsa_deploy.runtime.pipeline's (resize, windows, stitching, post-processing, in
numpy on the host) around the backend's crop forward; class embeddings come from the backend's
text graph through runtime.text's on-disk cache. No torch here: a torch tensor given as an image
or as text embeddings is converted at the door.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from fsa_deploy.contract import IMAGE_ONNX, TOKENIZER_VOCAB, UNLABELLED, UNLABELLED_NAME, UNLABELLED_WIDE
from fsa_deploy.errors import FSAError
from fsa_deploy.ranges import CROPS_PER_CALL, PROB_THD
from fsa_deploy.runtime import gate
from fsa_deploy.runtime.artifact import Artifact
from fsa_deploy.runtime.backends.base import Backend, as_backend
from fsa_deploy.runtime.backends.select import select_backend
from fsa_deploy.runtime.images import encode, load_image, to_rgb
from fsa_deploy.runtime.pipeline import Geometry, canvas_logits, postprocess, windows
from fsa_deploy.runtime.schema import refuse_artifact_file
from fsa_deploy.runtime.text import Vocabulary, cached_classifier, default_cache_dir, split_classes

ImageLike = Any  # a path, a PIL image, numpy uint8 HWC or CHW, or torch [3, H, W] (0-255)
Classes = Vocabulary | str | Sequence[str]


class _DefaultCache:
    """Marker for `cache_dir`: models.text.default_cache_dir() when the Segmenter is made."""

    def __repr__(self) -> str:
        return "DEFAULT_CACHE"


DEFAULT_CACHE = _DefaultCache()


# ---------------------------------------------------------------- inputs


def as_vocabulary(classes: Classes) -> Vocabulary:
    """A Vocabulary, the CLI string ("cat; kitty, dog") or a list of names ("cat; kitty" = synonyms)."""
    if isinstance(classes, Vocabulary):
        return classes
    lines = split_classes(classes) if isinstance(classes, str) else [str(c) for c in classes]
    if not any(n.strip() for line in lines for n in line.split(";")):
        raise FSAError("classes: no class names (K = 0)")
    return Vocabulary.from_lines(lines, "classes")


def host_array(a: Any) -> np.ndarray:
    """A numpy array, or a torch tensor copied to host numpy (torch is never imported here)."""
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "detach") and hasattr(a, "cpu"):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def as_image(image: ImageLike) -> tuple[np.ndarray, str | None]:
    """Any accepted image -> (uint8 [3, H, W] RGB, the path it came from or None)."""
    if isinstance(image, (str, os.PathLike)):
        return load_image(image), str(image)
    _refuse_nonfinite(image)
    if isinstance(image, Image.Image):
        t = to_rgb(ImageOps.exif_transpose(image)).transpose(2, 0, 1)
    elif isinstance(image, np.ndarray):
        t = _from_numpy(image)
    elif type(image).__module__.split(".")[0] == "torch":
        if image.dim() != 3 or image.shape[0] != 3:
            raise FSAError(f"image tensor of shape {list(image.shape)}: expected [3, H, W] RGB 0-255")
        t = host_array(image)
        if t.dtype != np.uint8:
            t = np.clip(np.round(t.astype(np.float32)), 0, 255).astype(np.uint8)
    else:
        raise FSAError(f"image of type {type(image).__name__}: give a path, a PIL image, "
                       "a numpy HWC uint8 array or a torch [3, H, W] tensor")
    if t.shape[1] == 0 or t.shape[2] == 0:
        raise FSAError(f"image of shape {list(t.shape)}: no pixels")
    return np.ascontiguousarray(t), None


def _refuse_nonfinite(image: Any) -> None:
    """A float image with NaN or Infinity would become a silent label map of garbage: refuse it."""
    if type(image).__module__.split(".")[0] == "torch":
        if not (image.is_floating_point() or image.is_complex()):
            return
        image = host_array(image.float() if image.is_floating_point() else image)
    if isinstance(image, np.ndarray) and image.dtype.kind in "fc":
        bad = int((~np.isfinite(image)).sum())
        if bad:
            raise FSAError(f"image {image.dtype} {list(image.shape)}: {bad} NaN or infinite values; "
                           "expected RGB 0-255")


def _from_numpy(a: np.ndarray) -> np.ndarray:
    """HWC (as Pillow gives) or CHW (as runtime.images.load_image gives; HWC wins when both fit)."""
    if a.dtype == np.uint8 and a.ndim == 3 and a.shape[0] == 3 and a.shape[2] != 3:
        return a
    if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
        raise FSAError(f"numpy image {a.dtype} {list(a.shape)}: expected uint8 [H, W, 3] RGB, [3, H, W] "
                       "(load_image's) or [H, W] grey")
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return a.transpose(2, 0, 1)


# ---------------------------------------------------------------- drawing


PALETTE_FILE = Path(__file__).parent / "data" / "palette.txt"  # data: bright, distinct, none near black


@functools.cache
def palette() -> np.ndarray:
    """[256, 3] uint8: class i's colour at row i (runtime/data/palette.txt); row 255, the
    unlabelled label, is grey and drawn transparent (label PNGs carry it as their tRNS entry)."""
    rows = [line.split() for line in PALETTE_FILE.read_text().splitlines() if line.strip() and line[0] != "#"]
    out = np.full((256, 3), 128, dtype=np.uint8)
    out[: len(rows)] = np.asarray(rows, dtype=np.uint8)[:UNLABELLED]
    return out


def class_color(index: int) -> list[int] | None:
    """A label's colour as JSON gives it: None for unlabelled (transparent)."""
    return None if index in (UNLABELLED, UNLABELLED_WIDE) else palette()[index % UNLABELLED].tolist()


def label_image(labels: np.ndarray) -> Image.Image:
    """Palette PNG of class indices, index 255 (unlabelled) transparent; above 255 classes, 16-bit grey
    (a palette holds 256 colours; unlabelled is 65535 there)."""
    if labels.max(initial=0) <= UNLABELLED and not (labels == UNLABELLED_WIDE).any():
        img = Image.fromarray(labels.astype(np.uint8), mode="P")
        img.putpalette(palette().tobytes())
        if (labels == UNLABELLED).any():
            img.info["transparency"] = UNLABELLED  # PNG tRNS: viewers (and the page) show the photo there
        return img
    return Image.fromarray(labels.astype(np.uint16))


def _text_width(draw: ImageDraw.ImageDraw, text: str, font: Any) -> tuple[str, int, int]:
    """The text as the font can draw it (the bitmap fallback font is latin-1 only), its size."""
    try:
        box = draw.textbbox((0, 0), text, font=font)
    except UnicodeEncodeError:
        text = text.encode("latin-1", "replace").decode("latin-1")
        box = draw.textbbox((0, 0), text, font=font)
    return text, math.ceil(box[2] - box[0]), math.ceil(box[3] - box[1])


def _rgb(c: Sequence[int]) -> tuple[int, int, int]:
    return int(c[0]), int(c[1]), int(c[2])


def with_legend(img: Image.Image, entries: Sequence[tuple[str, tuple[int, int, int]]]) -> Image.Image:
    """`img` above a legend: a swatch and a label per entry, laid out in rows that wrap."""
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    items = [(*_text_width(probe, label, font), color) for label, color in entries]
    pad, gap = 4, 12
    row_h = max([h for _, _, h, _ in items] + [10]) + 2 * pad
    sw = row_h - 2 * pad
    widths = [sw + pad + w + gap for _, w, _, _ in items]
    width = max([img.width, *(w + 2 * pad for w in widths)])
    places, x, y = [], pad, 0
    for w in widths:
        if x > pad and x + w > width:
            x, y = pad, y + row_h
        places.append((x, y))
        x += w
    legend_h = y + row_h if items else 0
    canvas = Image.new("RGB", (width, img.height + legend_h), (255, 255, 255))
    canvas.paste(img, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for (text, _, _, color), (x, y) in zip(items, places):
        top = img.height + y + pad
        draw.rectangle((x, top, x + sw - 1, top + sw - 1), fill=color, outline=(0, 0, 0))
        draw.text((x + sw + pad, top), text, fill=(0, 0, 0), font=font)
    return canvas


# ---------------------------------------------------------------- the result


@dataclass
class SegmentationResult:
    """One image's segmentation. `labels` [H, W] class indices, `image` the RGB input [H, W, 3];
    `probs` [C, H, W] class probabilities (synonyms merged) and `logits` [K, H, W] image logits
    before the scale only if asked (Segmenter keep_probs / keep_logits): they are C or K
    full-size planes, the memory that grows with classes x pixels; None otherwise."""

    labels: np.ndarray
    probs: np.ndarray | None
    classes: list[str]
    image: np.ndarray
    timings: dict[str, float]
    backend: str
    artifact_sha256: str | None = None
    source: str | None = None
    prob_thd: float = 0.0
    logits: np.ndarray | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the original image."""
        return self.labels.shape[0], self.labels.shape[1]

    def fractions(self) -> dict[int, float]:
        """Label -> fraction of the pixels, for the labels present (unlabelled, 255, last when present)."""
        counts = np.bincount(self.labels.ravel(), minlength=len(self.classes))
        return {int(i): float(c) / self.labels.size for i, c in enumerate(counts) if c}

    def name_of(self, index: int) -> str:
        return UNLABELLED_NAME if index >= len(self.classes) else self.classes[index]

    def summary(self) -> dict[str, Any]:
        """What `stem.json` holds: `classes` lists the labels present, "unlabelled" (255, color null)
        for pixels under prob_thd."""
        return {
            "image": self.source,
            "height": self.size[0],
            "width": self.size[1],
            "classes": [{"index": i, "name": self.name_of(i), "fraction": round(f, 6),
                         "color": class_color(i)} for i, f in self.fractions().items()],
            "vocabulary": self.classes,
            "prob_thd": self.prob_thd,
            "timings_ms": self.timings,
            "backend": self.backend,
            "artifact_sha256": self.artifact_sha256,
        }

    def overlay(self, alpha: float = 0.5) -> Image.Image:
        """The image blended with the class colours (unlabelled pixels left as they are), above a
        legend of the labels present."""
        out = np.empty_like(self.image, dtype=np.uint8, order="C")
        step = max(1, (4 << 20) // max(1, 12 * self.image.shape[1]))  # bands of ~4 MiB float32: flat memory
        for r in range(0, out.shape[0], step):
            lab = self.labels[r : r + step]
            colors = palette()[lab % UNLABELLED].astype(np.float32)
            a = np.where(lab >= len(self.classes), np.float32(0), np.float32(alpha))[..., None]
            blend = self.image[r : r + step].astype(np.float32) * (1 - a) + colors * a
            out[r : r + step] = np.clip(blend + 0.5, 0, 255).astype(np.uint8)
        img = Image.fromarray(out)
        entries = [(f"{legend_name(self.name_of(i))} {100 * f:.1f}%", _rgb(class_color(i) or (255, 255, 255)))
                   for i, f in self.fractions().items()]
        return with_legend(img, entries)

    def write(self, out_dir: str | os.PathLike[str], stem: str) -> dict[str, Path]:
        """stem.png, stem_overlay.png and stem.json in `out_dir`, through the output gate: all three
        written under temporary names and renamed only once all three are complete, then recorded
        as ours in the folder's manifest."""
        out = gate.mkdir(out_dir)
        paths = {"labels": out / f"{stem}.png", "overlay": out / f"{stem}_overlay.png", "summary": out / f"{stem}.json"}
        for p in paths.values():  # never over meta.json or a file it records
            refuse_artifact_file(p, "out_dir")
        gate.write_group({paths["labels"]: encode(label_image(self.labels)),
                          paths["overlay"]: encode(self.overlay()),
                          paths["summary"]: (json.dumps(self.summary(), indent=2) + "\n").encode()})
        return paths

    save = write  # the Python API's name


LEGEND_CHARS = 48  # a class name longer than this is cut in the legend (a 100 kB name made a 500,000 px image)


def legend_name(name: str) -> str:
    return name if len(name) <= LEGEND_CHARS else name[: LEGEND_CHARS - 3] + "..."


# ---------------------------------------------------------------- the segmenter


def protocol_problems(crop: int, **values: float | None) -> list[tuple[str, str]]:
    """(parameter, what is wrong) for each bad protocol parameter (prob_thd, stride, short_side,
    long_side; None is the default): the caller names them as its user spells them (the CLI's
    `--prob-thd`, the served model's input `PROB_THD`)."""
    bounds = {"prob_thd": (PROB_THD.lo, PROB_THD.hi, f"must be between {PROB_THD.lo:g} and {PROB_THD.hi:g}"),
              "stride": (1, crop, f"must be between 1 and the crop size {crop}"),
              "short_side": (1, math.inf, "must be >= 1"), "long_side": (1, math.inf, "must be >= 1")}
    return [(name, bounds[name][2]) for name, v in values.items()
            if v is not None and not bounds[name][0] <= v <= bounds[name][1]]


@dataclass
class Segmenter:
    """A backend, the geometry and post-processing options, and the current classes.

    `model_key` names the text encoder for the class-embedding cache (the artefact's
    image.onnx sha256 and the backend's text graph); `cache_dir` None disables the cache.
    `keep_probs` / `keep_logits` keep the full-resolution class probabilities / image logits
    in the result (C or K planes of the image's size); by default only the labels are made.
    """

    backend: Backend  # an object with name/run/encode_text not derived from Backend is wrapped (as_backend)
    crop: int
    logit_scale: float
    templates: list[str] = field(repr=False)
    model_key: str
    batch: int = 16  # crops per backend call (CROPS_PER_CALL; the CLI's --batch)
    cache_dir: str | os.PathLike[str] | None | _DefaultCache = DEFAULT_CACHE
    prob_thd: float = 0.0
    below_thd: int | None = None  # the label under prob_thd: None is unlabelled (255); `fsa eval` gives 0
    stride: int | None = None
    short_side: int | None = None  # the resize (Geometry): default the crop, as the official configs at 336
    long_side: int | None = None
    keep_logits: bool = False
    keep_probs: bool = False
    vocab_file: str | os.PathLike[str] | None = None  # the tokenizer's merges (None: open_clip's)
    artifact_sha256: str | None = None
    backend_reason: str = ""
    vocabulary: Vocabulary | None = field(default=None, init=False)
    text: np.ndarray | None = field(default=None, init=False, repr=False)
    last_cache_hit: bool | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.backend = as_backend(self.backend)
        if isinstance(self.cache_dir, _DefaultCache):
            self.cache_dir = default_cache_dir()
        CROPS_PER_CALL.check(self.batch)
        for name, bad in protocol_problems(self.crop, prob_thd=self.prob_thd, stride=self.stride,
                                           short_side=self.short_side, long_side=self.long_side):
            raise FSAError(f"--{name.replace('_', '-')} {getattr(self, name)}: {bad}")  # the CLI's spelling
        self.geometry = Geometry(crop=self.crop, stride=self.stride, short_side=self.short_side,
                                 long_side=self.long_side)

    @classmethod
    def from_artifact(cls, folder: str | os.PathLike[str] | Artifact, backend: Backend | str = "auto", *,
                      threads: int | None = None, precision: str | None = None, **options: Any) -> Segmenter:
        """A Segmenter on an artefact folder. `backend`: auto, trt, onnx, torch, or a Backend
        object; `threads`/`precision` go to runtime.backends.select.select_backend; `options`
        are the dataclass fields (batch, cache_dir, prob_thd, stride, short_side, long_side, keep_probs,
        keep_logits)."""
        art = folder if isinstance(folder, Artifact) else Artifact.load(folder)
        if isinstance(backend, str):
            opened = select_backend(art, backend, threads=threads, precision=precision)
            backend, reason = opened.backend, opened.reason
        else:
            reason = "given"
        vocab = art.path(TOKENIZER_VOCAB) if TOKENIZER_VOCAB in art.files() else None  # sha256 checked
        sha = art.sha256(IMAGE_ONNX)
        if not sha:
            raise FSAError(f"{art.root}: meta.json records no {IMAGE_ONNX} hash; re-export")
        info = art.info
        return cls(backend, crop=info.crop, logit_scale=info.logit_scale, templates=info.templates, model_key=sha,
                   artifact_sha256=sha, backend_reason=reason,
                   vocab_file=vocab, **options)

    def set_classes(self, classes: Classes, text_embeddings: Any = None) -> Segmenter:
        """Text embeddings of the classes (cached on disk); `last_cache_hit` says if the cache had them.

        `text_embeddings` [K, D] (numpy or torch; one row per query, L2-normalised) skips the text
        graph and the cache: to run two backends on the very same classifier, so that only crop
        forwards differ.
        """
        vocab = as_vocabulary(classes)
        if text_embeddings is not None:
            t = host_array(text_embeddings)
            if t.ndim != 2 or t.shape[0] != len(vocab.queries):
                raise FSAError(f"text_embeddings of shape {list(t.shape)}: expected "
                               f"[{len(vocab.queries)}, D], one row per query")
            self.text = np.ascontiguousarray(t, dtype=np.float32)
            self.vocabulary, self.last_cache_hit = vocab, None
            return self
        text_key = self.backend.text_key
        cache = None if isinstance(self.cache_dir, _DefaultCache) else self.cache_dir
        t, hit = cached_classifier(cache, f"{self.model_key}|{text_key}", self.backend.encode_text, vocab.queries,
                                   self.templates, self.vocab_file)
        self.text = np.ascontiguousarray(t, dtype=np.float32)
        self.vocabulary, self.last_cache_hit = vocab, hit
        return self

    def _forward(self, crops: np.ndarray) -> np.ndarray:
        assert self.text is not None
        return self.backend.run(crops, self.text)

    def segment(self, image: ImageLike) -> SegmentationResult:
        """One image (path, PIL, numpy HWC uint8, torch [3, H, W]) -> its SegmentationResult."""
        if self.text is None or self.vocabulary is None:
            raise FSAError("no classes set: call set_classes(...) before segment(...)")
        t0 = time.perf_counter()
        img, source = as_image(image)
        h, w = img.shape[-2:]
        t1 = time.perf_counter()
        canvas = canvas_logits(img, self._forward, self.geometry, self.batch)
        if not np.isfinite(canvas).all():  # argmax would make every such pixel class 0, silently
            bad = int((~np.isfinite(canvas)).sum())
            raise FSAError(f"{source or 'image'}: the {self.backend.name} backend gave {bad} NaN or infinite logits "
                           f"of {canvas.size} (a broken engine or weights; `fsa validate` compares with the reference)")
        t2 = time.perf_counter()
        post = postprocess(canvas, (h, w), self.vocabulary.query_class, self.logit_scale, self.prob_thd,
                           keep_probs=self.keep_probs, keep_logits=self.keep_logits, below=self.below_thd)
        t3 = time.perf_counter()
        timings = {"preprocess": 1e3 * (t1 - t0), "forward": 1e3 * (t2 - t1), "postprocess": 1e3 * (t3 - t2),
                   "total": 1e3 * (t3 - t0), "crops": len(windows(*self.geometry.resized_size(h, w), self.geometry))}
        return SegmentationResult(
            labels=post.labels, probs=post.probs, classes=self.vocabulary.names, image=img.transpose(1, 2, 0),
            timings={k: round(v, 3) for k, v in timings.items()}, backend=self.backend.name,
            artifact_sha256=self.artifact_sha256, source=source, prob_thd=self.prob_thd, logits=post.logits)


class SegmenterCache:
    """One shallow copy of `base` per class list, the least recently used dropped past `size`: a
    request's classes never leak into another's, and a repeated class list skips set_classes (the
    in-process `fsa app` and Triton's fsa_segment). Not locked: the caller serialises."""

    def __init__(self, base: Segmenter, size: int) -> None:
        self.base, self.size = base, size
        self.segmenters: OrderedDict[Vocabulary, Segmenter] = OrderedDict()

    def get(self, vocab: Vocabulary) -> Segmenter:
        seg = self.segmenters.pop(vocab, None)
        if seg is None:
            seg = copy.copy(self.base).set_classes(vocab)
        self.segmenters[vocab] = seg  # most recent last
        while len(self.segmenters) > self.size:
            self.segmenters.popitem(last=False)
        return seg

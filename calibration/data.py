"""Calibration data: crops cut as the pipeline cuts them, the vocabulary's text embeddings, the .npz
cache in the artefact folder (the reader ModelOpt pulls batches from is calibration.reader)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fsa_deploy.contract import TEXT_ONNX, TOKENIZER_VOCAB, Role
from fsa_deploy.errors import FSAError
from fsa_deploy.models.text import openai_templates
from fsa_deploy.runtime import artifact as A
from fsa_deploy.runtime import gate
from fsa_deploy.runtime.backends.onnxrt import CPU_EP, OnnxRuntimeBackend
from fsa_deploy.runtime.images import expand_images, load_image, sample_photos
from fsa_deploy.runtime.pipeline import Geometry, crops_of, resize_image
from fsa_deploy.runtime.schema import FileRecord
from fsa_deploy.runtime.text import DEFAULT_CLASSES, Vocabulary, classifier

if TYPE_CHECKING:
    from fsa_deploy.calibration.quantize import CalibrationOptions
    from fsa_deploy.runtime.text import Vocabulary


CACHE_PREFIX = "calibration-"


@dataclass(frozen=True)
class CalibrationData:
    crops: np.ndarray  # float32 [N, 3, S, S], RGB 0-255, as fed to image.onnx
    text: np.ndarray  # float32 [K, D], rows L2-normalised
    images: list[str]  # the image files the crops came from
    cache: str | None = None  # name of the .npz in the artefact folder
    cache_hit: bool = False




# ---------------------------------------------------------------- calibration images and crops


def image_files(sources: Sequence[str]) -> list[Path]:
    """--images (default: scikit-image's photos) as runtime.images.expand_images expands them."""
    files, errors = expand_images(sources or sample_photos(), "--images")
    if errors:
        raise FSAError(errors[0])
    if not files:
        raise FSAError("--images: no calibration images (scikit-image's sample photos are not installed)")
    return files


def pipeline_crops(files: Iterable[Path], crop: int, count: int) -> tuple[np.ndarray, list[str]]:
    """The first `count` crops of the images, cut as `fsa segment` cuts them (default geometry)."""
    geo, crops, used, have = Geometry(crop=crop), [], [], 0
    for f in files:
        batch, _ = crops_of(resize_image(load_image(f), geo), geo)
        crops.append(batch[: count - have])
        used.append(str(f))
        have += len(crops[-1])
        if have >= count:
            break
    return np.concatenate(crops).astype(np.float32), used


# ---------------------------------------------------------------- text embeddings


def vocabulary_text(art: A.Artifact, vocab: Vocabulary) -> np.ndarray:
    """T [K, D] of the vocabulary, encoded by the artefact's text.onnx with the recorded templates.

    Real class embeddings rather than random vectors: the logits and the feedback inputs
    then have the ranges they have in use, which is what the calibrator measures.
    """
    backend = OnnxRuntimeBackend(art, image_file=None, providers=[CPU_EP])  # the text graph only
    vocab_file = art.path(TOKENIZER_VOCAB) if TOKENIZER_VOCAB in art.files() else None
    templates = list(art.info.recorded.templates or openai_templates())
    return classifier(backend.encode_text, vocab.queries, templates, vocab_file=vocab_file)


def default_vocabulary() -> Vocabulary:
    return Vocabulary.from_file(DEFAULT_CLASSES)


# ---------------------------------------------------------------- the cache (.npz in the artefact folder)


def data_key(art: A.Artifact, files: Sequence[Path], count: int, vocab: Vocabulary) -> str:
    """What the calibration tensors depend on: image contents, count, crop size, text side."""
    blob = json.dumps({
        "images": [A.sha256_file(f) for f in files],
        "count": count,
        "crop": art.info.recorded.crop,
        "text": art.sha256(TEXT_ONNX),
        "queries": vocab.queries,
    })
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_cached(art: A.Artifact, name: str) -> CalibrationData | None:
    """The cached tensors, or None when absent or changed (a damaged cache is recomputed, not trusted)."""
    if name not in art.files() or not (art.root / name).is_file():
        return None
    try:
        with np.load(art.path(name)) as z:
            data = CalibrationData(z["crops"], z["text_embeddings"], [str(x) for x in z["images"]], name, True)
    except (FSAError, OSError, KeyError, ValueError):
        return None
    for key, array in (("crops", data.crops), ("text_embeddings", data.text)):
        # its hash matches meta.json, so it is no accident: scales calibrated on NaN are not a graph
        if array.dtype.kind != "f" or not np.isfinite(array).all():
            what = "non-finite values (NaN or Infinity)" if array.dtype.kind == "f" else f"dtype {array.dtype}"
            raise FSAError(f"{art.root / name}: array {key!r} holds {what}; refused as calibration data "
                           "(delete it, or pass --no-calibration-cache)")
    return data


def save_cache(art: A.Artifact, name: str, data: CalibrationData) -> None:
    """Write the .npz atomically, drop older caches (they hold crops: tens of MB each), record it."""
    with gate.writing_into(art.root):  # calibrate replaces its own cache and records it
        for old in [n for n, info in art.file_records().items() if info.role == Role.CALIBRATION_CACHE and n != name]:
            gate.unlink(art.path(old, verify=False))  # a contained name (checked at load)
            art.forget(old)
        gate.save_npz(art.root / name, keep=False, crops=data.crops, text_embeddings=data.text,
                      images=np.array(data.images))
    art.record(name, FileRecord(role=Role.CALIBRATION_CACHE, crops=int(len(data.crops)), images=data.images))
    art.save()


def calibration_data(art: A.Artifact, files: Sequence[Path], opts: CalibrationOptions) -> CalibrationData:
    vocab = opts.classes or default_vocabulary()
    name = f"{CACHE_PREFIX}{data_key(art, files, opts.count, vocab)}.npz"
    if opts.cache and (hit := load_cached(art, name)):
        return hit
    crops, used = pipeline_crops(files, art.info.crop, opts.count)
    data = CalibrationData(crops, vocabulary_text(art, vocab), used, name if opts.cache else None)
    if opts.cache:
        save_cache(art, name, data)
    return data

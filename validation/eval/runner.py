"""Run the rows (reference, graphs, servers) over a dataset, image by image.

Image-major: each image is decoded once (by a prefetch thread, while the backends run the
previous one) and goes through every row; its confusion matrices and its pixel agreement with
the reference are written to one work file (atomically), keyed by the artefact hash, the rows,
the protocol and the contents of the image and its mask. A stopped run finds those files and
continues; the sums are the same as an uninterrupted run's, since each image's numbers are exact
integers. A damaged work file is recomputed (one warning line). `--show-dir` writes the label maps.
"""

from __future__ import annotations

import hashlib
import json
import queue
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fsa_deploy.errors import FSAError
from fsa_deploy.log import logger
from fsa_deploy.runtime import gate
from fsa_deploy.runtime.artifact import sha256_file
from fsa_deploy.runtime.images import encode
from fsa_deploy.runtime.segmenter import label_image
from fsa_deploy.validation.eval.datasets import Item, read_mask
from fsa_deploy.validation.eval.metrics import agreement, confusion

LOG = logger("validation")

Segment = Callable[[Item, np.ndarray], np.ndarray]  # (item, image [3, H, W] uint8) -> labels [H, W]
Decode = Callable[[Path], np.ndarray]  # image file -> RGB uint8 [3, H, W] (the protocol's decoder)


@dataclass
class Row:
    """One line of the table: a way to turn an image into a label map."""

    name: str
    backend: str
    graph: str | None
    segment: Segment
    identity: str  # what its numbers depend on besides the protocol (graph hash, server's artefact)
    is_reference: bool = False
    precision: str | None = None  # the reference's (fp32, or fp16 under autocast); graphs: meta.json's
    seconds: float = 0.0
    images_run: int = 0
    cm: np.ndarray | None = None
    agree: list[int] = field(default_factory=lambda: [0, 0])


def file_sha256(path: Path) -> str:
    """A file's content hash: work files are keyed by what the image and mask hold, not their sizes
    (a mask redrawn with the same byte count must not reuse the old matrices)."""
    try:
        return sha256_file(path)
    except OSError as e:
        raise FSAError(f"{path}: unreadable ({e.strerror or type(e).__name__})") from e


def work_key(artifact_sha: str, rows: list[Row], protocol: dict[str, Any], classes: list[str], item: Item) -> str:
    blob = json.dumps({"artifact": artifact_sha, "rows": [[r.name, r.identity] for r in rows],
                       "protocol": protocol, "classes": classes, "image": item.name,
                       "mask_sha256": file_sha256(item.mask), "image_sha256": file_sha256(item.image)},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:40]


def prefetch(found: list[Item], reduce_zero_label: bool, decode: Decode,
             depth: int = 2) -> Iterator[tuple[Item, Any, Any]]:
    """(item, image or the FSAError decoding it, mask) in order, decoded by a thread `depth` ahead."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        for item in found:
            if stop.is_set():
                return
            try:
                got: Any = (item, decode(item.image), read_mask(item.mask, reduce_zero_label))
            except FSAError as e:
                got = (item, e, None)
            while not stop.is_set():
                try:
                    q.put(got, timeout=0.2)
                    break
                except queue.Full:
                    continue

    t = threading.Thread(target=work, name="eval-prefetch", daemon=True)
    t.start()
    try:
        for _ in found:
            yield q.get()
    finally:
        stop.set()


class Progress:
    """A bar with ETA on stderr (tqdm when installed, else a line every few seconds)."""

    def __init__(self, total: int, enabled: bool = True, what: str = "scoring", unit: str = "image"):
        self.total, self.done, self.t0, self.last = total, 0, time.perf_counter(), 0.0
        self.what, self.unit = what, unit
        self.bar: Any = None
        self.enabled = enabled
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit=unit, desc=f"fsa eval: {what}", file=sys.stderr, dynamic_ncols=True)
            except ImportError:
                self.bar = None

    def step(self) -> None:
        self.done += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            return
        now = time.perf_counter()
        if now - self.last >= 5 or self.done == self.total:
            rate = self.done / max(now - self.t0, 1e-9)
            eta = (self.total - self.done) / rate if rate else 0
            LOG.info(f"fsa eval: {self.what} {self.done}/{self.total} {self.unit}s, {rate:.2f}/s, ETA {eta:.0f} s")
            self.last = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class ShowDir:
    """--show-dir: each image's label map from `row` (index into the rows) as a palette PNG named
    after the image (its path under the image folder, the image's own stem), as `fsa segment` writes
    NAME.png. An image whose work file is reused and whose PNG exists is not rewritten."""

    folder: Path
    row: int

    def target(self, item: Item) -> Path:
        rel = Path(item.name)
        return self.folder / rel.parent / f"{item.image.stem}.png"

    def write(self, item: Item, labels: np.ndarray) -> None:
        path = self.target(item)
        gate.mkdir(path.parent)
        gate.write_bytes(path, encode(label_image(labels)))


def run_rows(rows: list[Row], found: list[Item], k: int, ignore_index: int, reduce_zero_label: bool,
             work: Path, key_of: Callable[[Item], str], decode: Decode, progress: bool = True,
             parallel: Callable[..., Any] | None = None, show: ShowDir | None = None,
             overwrite: bool = False, what: str = "scoring") -> list[str]:
    """Sum each row's confusion over the images (work files reused); returns the failed images' lines.

    `parallel`, when given, scores the images itself (the servers' fan-out) through `score_one`.
    """
    for r in rows:
        r.cm = np.zeros((k, k), dtype=np.int64)
        r.agree = [0, 0]
    failures: list[str] = []
    paths: dict[str, Path] = {}
    todo = []
    cached_items = []
    for item in found:
        paths[item.name] = work / f"{key_of(item)}.npz"
        cached = load_work(paths[item.name], len(rows), k)
        if cached is None or (show is not None and not show.target(item).exists()):
            todo.append(item)
        else:
            cached_items.append(cached)
    if show is not None and not overwrite:
        for item in todo:
            if (t := show.target(item)).exists() or t.is_symlink():
                raise FSAError(f"--show-dir {show.folder}: {t} exists; pass --overwrite to replace it")
    bar = Progress(len(found), progress, what)
    try:
        for cached in cached_items:
            add(rows, *cached)
            bar.step()

        def one(item: Item, img: np.ndarray, gt: np.ndarray) -> None:
            labels = score_one(rows, item, img, gt, k, ignore_index, paths[item.name])
            if show is not None:
                show.write(item, labels[show.row])

        if parallel is not None:
            parallel(todo, one, failures, bar)
        else:
            for item, img, gt in prefetch(todo, reduce_zero_label, decode):
                if isinstance(img, FSAError):
                    failures.append(str(img))
                else:
                    try:
                        one(item, img, gt)
                    except FSAError as e:
                        msg = str(e)
                        failures.append(msg if msg.startswith(str(item.image)) else f"{item.image}: {msg}")
                bar.step()
    finally:
        bar.close()
    return failures


def score_one(rows: list[Row], item: Item, img: np.ndarray, gt: np.ndarray, k: int, ignore_index: int,
              path: Path) -> list[np.ndarray]:
    """Every row on one image; its matrices saved to `path` (atomically), then summed; the label maps."""
    labels, cms, agrees = [], [], []
    for r in rows:
        t0 = time.perf_counter()
        lab = np.asarray(r.segment(item, img))
        r.seconds += time.perf_counter() - t0
        r.images_run += 1
        if lab.shape != gt.shape:
            raise FSAError(f"{item.image}: row {r.name} gave a {lab.shape} label map for a {gt.shape} mask")
        labels.append(lab)
        cms.append(confusion(gt, lab, k, ignore_index))
    ref = next((lab for lab, r in zip(labels, rows) if r.is_reference), None)
    for lab in labels:
        agrees.append(agreement(lab, ref, gt, ignore_index) if ref is not None else (0, 0))
    cm, ag = np.stack(cms), np.asarray(agrees, dtype=np.int64)
    save_work(path, cm, ag)
    add(rows, cm, ag)
    return labels


def add(rows: list[Row], cm: np.ndarray, ag: np.ndarray) -> None:
    for r, c, a in zip(rows, cm, ag):
        assert r.cm is not None
        r.cm += c
        r.agree[0] += int(a[0])
        r.agree[1] += int(a[1])


def save_work(path: Path, cm: np.ndarray, ag: np.ndarray) -> None:
    gate.save_npz(path, keep=False, confusion=cm, agreement=ag)


def load_work(path: Path, n_rows: int, k: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A work file's matrices, or None when absent; a damaged one (unreadable, not this run's
    shape, negative counts) is recomputed after one warning line."""
    if not (path.is_file() or path.is_symlink()):
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            cm, ag = z["confusion"], z["agreement"]
        if cm.shape != (n_rows, k, k) or ag.shape != (n_rows, 2) or cm.dtype.kind not in "iu" \
                or ag.dtype.kind not in "iu" or (cm < 0).any() or (ag < 0).any() or (ag[:, 0] > ag[:, 1]).any():
            raise ValueError("not this run's matrices")
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        LOG.warning(f"fsa eval: warning: --work {path}: damaged ({str(e).splitlines()[0][:80] or type(e).__name__}); "
                    "recomputing that image")
        return None
    return cm.astype(np.int64), ag.astype(np.int64)

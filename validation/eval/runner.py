"""Run the rows (reference, graphs, servers) over a dataset, image by image.

Image-major: each image is decoded once (by a prefetch thread, while the backends run the
previous one) and goes through every row; its confusion matrices and its pixel agreement with
the reference are written to one work file (atomically), keyed by the artefact hash, the rows,
the protocol and the image. A stopped run finds those files and continues; the sums are the
same as an uninterrupted run's, since each image's numbers are exact integers.
"""

from __future__ import annotations

import hashlib
import json
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fsa_deploy.validation.eval.datasets import Item, read_mask
from fsa_deploy.validation.eval.metrics import agreement, confusion

from fsa_deploy.errors import FSAError

Segment = Callable[[Item, np.ndarray], np.ndarray]  # (item, image [3, H, W] uint8) -> labels [H, W]


@dataclass
class Row:
    """One line of the table: a way to turn an image into a label map."""

    name: str
    backend: str
    graph: str | None
    segment: Segment
    identity: str  # what its numbers depend on besides the protocol (graph hash, server's artefact)
    is_reference: bool = False
    seconds: float = 0.0
    images_run: int = 0
    cm: np.ndarray | None = None
    agree: list[int] = field(default_factory=lambda: [0, 0])


def work_key(artifact_sha: str, rows: list[Row], protocol: dict[str, Any], classes: list[str], item: Item) -> str:
    blob = json.dumps({"artifact": artifact_sha, "rows": [[r.name, r.identity] for r in rows],
                       "protocol": protocol, "classes": classes, "image": item.name,
                       "mask_bytes": item.mask.stat().st_size, "image_bytes": item.image.stat().st_size},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:40]


def prefetch(found: list[Item], reduce_zero_label: bool, depth: int = 2) -> Iterator[tuple[Item, Any, Any]]:
    """(item, image or the FSAError decoding it, mask) in order, decoded by a thread `depth` ahead."""
    from fsa_deploy.runtime.images import load_image

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        for item in found:
            if stop.is_set():
                return
            try:
                got: Any = (item, load_image(item.image), read_mask(item.mask, reduce_zero_label))
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

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.done, self.t0, self.last = total, 0, time.perf_counter(), 0.0
        self.bar: Any = None
        self.enabled = enabled
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="image", file=sys.stderr, dynamic_ncols=True)
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
            print(f"fsa eval: {self.done}/{self.total} images, {rate:.2f}/s, ETA {eta:.0f} s",
                  file=sys.stderr, flush=True)
            self.last = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_rows(rows: list[Row], found: list[Item], k: int, ignore_index: int, reduce_zero_label: bool,
             work: Path, key_of: Callable[[Item], str], progress: bool = True,
             parallel: Callable[..., Any] | None = None) -> list[str]:
    """Sum each row's confusion over the images (work files reused); returns the failed images' lines.

    `parallel`, when given, scores the images itself (the servers' fan-out) through `score_one`.
    """
    for r in rows:
        r.cm = np.zeros((k, k), dtype=np.int64)
        r.agree = [0, 0]
    failures: list[str] = []
    bar = Progress(len(found), progress)
    todo = []
    try:
        for item in found:
            cached = load_work(work / f"{key_of(item)}.npz", len(rows), k)
            if cached is None:
                todo.append(item)
                continue
            add(rows, *cached)
            bar.step()
        if parallel is not None:
            parallel(todo, lambda item, img, gt: score_one(rows, item, img, gt, k, ignore_index,
                                                            work / f"{key_of(item)}.npz"),
                     failures, bar)
        else:
            for item, img, gt in prefetch(todo, reduce_zero_label):
                if isinstance(img, FSAError):
                    failures.append(str(img))
                else:
                    try:
                        score_one(rows, item, img, gt, k, ignore_index, work / f"{key_of(item)}.npz")
                    except FSAError as e:
                        msg = str(e)
                        failures.append(msg if msg.startswith(str(item.image)) else f"{item.image}: {msg}")
                bar.step()
    finally:
        bar.close()
    return failures


def score_one(rows: list[Row], item: Item, img: np.ndarray, gt: np.ndarray, k: int, ignore_index: int,
              path: Path) -> None:
    """Every row on one image; its matrices saved to `path` (atomically), then summed."""
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


def add(rows: list[Row], cm: np.ndarray, ag: np.ndarray) -> None:
    for r, c, a in zip(rows, cm, ag):
        assert r.cm is not None
        r.cm += c
        r.agree[0] += int(a[0])
        r.agree[1] += int(a[1])


def save_work(path: Path, cm: np.ndarray, ag: np.ndarray) -> None:
    from fsa_deploy.runtime.artifact import atomic_file

    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, confusion=cm, agreement=ag)


def load_work(path: Path, n_rows: int, k: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A work file's matrices, or None when absent or not of this run's shape (recomputed)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            cm, ag = z["confusion"], z["agreement"]
    except (OSError, ValueError, KeyError):
        return None
    if cm.shape != (n_rows, k, k) or ag.shape != (n_rows, 2) or cm.dtype.kind not in "iu" or (cm < 0).any():
        return None
    return cm.astype(np.int64), ag.astype(np.int64)

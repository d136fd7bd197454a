"""What the page's requests run: the runtime's Segmenter in this process, or an `fsa serve` /
Triton `fsa_segment` at --server. Both answer with the three things `fsa segment` writes.

In-process, each class list gets its own shallow copy of one Segmenter (as the Triton model
does), so a request's classes never leak into another's; one lock serialises the backend calls
(a TensorRT context is not re-entrant, ONNX Runtime already uses every core). A request runs
under its `stop` event (runtime.cancel): when its client goes away it stops at the next crop or
prompt batch and frees the lock, so the next request never waits behind abandoned work.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsa_deploy.contract import (
    IMAGE_GRAPHS,
    IMAGE_ONNX,
    OUT_LABELS,
    OUT_SUMMARY,
    SEGMENT_MODEL,
    UNLABELLED,
)
from fsa_deploy.errors import FSAError
from fsa_deploy.runtime.artifact import Artifact
from fsa_deploy.runtime.backends.base import Backend
from fsa_deploy.runtime.cancel import stoppable
from fsa_deploy.runtime.images import decode_image
from fsa_deploy.runtime.schema import MetaRecord
from fsa_deploy.runtime.segmenter import SegmentationResult, Segmenter, SegmenterCache, label_image, palette
from fsa_deploy.runtime.serve.client import SERVED, segment_inputs, server_address
from fsa_deploy.runtime.text import DEFAULT_CLASSES, Vocabulary, classes_text, usable_cache_dir

MAX_QUERIES = 1024  # class names (synonyms included) per request, as fsa_segment's default
MAX_CLASSES_CHARS = 20_000  # the classes text
CACHED_CLASS_LISTS = 32  # Segmenters (class embeddings) kept in memory, least recently used dropped


CPU_BATCH = 2  # crops per backend call on a CPU backend: a cancelled request stops within one batch (seconds)


@dataclass
class Answer:
    """One segmentation as the API returns it: fsa segment's NAME.json (as an object), NAME.png
    and, when asked (overlay=1: the page composites the label map itself), NAME_overlay.png."""

    summary: dict[str, Any]
    labels_png: bytes
    overlay_png: bytes | None = None

    def as_json(self) -> dict[str, Any]:
        out = {"summary": self.summary, "labels": base64.b64encode(self.labels_png).decode("ascii")}
        if self.overlay_png is not None:
            out["overlay"] = base64.b64encode(self.overlay_png).decode("ascii")
        return out


@dataclass
class Job:
    """One request's work: the upload, its classes and threshold, whether to draw NAME_overlay.png,
    and the event that stops it (its client went away, or the server is stopping)."""

    data: bytes
    name: str
    classes: str
    prob_thd: float | None = None
    overlay: bool = False
    stop: threading.Event | None = None
    report: Any = None  # runtime.cancel.Report: each step's (stage, done, total), for GET /api/progress

    def events(self) -> tuple[threading.Event, ...]:
        return (self.stop,) if self.stop is not None else ()


def png_bytes(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def answer_of(result: Any, job: Job, timings: dict[str, float], summary: dict[str, Any] | None = None) -> Answer:
    """A SegmentationResult -> the bytes `fsa segment` writes for it (runtime.segmenter's own
    drawing), the summary's `image` being the uploaded file's name and its timings_ms gaining
    `timings` (decode, text) and `encode` (these PNGs)."""
    t0 = time.perf_counter()
    labels = png_bytes(label_image(result.labels))
    overlay = png_bytes(result.overlay()) if job.overlay else None
    summary = dict(summary if summary is not None else result.summary())
    summary["image"] = job.name
    summary["timings_ms"] = {**summary.get("timings_ms", {}), **timings,
                             "encode": round(1e3 * (time.perf_counter() - t0), 3)}
    return Answer(summary, labels, overlay)


def class_colors() -> list[list[int]]:
    """Class i's colour at row i (fsa segment's palette): the page's legend shows absent classes too."""
    return palette()[:UNLABELLED].tolist()


def decoded(job: Job) -> tuple[Any, float]:
    """The upload as HWC RGB (fsa segment's decoder and the app's pixel limit) and the ms it took."""
    t0 = time.perf_counter()
    image = decode_image(io.BytesIO(job.data), job.name).transpose(1, 2, 0)
    return image, round(1e3 * (time.perf_counter() - t0), 3)


def parse_classes(text: str):
    """The classes field in the CLI's syntax -> a Vocabulary, with the request's size limits."""
    if len(text) > MAX_CLASSES_CHARS:
        raise FSAError(f"classes: {len(text):,} characters, at most {MAX_CLASSES_CHARS:,}")
    vocab = Vocabulary.parse(text, "classes")
    if len(vocab.queries) > MAX_QUERIES:
        raise FSAError(f"classes: {len(vocab.queries)} class names, at most {MAX_QUERIES}")
    return vocab


def precision_of(backend: Backend, info: MetaRecord) -> str:
    """The image graph's precision: the engine's or ONNX file's name says it (meta.json for image.onnx)."""
    name = backend.graph_file or IMAGE_ONNX
    by_file = {file: p for p, file in IMAGE_GRAPHS.items() if file != IMAGE_ONNX}
    if name in by_file:
        return by_file[name]
    if name.endswith(".engine"):  # image.<precision>[.<flavour>].engine
        return name.split(".")[1]
    return info.precision


class Local:
    """The Segmenter of `fsa segment`, in this process."""

    def __init__(self, folder: str, backend: str, cache_dir: Any = None) -> None:
        self.default = Vocabulary.from_file(DEFAULT_CLASSES)
        default_text = classes_text(self.default, str(DEFAULT_CLASSES))  # the page sends it back: refused now
        art = Artifact.load(folder)
        self.base = Segmenter.from_artifact(art, backend, cache_dir=usable_cache_dir(cache_dir))
        if "cpu" in self.base.backend.name:
            self.base.batch = CPU_BATCH
        self.info: dict[str, Any] = {"artifact": str(Path(folder)), "artifact_sha256": self.base.artifact_sha256,
                     "backend": self.base.backend.name, "backend_reason": self.base.backend_reason,
                     "precision": precision_of(self.base.backend, art.info), "model": art.info.model,
                     "weights": art.info.weights, "classes": default_text, "server": None,
                     "palette": class_colors()}
        self.lock = threading.Lock()
        self.segmenters = SegmenterCache(self.base, CACHED_CLASS_LISTS)

    def segment(self, job: Job) -> Answer:
        vocab = parse_classes(job.classes)
        image, decode_ms = decoded(job)
        with stoppable(*job.events(), report=job.report), self.lock:
            t0 = time.perf_counter()
            seg = self.segmenters.get(vocab)  # the class names not in the cache are encoded here
            text_ms = round(1e3 * (time.perf_counter() - t0), 3)
            if job.prob_thd is not None:
                seg = copy.copy(seg)  # this request's threshold on its own copy
                seg.prob_thd = job.prob_thd
            result = seg.segment(image)
        return answer_of(result, job, {"decode": decode_ms, "text": text_ms})


class Remote:
    """An `fsa serve` / Triton `fsa_segment` at `url` (HTTP); DIR gives the default classes and
    the artefact hash every answer must carry."""

    def __init__(self, folder: str, url: str) -> None:
        try:
            import tritonclient.http  # noqa: F401
        except ImportError as e:
            raise FSAError(f"--server {url}: needs tritonclient: pip install 'fsa-deploy[serve]' ({e})") from e
        self.default = Vocabulary.from_file(DEFAULT_CLASSES)
        default_text = classes_text(self.default, str(DEFAULT_CLASSES))  # fsa_segment's CLASSES: refused now
        art = Artifact.load(folder)
        self.url = server_address(url)
        self.sha = art.sha256(IMAGE_ONNX)
        self.info: dict[str, Any] = {
            "artifact": str(Path(folder)), "artifact_sha256": self.sha, "backend": f"triton {self.url}",
            "backend_reason": "--server", "precision": art.info.precision, "model": art.info.model,
            "weights": art.info.weights, "classes": default_text, "server": url, "palette": class_colors()}
        client = self._client()
        try:
            ready = client.is_model_ready(SEGMENT_MODEL)
        except Exception as e:  # any connection failure is the same one line
            raise FSAError(f"--server {url}: not reachable ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from e
        if not ready:
            raise FSAError(f"--server {url}: model {SEGMENT_MODEL} is not ready")

    def _client(self) -> Any:
        import tritonclient.http as th

        return th.InferenceServerClient(self.url, network_timeout=600.0, connection_timeout=10.0)

    def segment(self, job: Job) -> Answer:
        from tritonclient.utils import InferenceServerException

        vocab = parse_classes(job.classes)
        image, decode_ms = decoded(job)  # refused here before the round trip
        try:
            reply = self._client().infer(SEGMENT_MODEL, segment_inputs(job.data, job.classes, prob_thd=job.prob_thd))
        except InferenceServerException as e:
            raise UpstreamError(f"--server: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
        except Exception as e:  # a dropped connection: this request's error, the page keeps going
            raise UpstreamError(f"--server {self.url}: {type(e).__name__}: {str(e).splitlines()[0][:120]}") from e
        labels = reply.as_numpy(OUT_LABELS)
        summary = json.loads(reply.as_numpy(OUT_SUMMARY).reshape(-1)[0])
        if summary.get("artifact_sha256") != self.sha:
            raise UpstreamError(f"--server: it runs artefact {summary.get('artifact_sha256')}, "
                                 f"not {self.info['artifact']} ({self.sha})")
        result = SegmentationResult(labels=labels, probs=None, classes=list(summary["vocabulary"]), image=image,
                                    timings=summary["timings_ms"], backend=summary["backend"],
                                    artifact_sha256=summary["artifact_sha256"], prob_thd=summary["prob_thd"])
        if result.classes != vocab.names:
            raise UpstreamError(f"--server: answered classes {result.classes}, asked for {vocab.names}")

        # the server's own JSON (its timings; its text encoding is inside its round trip, not measured
        # here), as NAME.json: without the identity the server adds
        summary = {k: v for k, v in summary.items() if k != SERVED}
        return answer_of(result, job, {"decode": decode_ms, "text": summary["timings_ms"].get("text", 0.0)}, summary)


class UpstreamError(FSAError):
    """--server failed or answered for another artefact or other classes (HTTP 502)."""

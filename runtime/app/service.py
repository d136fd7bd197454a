"""What the page's requests run: the runtime's Segmenter in this process, or an `fsa serve` /
Triton `fsa_segment` at --server. Both answer with the three things `fsa segment` writes.

In-process, each class list gets its own shallow copy of one Segmenter (as the Triton model
does), so a request's classes never leak into another's; one lock serialises the backend calls
(a TensorRT context is not re-entrant, ONNX Runtime already uses every core).
"""

from __future__ import annotations

import base64
import copy
import io
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsa_deploy.contract import (
    IMAGE_GRAPHS,
    IMAGE_ONNX,
    OUT_LABELS,
    OUT_SUMMARY,
    SEGMENT_MODEL,
)
from fsa_deploy.errors import FSAError

MAX_QUERIES = 1024  # class names (synonyms included) per request, as fsa_segment's default
MAX_CLASSES_CHARS = 20_000  # the classes text
CACHED_CLASS_LISTS = 32  # Segmenters (class embeddings) kept in memory, least recently used dropped


@dataclass
class Answer:
    """One segmentation as the API returns it: fsa segment's NAME.json (as an object), NAME.png
    and NAME_overlay.png (their bytes)."""

    summary: dict[str, Any]
    labels_png: bytes
    overlay_png: bytes

    def as_json(self) -> dict[str, Any]:
        return {"summary": self.summary, "labels": base64.b64encode(self.labels_png).decode("ascii"),
                "overlay": base64.b64encode(self.overlay_png).decode("ascii")}


def png_bytes(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def answer_of(result: Any, name: str) -> Answer:
    """A SegmentationResult -> the bytes `fsa segment` writes for it (runtime.segmenter's own
    drawing), the summary's `image` being the uploaded file's name."""
    from fsa_deploy.runtime.segmenter import label_image

    summary = result.summary()
    summary["image"] = name
    return Answer(summary, png_bytes(label_image(result.labels)), png_bytes(result.overlay()))


def parse_classes(text: str):
    """The classes field in the CLI's syntax -> a Vocabulary, with the request's size limits."""
    from fsa_deploy.runtime.text import Vocabulary

    if len(text) > MAX_CLASSES_CHARS:
        raise FSAError(f"classes: {len(text):,} characters, at most {MAX_CLASSES_CHARS:,}")
    vocab = Vocabulary.parse(text, "classes")
    if len(vocab.queries) > MAX_QUERIES:
        raise FSAError(f"classes: {len(vocab.queries)} class names, at most {MAX_QUERIES}")
    return vocab


def precision_of(backend: Any, meta: Any) -> str:
    """The image graph's precision: the engine's or ONNX file's name says it (meta.json for image.onnx)."""
    name = getattr(backend, "engine_name", None) or getattr(backend, "image_file", None) or IMAGE_ONNX
    by_file = {file: p for p, file in IMAGE_GRAPHS.items() if file != IMAGE_ONNX}
    if name in by_file:
        return by_file[name]
    if name.endswith(".engine"):  # image.<precision>[.<flavour>].engine
        return name.split(".")[1]
    return str(meta.get("precision", "fp32"))


class Local:
    """The Segmenter of `fsa segment`, in this process."""

    def __init__(self, folder: str, backend: str, cache_dir: Any = None) -> None:
        from fsa_deploy.runtime.artifact import Artifact
        from fsa_deploy.runtime.segmenter import Segmenter, SegmenterCache
        from fsa_deploy.runtime.text import DEFAULT_CLASSES, Vocabulary, classes_text, usable_cache_dir

        self.default = Vocabulary.from_file(DEFAULT_CLASSES)
        default_text = classes_text(self.default, str(DEFAULT_CLASSES))  # the page sends it back: refused now
        art = Artifact.load(folder)
        self.base = Segmenter.from_artifact(art, backend, cache_dir=usable_cache_dir(cache_dir))
        self.info = {"artifact": str(Path(folder)), "artifact_sha256": self.base.artifact_sha256,
                     "backend": self.base.backend.name, "backend_reason": self.base.backend_reason,
                     "precision": precision_of(self.base.backend, art.meta), "model": art.meta.get("model"),
                     "classes": default_text, "server": None}
        self.lock = threading.Lock()
        self.segmenters = SegmenterCache(self.base, CACHED_CLASS_LISTS)

    def segment(self, data: bytes, name: str, classes: str, prob_thd: float | None) -> Answer:
        from fsa_deploy.runtime.images import decode_image

        vocab = parse_classes(classes)
        image = decode_image(io.BytesIO(data), name).transpose(1, 2, 0)  # fsa segment's decoder and pixel limit
        with self.lock:
            seg = self.segmenters.get(vocab)
            if prob_thd is not None:
                seg = copy.copy(seg)  # this request's threshold on its own copy
                seg.prob_thd = prob_thd
            result = seg.segment(image)
        return answer_of(result, name)


class Remote:
    """An `fsa serve` / Triton `fsa_segment` at `url` (HTTP); DIR gives the default classes and
    the artefact hash every answer must carry."""

    def __init__(self, folder: str, url: str) -> None:
        from fsa_deploy.runtime.artifact import Artifact
        from fsa_deploy.runtime.serve.client import server_address
        from fsa_deploy.runtime.text import DEFAULT_CLASSES, Vocabulary, classes_text

        try:
            import tritonclient.http  # noqa: F401
        except ImportError as e:
            raise FSAError(f"--server {url}: needs tritonclient: pip install 'fsa-deploy[serve]' ({e})") from e
        self.default = Vocabulary.from_file(DEFAULT_CLASSES)
        default_text = classes_text(self.default, str(DEFAULT_CLASSES))  # fsa_segment's CLASSES: refused now
        art = Artifact.load(folder)
        self.url = server_address(url)
        self.sha = art.files().get(IMAGE_ONNX, {}).get("sha256")
        self.info = {"artifact": str(Path(folder)), "artifact_sha256": self.sha, "backend": f"triton {self.url}",
                     "backend_reason": "--server", "precision": str(art.meta.get("precision", "fp32")),
                     "model": art.meta.get("model"), "classes": default_text, "server": url}
        client = self._client()
        try:
            ready = client.is_model_ready(SEGMENT_MODEL)
        except Exception as e:  # noqa: BLE001 - any connection failure is the same one line
            raise FSAError(f"--server {url}: not reachable ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from e
        if not ready:
            raise FSAError(f"--server {url}: model {SEGMENT_MODEL} is not ready")

    def _client(self) -> Any:
        import tritonclient.http as th

        return th.InferenceServerClient(self.url, network_timeout=600.0, connection_timeout=10.0)

    def segment(self, data: bytes, name: str, classes: str, prob_thd: float | None) -> Answer:
        from fsa_deploy.runtime.images import decode_image
        from fsa_deploy.runtime.segmenter import SegmentationResult
        from fsa_deploy.runtime.serve.client import segment_inputs
        from tritonclient.utils import InferenceServerException

        vocab = parse_classes(classes)
        image = decode_image(io.BytesIO(data), name).transpose(1, 2, 0)  # refused here before the round trip
        try:
            reply = self._client().infer(SEGMENT_MODEL, segment_inputs(data, classes, prob_thd=prob_thd))
        except InferenceServerException as e:
            raise UpstreamError(f"--server: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
        except Exception as e:  # noqa: BLE001 - a dropped connection: this request's error, the page keeps going
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
        answer = answer_of(result, name)
        answer.summary = {**summary, "image": name}  # the server's own JSON (its timings)
        return answer


class UpstreamError(FSAError):
    """--server failed or answered for another artefact or other classes (HTTP 502)."""

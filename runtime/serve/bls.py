"""What `fsa_segment` asks of the other two models, as data, and the Backend that asks it.

The python-backend model `fsa_segment` runs this runtime's own Segmenter; only the backend
differs: `TritonBackend.run` forwards crops to the image model and `encode_text` tokens to the
text model, both through BLS (business logic scripting). `calls()` is the same contract as data,
so the offline check can hold it against the called models' config.pbtxt.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from fsa_deploy.contract import (
    CONTEXT_LENGTH,
    EMBEDDINGS,
    IMAGE,
    IMAGE_MODEL,
    LOGITS,
    TEXT_EMBEDDINGS,
    TEXT_MODEL,
    TOKENS,
)
from fsa_deploy.errors import FSAError
from fsa_deploy.runtime.artifact import Artifact
from fsa_deploy.runtime.backends.base import Backend
from fsa_deploy.runtime.backends.select import select_backend
from fsa_deploy.runtime.text import padded


@dataclass(frozen=True)
class SegmentParams:
    """fsa_segment's config.pbtxt `parameters` (all strings there)."""

    image_model: str = IMAGE_MODEL
    text_model: str = TEXT_MODEL
    text_per_crop: bool = True  # image model batches over crops: each crop carries its [K, D] copy
    max_batch: int = 16  # crops per image-model request (the Segmenter's batch; the parameter's name on the wire)
    max_classes: int = 1024  # queries per request; more is an error reply
    cache_size: int = 32  # class lists whose embeddings are kept in memory (LRU)
    cache_dir: str = ""  # class-embedding cache shared by the instances ("": the server's temp dir)
    backend_name: str = "triton"

    def to_config(self) -> dict[str, str]:
        return {k: str(int(v)) if isinstance(v, bool) else str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_config(cls, params: dict[str, Any]) -> SegmentParams:
        """From the parsed model config's `parameters` ({key: {"string_value": ...}})."""
        kinds = {f.name: f.type for f in fields(cls)}
        out: dict[str, Any] = {}
        for k, v in params.items():
            if k in kinds:
                s = v["string_value"] if isinstance(v, dict) else str(v)
                out[k] = bool(int(s)) if kinds[k] in (bool, "bool") else int(s) if kinds[k] in (int, "int") else s
        return cls(**out)


@dataclass(frozen=True)
class Call:
    """One BLS request: the model, its inputs {name: (Triton dtype, shape)}, the outputs it reads."""

    model: str
    inputs: dict[str, tuple[str, tuple[int, ...]]]
    outputs: dict[str, str]


def calls(p: SegmentParams, crop: int, embed_dim: int, queries: int = 3, prompts: int = 5) -> list[Call]:
    """The requests fsa_segment sends for a batch of `max_batch` crops and `queries` classes."""
    n, k = p.max_batch, queries
    text = (n, k, embed_dim) if p.text_per_crop else (k, embed_dim)
    return [Call(p.image_model, {IMAGE: ("TYPE_FP32", (n, 3, crop, crop)), TEXT_EMBEDDINGS: ("TYPE_FP32", text)},
                 {LOGITS: "TYPE_FP32"}),
            Call(p.text_model, {TOKENS: ("TYPE_INT32", (prompts, CONTEXT_LENGTH))}, {EMBEDDINGS: "TYPE_FP32"})]


class TritonBackend(Backend):
    """The runtime's Backend (numpy in, numpy out) over BLS; `pb` is the stub's
    triton_python_backend_utils module (only importable inside Triton)."""

    def __init__(self, pb: Any, params: SegmentParams) -> None:
        self.pb, self.params = pb, params
        self.name = params.backend_name
        self._text_key = f"triton:{params.text_model}"

    def _call(self, model: str, feeds: dict[str, np.ndarray], output: str) -> np.ndarray:
        pb = self.pb
        request = pb.InferenceRequest(model_name=model, requested_output_names=[output],
                                      inputs=[pb.Tensor(name, a) for name, a in feeds.items()])
        response = request.exec()
        if response.has_error():
            raise FSAError(f"{model}: {response.error().message()}")
        return pb.get_output_tensor_by_name(response, output).as_numpy()

    def run(self, image: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
        """crops float32 [B, 3, S, S], text [K, D] -> logits float32 [B, K, H', W']."""
        image = np.ascontiguousarray(image, dtype=np.float32)
        text = np.ascontiguousarray(text_embeddings, dtype=np.float32)
        if self.params.text_per_crop:
            text = np.ascontiguousarray(np.broadcast_to(text, (len(image), *text.shape)))
        return self._call(self.params.image_model, {IMAGE: image, TEXT_EMBEDDINGS: text}, LOGITS)

    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        """tokens [T, L] -> embeddings float32 [T, D] (padded to the text model's [T, 77])."""
        tokens = np.ascontiguousarray(padded(tokens, CONTEXT_LENGTH), dtype=np.int32)
        return self._call(self.params.text_model, {TOKENS: tokens}, EMBEDDINGS)


def local_backend(model_config: str) -> Backend:
    """The runtime backend a local python model (fsa_image, fsa_text) runs, from its config's
    `parameters` (artifact folder, backend name, ORT threads): the same choice `fsa segment` makes."""

    p = {k: v["string_value"] for k, v in json.loads(model_config).get("parameters", {}).items()}
    threads = int(p.get("threads", "0")) or None
    return select_backend(Artifact.load(p["artifact"]), p.get("backend", "auto"), threads=threads).backend

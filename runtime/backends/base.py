"""The base class every backend derives from: crops in, crop logits out, on host numpy arrays.

Host arrays keep the runtime free of torch (the base install is numpy, pillow, onnxruntime):
the pipeline around the crop forward (resize, windows, stitching, post-processing) is numpy,
so every backend, the PyTorch reference included, converts at its own boundary.

As Polygraphy's `BaseRunner` (polygraphy/backend/base/runner.py) does for its runners, the base
class holds the two abstract calls a backend must make (`run`, `encode_text`) and gives every
optional capability a default, so callers read `backend.text_key` or `backend.graph_file` instead
of probing with `getattr`.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import numpy as np

from fsa_deploy.errors import FSAError


class Backend(abc.ABC):
    """Runs the image graph (and the text graph) of one artefact.

    `name` is what reports print (`onnxruntime-cpu`, `tensorrt`, `pytorch-cuda`...).
    Optional capabilities, each with a default here:
    - `text_key`: what the text encoder is, for the class-embedding cache (default: `name`);
    - `graph_file`: the artefact file the image forward runs (default None: no file, e.g. PyTorch);
    - `stage_names` and `run_stages`: the stage tensors a backend can return beside the logits
      (default none: `run_stages` refuses in one line).
    """

    name: str = "backend"
    stage_names: Sequence[str] = ()
    _text_key: str | None = None  # a subclass sets these two in __init__ (see the properties)
    _graph_file: str | None = None

    @abc.abstractmethod
    def run(self, image: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
        """image float32 [B, 3, S, S] RGB 0-255, text_embeddings float32 [K, D] -> logits float32 [B, K, H', W']."""

    @abc.abstractmethod
    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        """tokens int [T, L] -> embeddings float32 [T, D] (one per prompt, not normalised)."""

    @property
    def text_key(self) -> str:
        """What the text encoder is (the class-embedding cache keys on it); without one, `name`."""
        return self._text_key or self.name

    @property
    def graph_file(self) -> str | None:
        """The artefact file the image forward runs (an ONNX graph or an engine), None when none."""
        return self._graph_file

    def run_stages(self, image: np.ndarray, text_embeddings: np.ndarray) -> dict[str, np.ndarray]:
        """`logits` and the tensors of `stage_names`, by name; a backend without stages refuses."""
        raise FSAError(f"{self.name}: this backend returns no stage tensors")


class Adapted(Backend):
    """A user's object with `name`, `run` and `encode_text` but not derived from Backend (the
    interface was a Protocol before): wrapped once at the boundary, its `text_key` kept."""

    def __init__(self, inner: Any) -> None:
        for need in ("name", "run", "encode_text"):
            if not hasattr(inner, need):
                raise FSAError(f"backend {type(inner).__name__}: has no `{need}`; derive it from "
                               "fsa_deploy.runtime.backends.base.Backend")
        self.inner = inner
        self.name = str(inner.name)
        self._text_key = str(getattr(inner, "text_key", self.name))  # the one optional read, at the boundary

    def run(self, image: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
        return self.inner.run(image, text_embeddings)  # type: ignore[no-any-return]

    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        return self.inner.encode_text(tokens)  # type: ignore[no-any-return]


def as_backend(backend: Backend | Any) -> Backend:
    """`backend` itself when it derives from Backend, else wrapped (see Adapted)."""
    return backend if isinstance(backend, Backend) else Adapted(backend)

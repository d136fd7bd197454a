"""ONNX Runtime backend: image.onnx (and text.onnx on demand) of an artefact folder.

Host numpy arrays in and out on every provider: `session.run` copies a crop batch to the
GPU and its logits back when the CUDA provider runs it (the pipeline around it is numpy on
the host). onnxruntime is imported on first use: importing this module costs nothing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from fsa_deploy.runtime.artifact import (
    EMBEDDINGS,
    IMAGE,
    IMAGE_ONNX,
    LOGITS,
    TEXT_EMBEDDINGS,
    TEXT_ONNX,
    TOKENS,
    Artifact,
)

from fsa_deploy.errors import FSAError

CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
TRT_EP = "TensorrtExecutionProvider"
EP_NAMES = {CUDA_EP: "cuda", CPU_EP: "cpu", TRT_EP: "trt-ep"}
ORT_HINT = "pip install onnxruntime (CPU) or onnxruntime-gpu (CUDA)"


def require_onnxruntime() -> Any:
    """The onnxruntime module, or one line naming the install command."""
    try:
        import onnxruntime
    except (ImportError, OSError) as e:  # OSError: the GPU wheel without its CUDA libraries
        raise FSAError(f"onnxruntime is not installed ({e}): {ORT_HINT}") from e
    return onnxruntime


def default_providers() -> list[str]:
    """CUDA when this onnxruntime has it, CPU always (also the fallback for unsupported nodes)."""
    available = require_onnxruntime().get_available_providers()
    return [CUDA_EP, CPU_EP] if CUDA_EP in available else [CPU_EP]


def session_options(threads: int | None) -> Any:
    ort = require_onnxruntime()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: ORT's warnings about unused initialisers are noise here
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return opts


class OnnxRuntimeBackend:
    """Backend (runtime/backends/base.py) on ONNX Runtime.

    `image_file` picks the graph (image.onnx, or a Q/DQ graph calibration recorded);
    `providers` overrides the CUDA-then-CPU default; `threads` caps intra-op threads.
    The name says where it really runs: ORT silently drops a CUDA provider it cannot load.
    """

    def __init__(self, art: Artifact | str | os.PathLike[str], image_file: str = IMAGE_ONNX,
                 providers: Sequence[str] | None = None, threads: int | None = None) -> None:
        if threads is not None and threads < 0:
            raise FSAError(f"--threads {threads}: must be >= 0 (0: onnxruntime's default)")
        self.artifact = art if isinstance(art, Artifact) else Artifact.load(art)
        self.providers = list(providers) if providers is not None else default_providers()
        self.threads = threads
        self.image_file = image_file
        self._image = self._session(image_file)
        self._text: Any = None
        first = self._image.get_providers()[0]
        self.name = f"onnxruntime-{EP_NAMES.get(first, first.removesuffix('ExecutionProvider').lower())}"
        self.grid = tuple(int(g) for g in self.artifact.meta["grid"])
        self.embed_dim = int(self.artifact.meta["embed_dim"])
        self.text_key = f"{TEXT_ONNX}:{self.artifact.files().get(TEXT_ONNX, {}).get('sha256')}"

    def _session(self, name: str) -> Any:
        """A session on a file of the folder, its sha256 (and that of its external data) checked."""
        ort = require_onnxruntime()
        path = self.artifact.path(name)
        if f"{name}.data" in self.artifact.files():
            self.artifact.path(f"{name}.data")
        try:
            return ort.InferenceSession(str(path), session_options(self.threads), providers=self.providers)
        except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
            raise FSAError(f"{path}: onnxruntime could not load it ({str(e).splitlines()[0][:200]})") from e

    def run(self, image: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
        """image float32 [B, 3, S, S] RGB 0-255, text [K, D] -> logits float32 [B, K, H', W']."""
        if image.ndim != 4 or text_embeddings.ndim != 2:
            raise FSAError(f"{self.name}: expected image [B, 3, S, S] and text_embeddings [K, D], "
                           f"got {list(image.shape)} and {list(text_embeddings.shape)}")
        feeds = {IMAGE: _f32(image), TEXT_EMBEDDINGS: _f32(text_embeddings)}
        (out,) = self._image.run([LOGITS], feeds)
        return out

    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        """tokens [T, 77] -> embeddings float32 [T, D]; text.onnx is loaded on the first call."""
        if self._text is None:
            self._text = self._session(TEXT_ONNX)
        (out,) = self._text.run([EMBEDDINGS], {TOKENS: np.ascontiguousarray(tokens, dtype=np.int32)})
        return out


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)

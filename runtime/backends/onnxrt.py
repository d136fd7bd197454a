"""ONNX Runtime backend: image.onnx (and text.onnx on demand) of an artefact folder.

CPU: plain `session.run` on numpy arrays. CUDA: IO binding on torch CUDA tensors, so the
crops go in and the logits come out on the GPU where stitching runs, with no host copy.
onnxruntime is imported on first use: importing this module costs nothing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
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
GPU_EPS = (CUDA_EP, TRT_EP)  # providers whose inputs and outputs may live in CUDA memory
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


def check_image_input(session: Any, art: Artifact, name: str) -> None:
    """The graph's image input must be [B, 3, crop, crop] with meta.json's crop: checked before any run."""
    crop = int(art.meta["crop"])
    for inp in session.get_inputs():
        if inp.name == IMAGE:
            dims = list(inp.shape)[1:]
            if len(dims) != 3 or any(isinstance(d, int) and d != want for d, want in zip(dims, (3, crop, crop))):
                got = ", ".join(map(str, dims))
                raise FSAError(f"{art.root / name}: its {IMAGE} input is [B, {got}] but meta.json says crop {crop} "
                               f"(expected [B, 3, {crop}, {crop}]); the folder mixes files of two exports: re-export")
            return
    raise FSAError(f"{art.root / name}: no input named {IMAGE!r}; not an image graph of `fsa export`")


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
        check_image_input(self._image, self.artifact, image_file)
        self._text: Any = None
        first = self._image.get_providers()[0]
        # IO binding needs torch CUDA tensors; a CPU build of torch falls back to numpy feeds.
        self.iobinding = first in GPU_EPS and torch.cuda.is_available()
        self.device = torch.device("cuda", self._cuda_id(first)) if self.iobinding else torch.device("cpu")
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

    def _cuda_id(self, provider: str) -> int:
        opts = self._image.get_provider_options().get(provider, {})
        return int(opts.get("device_id", 0))

    def run(self, image: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """image float32 [B, 3, S, S] RGB 0-255, text [K, D] -> logits float32 [B, K, H', W'] on `device`."""
        if image.dim() != 4 or text_embeddings.dim() != 2:
            raise FSAError(f"{self.name}: expected image [B, 3, S, S] and text_embeddings [K, D], "
                           f"got {list(image.shape)} and {list(text_embeddings.shape)}")
        out_shape = (image.shape[0], text_embeddings.shape[0], *self.grid)
        feeds = {IMAGE: image.float(), TEXT_EMBEDDINGS: text_embeddings.float()}
        return self._run(self._image, feeds, LOGITS, out_shape)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [T, 77] -> embeddings float32 [T, D]; text.onnx is loaded on the first call."""
        if self._text is None:
            self._text = self._session(TEXT_ONNX)
        return self._run(self._text, {TOKENS: tokens.to(torch.int32)}, EMBEDDINGS,
                         (tokens.shape[0], self.embed_dim))

    def _run(self, session: Any, feeds: dict[str, torch.Tensor], output: str,
             out_shape: tuple[int, ...]) -> torch.Tensor:
        if self.iobinding:
            return self._run_bound(session, feeds, output, out_shape)
        arrays = {k: np.ascontiguousarray(v.detach().cpu().numpy()) for k, v in feeds.items()}
        (out,) = session.run([output], arrays)
        return torch.from_numpy(out)

    def _run_bound(self, session: Any, feeds: dict[str, torch.Tensor], output: str,
                   out_shape: tuple[int, ...]) -> torch.Tensor:
        """IO binding on torch buffers. ORT runs on its own CUDA stream: torch's pending work
        on the inputs is waited for first; ORT synchronises its stream before returning."""
        idx = self.device.index or 0
        inputs = {k: v.detach().to(self.device).contiguous() for k, v in feeds.items()}
        out = torch.empty(out_shape, dtype=torch.float32, device=self.device)
        binding = session.io_binding()
        for k, v in inputs.items():
            binding.bind_input(name=k, device_type="cuda", device_id=idx, element_type=_np_dtype(v.dtype),
                               shape=tuple(v.shape), buffer_ptr=v.data_ptr())
        binding.bind_output(name=output, device_type="cuda", device_id=idx, element_type=np.float32,
                            shape=out_shape, buffer_ptr=out.data_ptr())
        torch.cuda.synchronize(self.device)
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return out


def _np_dtype(dtype: torch.dtype) -> type:
    return {torch.float32: np.float32, torch.int32: np.int32, torch.float16: np.float16}[dtype]

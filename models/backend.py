"""PyTorch backend: the reference model itself behind the Backend interface.

For comparisons (the same pipeline code around a different crop forward) and for users
without an export. models.factory (open_clip, timm) is imported only when one is built.
The Backend protocol is on host numpy arrays: this backend converts at its boundary
(torch.from_numpy in, .cpu().numpy() out), so the pipeline around it is the runtime's own.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import numpy as np
import torch

from fsa_deploy.contract import PYTORCH
from fsa_deploy.errors import FSAError
from fsa_deploy.models.factory import ModelSpec, build_reference, spec_from_meta
from fsa_deploy.runtime.artifact import Artifact
from fsa_deploy.runtime.backends.base import Backend
from fsa_deploy.runtime.text import padded

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def spec_of(source: Artifact | ModelSpec | str | os.PathLike[str]) -> tuple[ModelSpec, Artifact | None]:
    """The model selection of an artefact (its meta.json) or a ModelSpec given directly."""
    if isinstance(source, ModelSpec):
        return source, None
    art = source if isinstance(source, Artifact) else Artifact.load(source)
    return spec_from_meta(art.info, art.info.source), art


class TorchBackend(Backend):
    """Backend on the PyTorch reference of an artefact or a ModelSpec.

    `dtype` fp16 puts the trunk and proxy in fp16 and keeps the last block, the feedback
    and the tail in fp32, as fp16 exports do; CUDA only (CPU half kernels are slow or absent).
    """

    def __init__(self, source: Artifact | ModelSpec | str | os.PathLike[str], device: str | torch.device = "cpu",
                 dtype: torch.dtype | str = torch.float32, formulation: str = "deploy") -> None:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
        if self.dtype not in DTYPES.values():
            raise FSAError(f"torch backend: dtype {dtype} not supported (fp32 or fp16)")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise FSAError("torch backend: device cuda requested but torch.cuda.is_available() is False")
        if self.dtype == torch.float16 and self.device.type != "cuda":
            raise FSAError("torch backend: fp16 needs device cuda")
        self.spec, self.artifact = spec_of(source)
        self.formulation = formulation
        self.ref = build_reference(self.spec, formulation)
        self.ref.model.to(self.device)
        self.ref.clip.to(self.device)
        if self.dtype == torch.float16:
            self.ref.model.set_precision(torch.float16, torch.float32)
        precision = "" if self.dtype == torch.float32 else "-fp16"
        self.name = f"{PYTORCH.report}-{self.device.type}{precision}"
        self._text_key = f"pytorch:{spec_key(self.spec)}"  # the text tower stays fp32 in every precision
        self.stage_names = ["keep", "attn_proxy"]  # what run_stages returns besides the logits

    def run(self, image: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
        """image float32 [B, 3, S, S] RGB 0-255, text [K, D] -> logits float32 [B, K, H', W'] (host arrays)."""
        with torch.inference_mode():
            out = self.ref.model(to_torch(image, self.device), to_torch(text_embeddings, self.device))
            return out.float().cpu().numpy()

    def run_stages(self, image: np.ndarray, text_embeddings: np.ndarray) -> dict[str, np.ndarray]:
        """`logits` and the masks that rounding decides (`keep`, `attn_proxy`, where the model has
        them), as OnnxRuntimeBackend.run_stages gives them for the validator's alignment."""
        with torch.inference_mode():
            st = self.ref.model.stages(to_torch(image, self.device), to_torch(text_embeddings, self.device))
        out = {"logits": st["logits"].float().cpu().numpy()}
        for k in self.stage_names:
            if k in st:
                out[k] = (st[k] if st[k].dtype == torch.bool else st[k].float()).cpu().numpy()
        return out

    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        """tokens int [T, L] -> embeddings float32 [T, D] (host arrays; open_clip's tower takes [T, 77]:
        padded, which changes no embedding)."""
        with torch.inference_mode():
            return self.ref.encode_text(to_torch(padded(tokens), self.device).long()).float().cpu().numpy()


def to_torch(a: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host array (or a tensor) on `device`, without a copy where torch can share the memory."""
    t = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))
    return t.to(device)


def spec_key(spec: ModelSpec) -> str:
    """A short stable hash of a model selection (cache key of a reference without an artefact)."""
    blob: dict[str, Any] = spec.describe()
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:32]

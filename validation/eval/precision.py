"""`fsa eval --reference --reference-precision fp16`: the PyTorch reference as the official code
runs it, in fp16 (FSA_Proxy_segmentor.py: open_clip's create_model(precision='fp16'), vfm.half()).

Emulated with torch.autocast in fp16 around the crop forward and the text tower: on CUDA the
matrix products and convolutions run in fp16; on a CPU, CPU autocast does the same in software.
Autocast keeps reductions and normalisations in fp32 where the official half model does not, so
it is close to, not bit-equal with, the official numbers.
"""

from __future__ import annotations

import numpy as np
import torch

from fsa_deploy.errors import FSAError
from fsa_deploy.models.backend import TorchBackend
from fsa_deploy.runtime.backends.base import Backend


class Autocast(Backend):
    """A torch backend whose forward and text tower run under torch.autocast(fp16); its other
    attributes (device, ref, artifact, stage_names, run_stages) are the wrapped backend's."""

    def __init__(self, backend: Backend) -> None:
        if not isinstance(backend, TorchBackend):
            raise FSAError(f"autocast fp16: runs the PyTorch reference, not {backend.name}")
        self.backend = backend
        self.device_type = backend.device.type
        self.name = f"{backend.name}-autocast-fp16"
        self.stage_names = backend.stage_names

    @property
    def text_key(self) -> str:
        return f"{self.backend.text_key}|autocast-fp16"  # its own cache entries

    def run(self, image: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
        with torch.autocast(self.device_type, dtype=torch.float16):
            return self.backend.run(image, text_embeddings)

    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        with torch.autocast(self.device_type, dtype=torch.float16):
            return self.backend.encode_text(tokens)

    def run_stages(self, image: np.ndarray, text_embeddings: np.ndarray) -> dict[str, np.ndarray]:
        return self.backend.run_stages(image, text_embeddings)  # outside autocast, as before

    def __getattr__(self, name: str) -> object:
        return getattr(self.backend, name)

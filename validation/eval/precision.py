"""`fsa eval --reference --reference-precision fp16`: the PyTorch reference as the official code
runs it, in fp16 (FSA_Proxy_segmentor.py: open_clip's create_model(precision='fp16'), vfm.half()).

Emulated with torch.autocast in fp16 around the crop forward and the text tower: on CUDA the
matrix products and convolutions run in fp16; on a CPU, CPU autocast does the same in software.
Autocast keeps reductions and normalisations in fp32 where the official half model does not, so
it is close to, not bit-equal with, the official numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class Autocast:
    """A torch backend whose forward and text tower run under torch.autocast(fp16)."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.device_type = backend.device.type
        self.name = f"{backend.name}-autocast-fp16"
        self.text_key = f"{getattr(backend, 'text_key', backend.name)}|autocast-fp16"  # its own cache entries

    def run(self, image: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
        with torch.autocast(self.device_type, dtype=torch.float16):
            return self.backend.run(image, text_embeddings)

    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        with torch.autocast(self.device_type, dtype=torch.float16):
            return self.backend.encode_text(tokens)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

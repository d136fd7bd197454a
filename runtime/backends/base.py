"""The interface every backend implements: crops in, crop logits out, on host numpy arrays.

Host arrays keep the runtime free of torch (the base install is numpy, pillow, onnxruntime):
the pipeline around the crop forward (resize, windows, stitching, post-processing) is numpy,
so every backend, the PyTorch reference included, converts at its own boundary.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Backend(Protocol):
    """Runs the image graph (and the text graph) of one artefact.

    `name` is what reports print (`onnxruntime-cpu`, `tensorrt`, `pytorch-cuda`...).
    A backend may also carry `text_key` (what its text encoder is, for the class-embedding
    cache); without it the cache keys on `name`.
    """

    name: str

    def run(self, image: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
        """image float32 [B, 3, S, S] RGB 0-255, text_embeddings float32 [K, D] -> logits float32 [B, K, H', W']."""
        ...

    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        """tokens int [T, 77] -> embeddings float32 [T, D] (one per prompt, not normalised)."""
        ...

"""The interface every backend implements: crops in, crop logits out."""

from __future__ import annotations

from typing import Protocol

import torch


class Backend(Protocol):
    """Runs the image graph (and optionally the text graph) of one artefact.

    `name` is what reports print (`onnxruntime-cpu`, `tensorrt`, `pytorch-cuda`...);
    `device` is where the returned tensors live (stitching and post-processing then
    run there, so no host round trip between crops on a GPU).
    """

    name: str
    device: torch.device

    def run(self, image: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """image float32 [B, 3, S, S] RGB 0-255, text_embeddings float32 [K, D] -> logits [B, K, H', W']."""
        ...

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens int [T, 77] -> embeddings float32 [T, D] (one per prompt, not normalised)."""
        ...

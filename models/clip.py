"""CLIP from open_clip: model creation with the project's weights sources, and the text tower.

`tiny` is registered from models/configs/tiny.json (open_clip's public add_model_config).
"""

from __future__ import annotations

from pathlib import Path

import torch
from fsa_deploy.models.registry import clip_spec
from fsa_deploy.models.weights import Weights, load_state_dict, quiet, seeded

from fsa_deploy.errors import FSAError

_CONFIGS = Path(__file__).parent / "configs"


def _open_clip():
    import open_clip

    if "tiny" not in open_clip.list_models():
        open_clip.add_model_config(str(_CONFIGS / "tiny.json"))
    return open_clip


def create_clip(model: str, weights: Weights) -> torch.nn.Module:
    """An open_clip CLIP model in eval mode on the CPU, fp32, at its native image size.

    The positional embedding is resized for the crop later (models.reference), the way
    the official FSA code does it, not by open_clip's force_image_size.
    """
    spec = clip_spec(model)
    open_clip = _open_clip()
    with quiet("root"), quiet("open_clip"):
        if weights.seed is not None:
            with seeded(weights.seed):
                net = open_clip.create_model(spec.open_clip_name, pretrained=None)
        elif weights.pretrained is not None:
            try:
                net = open_clip.create_model(spec.open_clip_name, pretrained=weights.pretrained)
            except Exception as e:
                raise FSAError(
                    f"--pretrained {weights.pretrained!r}: could not load for {model} "
                    f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})"
                ) from e
        else:
            net = open_clip.create_model(spec.open_clip_name, pretrained=None)
            state = load_state_dict(str(weights.checkpoint), "--checkpoint")
            try:
                net.load_state_dict(state, strict=True)
            except RuntimeError as e:
                raise FSAError(f"--checkpoint {weights.checkpoint}: does not fit {model} "
                               f"({str(e).splitlines()[0][:160]})") from e
    return net.eval().float()


def tokenize(texts: list[str]) -> torch.Tensor:
    """open_clip's tokenizer: int64 [T, 77]."""
    return _open_clip().tokenize(texts)

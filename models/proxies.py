"""Proxies (vision foundation models) from timm: features F of a crop (docs/METHOD.md step 5).

Input is the crop as the graph receives it (RGB 0-255); ImageNet normalisation, the
resize to the proxy's input size (SAM: 1024) and the token-to-grid reshape happen here.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fsa_deploy.errors import FSAError
from fsa_deploy.models.registry import IMAGENET_MEAN, IMAGENET_STD, ProxySpec, proxy_spec
from fsa_deploy.models.weights import Weights, hub_offline_from_env, load_proxy_checkpoint, quiet, seeded


class ProxyFeatures(nn.Module):
    """crop [B, 3, S, S] (0-255) -> F [B, C', H', W'] (before L2 normalisation)."""

    mean: torch.Tensor  # buffers, typed here (nn.Module's __getattr__ says Tensor | Module)
    std: torch.Tensor

    def __init__(self, spec: ProxySpec, net: Any, crop: int, weights_record: dict | None = None):
        """`net`: timm's ViT of the family (patch_embed and forward_features are its own, not nn.Module's)."""
        super().__init__()
        self.spec = spec
        self.weights_record = weights_record or {}  # meta.json: file, sha256, layout, pos_embed resize
        self.net = net
        self.input_size = spec.input_size or crop
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.prefix = int(getattr(net, "num_prefix_tokens", 0))
        patch = net.patch_embed.patch_size
        self.grid: tuple[int, int] = (self.input_size // patch[0], self.input_size // patch[1])

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = (image - self.mean) / self.std
        if self.input_size != x.shape[-1]:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        y = self.net.forward_features(x.to(self.mean.dtype))
        if y.dim() == 4:  # SAM: neck output is already a feature map
            return y
        tokens = y[:, self.prefix :]
        b, n, c = tokens.shape
        return tokens.transpose(1, 2).reshape(b, c, self.grid[0], self.grid[1])


def create_proxy(name: str, crop: int, weights: Weights, checkpoint: str | None = None) -> ProxyFeatures:
    """A timm proxy at the crop's input size; `checkpoint` overrides `weights` for the proxy.

    With `weights.seed`, the proxy is built under seed + 1 (the CLIP takes the seed itself).
    """
    import timm  # noqa: PLC0415 - timm: heavy, imported where it is used

    spec = proxy_spec(name)
    size = spec.input_size or crop
    kwargs = dict(spec.kwargs, img_size=size, num_classes=0)
    if size % spec.patch != 0:
        raise FSAError(f"--crop {crop}: the {name} proxy's input {size} is not a multiple of its patch "
                       f"size {spec.patch}")
    hub_offline_from_env()
    record: dict = {}
    net: Any  # timm.create_model's ViT (explicit attention set below through its `fused_attn`)
    with quiet("timm"):
        if checkpoint is not None:
            net = timm.create_model(spec.timm_name, pretrained=False, **kwargs)
            record = load_proxy_checkpoint(net, name, spec.family, checkpoint)
        elif weights.seed is not None:
            with seeded(weights.seed + 1):
                net = timm.create_model(spec.timm_name, pretrained=False, **kwargs)
        else:
            try:
                net = timm.create_model(spec.timm_name, pretrained=True, cache_dir=weights.cache_dir, **kwargs)
            except Exception as e:  # noqa: BLE001 - timm's hub download raises many types: one line for all
                raise FSAError(f"--proxy {name}: pretrained weights unavailable ({type(e).__name__}); "
                               "pass --proxy-checkpoint PATH") from None
    for m in net.modules():  # explicit attention: exports to plain MatMul/Softmax at any rank
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    return ProxyFeatures(spec, net.eval().float(), crop, record)

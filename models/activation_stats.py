"""Activation statistics of a ViT trunk, measured by forward hooks: the outliers that break low precision.

Per block, on one crop (batch of one):
- `resid_absmax_ratio`: on the block's residual output, each channel's absmax over all tokens,
  the largest channel over the median channel (massive activations, Sun et al. 2024);
  `resid_outlier_channels`: how many channels reach 10x the median (the ones carrying it);
- `high_norm_token_fraction`: patch tokens (prefix tokens excluded) whose residual-output L2 norm
  is >= 5x the median patch-token norm (high-norm tokens, Darcet et al., ICLR 2024);
  `high_norm_tokens`: their indices (sorted, among the patch tokens, row-major over the grid);
  `token_norm_ratio`: their median norm over the median patch-token norm (None where there are none);
- `post_ln_channel_spread`: on the block's first LayerNorm output (affine included), each
  channel's absmax over tokens, largest over median (inter-channel variation, RepQ-ViT, ICCV 2023);
- `attn_max_mean`: the block's attention probabilities averaged over heads, the mean over query
  rows of each row's maximum (uniform attention gives 1/N).

`TrunkView` is the one description of the blocks of an open_clip or timm ViT (SAM included) that
both this module and models.real_stats use.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from fsa_deploy.errors import FSAError
from fsa_deploy.models.registry import Tower
from fsa_deploy.runtime import gate

if TYPE_CHECKING:  # models.reference builds on this module's views
    from fsa_deploy.models.reference import FSAModel

STAT_KEYS = ("resid_absmax_ratio", "high_norm_token_fraction", "post_ln_channel_spread", "attn_max_mean")
HIGH_NORM_FACTOR = 5.0  # a high-norm token: >= 5x the median patch-token norm
OUTLIER_FACTOR = 10.0  # an outlier channel: absmax >= 10x the median channel's


@dataclass
class BlockView:
    """The parts of one transformer block the statistics and the init touch."""

    block: nn.Module
    ln1: nn.LayerNorm
    ln2: nn.LayerNorm
    qkv: nn.Linear | nn.MultiheadAttention  # rows [q; k; v], head-major inside each
    fc1: nn.Linear
    fc2: nn.Linear
    ls2: nn.Module  # LayerScale (has .gamma) or Identity
    probs_from: nn.Module | None  # timm: the attn_drop whose input is the softmax; None: computed (open_clip)

    def qkv_weight(self) -> torch.Tensor:
        return self.qkv.in_proj_weight if isinstance(self.qkv, nn.MultiheadAttention) else self.qkv.weight

    def qkv_bias(self) -> torch.Tensor:
        if isinstance(self.qkv, nn.MultiheadAttention):
            return self.qkv.in_proj_bias
        if self.qkv.bias is None:  # a bias-free qkv gets a zero bias (the init writes a query bias)
            self.qkv.bias = nn.Parameter(torch.zeros(self.qkv.out_features, dtype=self.qkv.weight.dtype))
        return self.qkv.bias


@dataclass
class TrunkView:
    """A ViT's blocks, width and heads; `prefix`: leading non-patch tokens (CLS, registers)."""

    blocks: list[BlockView]
    width: int
    heads: int
    prefix: int


def clip_trunk(visual: Tower) -> TrunkView:
    """open_clip's VisionTransformer (batch-first resblocks of nn.MultiheadAttention)."""
    blocks = [BlockView(b, b.ln_1, b.ln_2, b.attn, b.mlp.c_fc, b.mlp.c_proj, b.ls_2, None)
              for b in visual.transformer.resblocks]
    attn = visual.transformer.resblocks[0].attn
    return TrunkView(blocks, attn.embed_dim, attn.num_heads, 1)


def timm_trunk(net: Tower) -> TrunkView:
    """timm's VisionTransformer (DINO, DINOv2, MAE) and VisionTransformerSAM."""
    blocks = [BlockView(b, b.norm1, b.norm2, b.attn.qkv, b.mlp.fc1, b.mlp.fc2, b.ls2, b.attn.attn_drop)
              for b in net.blocks]
    width = int(net.blocks[0].attn.qkv.in_features)
    return TrunkView(blocks, width, int(net.blocks[0].attn.num_heads), int(getattr(net, "num_prefix_tokens", 0)))


@dataclass
class Captured:
    """One block's tensors on one forward (batch of one), tokens flattened to [N, d]."""

    resid: torch.Tensor | None = None
    ln1: torch.Tensor | None = None
    ln2: torch.Tensor | None = None
    probs: torch.Tensor | None = None  # [rows, N, N] averaged over heads (SAM windows: one row block each)


def _tokens(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().float()
    return t.reshape(-1, t.shape[-1]) if t.dim() != 3 else t[0]


@contextlib.contextmanager
def capture(trunk: TrunkView) -> Iterator[list[Captured]]:
    """Hooks on every block while the body runs; the list fills in block order."""
    out = [Captured() for _ in trunk.blocks]
    handles: list[Any] = []

    def keep(i: int, name: str) -> Callable:
        def hook(_m, _inp, outp):
            setattr(out[i], name, _tokens(outp))
        return hook

    def probs_hook(i: int) -> Callable:
        def hook(_m, inp):
            p = inp[0].detach().float()
            p = p.reshape(-1, trunk.heads, *p.shape[-2:]) if p.dim() == 3 else p  # SAM: [B*h, N, N]
            out[i].probs = p.mean(dim=1)
        return hook

    def mha_hook(i: int, bv: BlockView) -> Callable:
        def hook(_m, _inp, outp):  # open_clip: q, k from ln_1's output with the block's in_proj
            y = outp.detach().float()
            q, k, _ = F.linear(y, bv.qkv_weight().float(), bv.qkv_bias().float()).chunk(3, dim=-1)
            b, n, d = q.shape
            q, k = (t.reshape(b, n, trunk.heads, -1).transpose(1, 2) for t in (q, k))
            out[i].probs = torch.softmax(q @ k.transpose(-1, -2) / (d // trunk.heads) ** 0.5, -1).mean(dim=1)
        return hook

    try:
        for i, bv in enumerate(trunk.blocks):
            handles.append(bv.block.register_forward_hook(keep(i, "resid")))
            handles.append(bv.ln1.register_forward_hook(keep(i, "ln1")))
            handles.append(bv.ln2.register_forward_hook(keep(i, "ln2")))
            if bv.probs_from is not None:
                handles.append(bv.probs_from.register_forward_pre_hook(probs_hook(i)))
            else:
                handles.append(bv.ln1.register_forward_hook(mha_hook(i, bv)))
        yield out
    finally:
        for h in handles:
            h.remove()


def median(x: torch.Tensor) -> torch.Tensor:
    """The median as numpy (and the contract) take it: the mean of the two middle values of an even count
    (torch's median() returns the lower one: 2 high-norm tokens, or DINO B/8's 1764 patches, read low)."""
    return torch.quantile(x.double(), 0.5).to(x.dtype)


def _ratio(absmax: torch.Tensor) -> float:
    return float(absmax.max() / median(absmax).clamp_min(1e-30))


def block_stats(c: Captured, prefix: int) -> dict[str, Any]:
    """The four statistics (and the outlier channel count) of one captured block."""
    assert c.resid is not None and c.ln1 is not None and c.probs is not None
    absmax = c.resid.abs().amax(dim=0)
    norms = c.resid[prefix:].norm(dim=-1)
    high = norms >= HIGH_NORM_FACTOR * median(norms)
    return {
        "resid_absmax_ratio": _ratio(absmax),
        "resid_outlier_channels": int((absmax >= OUTLIER_FACTOR * median(absmax)).sum()),
        "high_norm_token_fraction": float(high.float().mean()),
        "high_norm_tokens": torch.nonzero(high).flatten().tolist(),
        "token_norm_ratio": float(median(norms[high]) / median(norms).clamp_min(1e-30)) if high.any() else None,
        "post_ln_channel_spread": _ratio(c.ln1.abs().amax(dim=0)),
        "attn_max_mean": float(c.probs.amax(dim=-1).mean()),
        "tokens": int(c.probs.shape[-1]),
    }


def trunk_stats(trunk: TrunkView, run: Callable[[], Any]) -> list[dict[str, Any]]:
    """Statistics of every block while `run()` makes one forward of a batch of one."""
    with torch.no_grad(), capture(trunk) as caps:
        run()
    return [{"block": i, **block_stats(c, trunk.prefix)} for i, c in enumerate(caps)]


def model_stats(model: FSAModel, crop: torch.Tensor) -> dict[str, list[dict[str, Any]]]:
    """{clip: [...], proxy: [...]} for an FSAModel on one crop [3, S, S] (RGB 0-255).

    The CLIP trunk is every resblock, the last one included (its output is not used by FSA, but
    it is the trunk's statistic); the proxy, when there is one, is its timm network.
    """
    image = crop.unsqueeze(0).float()
    clip_view = clip_trunk_of(model)
    out = {"clip": trunk_stats(clip_view, lambda: model.last(model.trunk(image)))}
    proxy = model.proxy
    if proxy is not None:
        out["proxy"] = trunk_stats(timm_trunk(proxy.net), lambda: proxy(image))
    else:
        out["proxy"] = []
    return out


def clip_trunk_of(model: FSAModel) -> TrunkView:
    """The CLIP trunk of an FSAModel: its blocks then its last block."""
    blocks: list[Tower] = [*model.blocks, model.last]
    view = [BlockView(b, b.ln_1, b.ln_2, b.attn, b.mlp.c_fc, b.mlp.c_proj, b.ls_2, None) for b in blocks]
    return TrunkView(view, model.width, model.heads, 1)


def check_stats_path(path: str, out: str) -> None:
    """--activation-stats F.json: a .json file name, not the dump's own --out, in an existing folder."""

    if not str(path).endswith(".json"):
        raise FSAError(f"--activation-stats {path}: must end in .json")
    if os.path.abspath(path) == os.path.abspath(out):
        raise FSAError(f"--activation-stats {path}: is the same file as --out")
    if os.path.isdir(path):
        raise FSAError(f"--activation-stats {path}: is a folder")


def write_stats(path: str, stats: dict[str, list[dict[str, float]]], spec: Any) -> None:
    """The statistics as JSON (atomic; strict: a non-finite statistic is refused, never written)."""

    gate.mkdir(Path(path).parent)
    gate.write_json(path, {"model": spec.model, "proxy_name": spec.proxy, "weights": spec.weights.describe(),
                             "crop": spec.crop, **stats})

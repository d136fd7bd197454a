"""`--random-init --real-stats`: random weights shaped to show the outliers of trained ViTs.

Random init lacks exactly what breaks low precision in real vision transformers, so a fidelity
figure measured on it says little about fp16 / int8 on trained weights. This recipe, applied after
the seeded random init, gives every ViT trunk (the CLIP tower and each proxy) the three published
pathologies, with mechanisms like the ones the papers found; docs/BENCHMARKS.md and the README
section "Real-weight statistics" give the measured figures. Steps, in order:

1. Post-LayerNorm inter-channel variation (RepQ-ViT, Li et al., ICCV 2023: post-LN activations of
   trained ViTs differ per channel by tens of times, which is why per-tensor int8 fails on them).
   Every LayerNorm before a linear layer gets log-normal gains and a few channels 40-80x larger
   (with offsets); the linear layer that reads it absorbs 1/gain, so the block computes the same
   function: only the intermediate tensor (the one a quantizer sees) changes.
2. A trigger: a fixed ~4% of patch positions carry a positional-embedding component in one
   channel (a "register-like" position, see 3).
3. Massive activations (Sun et al. 2024, "Massive Activations in Large Language Models": in CLIP
   and DINOv2 ViTs a few fixed residual channels reach hundreds of times the median at a few
   tokens, appear in an early block and persist through the residual stream) and high-norm tokens
   (Darcet et al., "Vision Transformers Need Registers", ICLR 2024: a few percent of patch tokens
   with ~10x the norm of the others). One MLP neuron of block L//4 reads the trigger channel
   after LayerNorm, fires only at the trigger positions (its bias is a threshold set on a probe
   image) and writes ~500x the median channel magnitude into two fixed residual channels; the
   residual stream carries them to the last block.
4. Attention concentrating on those tokens (Darcet et al.: later layers attend to the high-norm
   tokens; Sun et al.: massive activations act as a fixed attention bias). In each later block,
   one key dimension per head reads the two massive channels after LayerNorm, and the query bias
   has the same dimension, so every query's logit to a high-norm token rises by ~6.

Deterministic per seed: the channel choices come from a generator seeded with the model's seed,
and the thresholds and magnitudes from a probe forward of a synthetic image made from the same
seed (never the user's photos). RECIPE names this version: meta.json records it, and a reader
rebuilds the reference only for a recipe it knows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from fsa_deploy.models.activation_stats import TrunkView, capture, clip_trunk, timm_trunk
from torch import nn

from fsa_deploy.errors import FSAError

RECIPE = "real-stats-1"
RECIPES = (RECIPE,)


@dataclass(frozen=True)
class Recipe:
    """The targets as numbers (what each step aims at; the tests measure the outcome)."""

    gain_sigma: float = 0.4  # 1: log-normal spread of every LayerNorm gain
    gain_outliers: int = 3  # 1: channels with a 40-80x gain
    gain_outlier_range: tuple[float, float] = (40.0, 80.0)
    trigger_fraction: float = 0.04  # 2: share of patch positions that become high-norm tokens
    trigger_scale: float = 24.0  # 2: trigger amplitude over the stream's RMS at the positional add
    massive_channels: int = 2  # 3: Sun et al. find one to a few
    massive_ratio: float = 500.0  # 3: massive value over the median channel's absmax
    neuron_drive: float = 6.0  # 3: the neuron's pre-activation at a trigger (GELU ~ linear there)
    attention_boost: float = 6.0  # 4: logit added to a high-norm key, for every query


@dataclass
class Target:
    """One trunk to shape: its blocks, its positional embedding's patch rows and a probe forward."""

    view: TrunkView
    pos_patches: torch.Tensor  # [n, d], a view into the positional-embedding parameter
    triggers: torch.Tensor  # [n] bool: the trigger positions among pos_patches' rows
    stream_in: nn.Module  # its input is the residual stream right after the positional add
    probe: Callable[[], None]  # one forward of the synthetic image


def probe_image(seed: int, size: int) -> torch.Tensor:
    """A smooth synthetic photo [1, 3, size, size] (0-1) from the seed: coarse colour fields plus grain."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 6, 6, generator=g)
    img = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return (img + 0.05 * torch.randn(1, 3, size, size, generator=g)).clamp(0, 1)


def _standardise(img: torch.Tensor) -> torch.Tensor:
    return (img - 0.45) / 0.27


def clip_target(visual: nn.Module, seed: int, recipe: Recipe) -> Target:
    """open_clip's tower at its native size; triggers as 2x2 plateaus of the pretrained grid, so that
    the official bicubic resize of the positional embedding to any crop keeps them (models.reference)."""
    g0 = int(math.isqrt(visual.positional_embedding.shape[0] - 1))
    gen = torch.Generator().manual_seed(seed + 7919)
    cells = max(1, round(recipe.trigger_fraction * g0 * g0 / 4))
    blocks = torch.randperm((g0 // 2) ** 2, generator=gen)[:cells]
    grid = torch.zeros(g0, g0, dtype=torch.bool)
    for b in blocks.tolist():
        i, j = 2 * (b // (g0 // 2)), 2 * (b % (g0 // 2))
        grid[i:i + 2, j:j + 2] = True
    size = visual.image_size[0] if isinstance(visual.image_size, (tuple, list)) else int(visual.image_size)
    image = _standardise(probe_image(seed, size))
    return Target(clip_trunk(visual), visual.positional_embedding.data[1:], grid.flatten(), visual.ln_pre,
                  lambda: visual(image))


def timm_target(net: nn.Module, seed: int, recipe: Recipe) -> Target:
    """A timm ViT (DINO, DINOv2, MAE, SAM) at the size it was built for; scattered trigger positions."""
    pos = net.pos_embed.data
    patches = pos.reshape(-1, pos.shape[-1]) if pos.dim() == 4 else pos[0]
    grid = net.patch_embed.grid_size
    n = int(grid[0] * grid[1])
    patches = patches[-n:]  # the patch rows come last (a CLS row first where the embedding has one)
    gen = torch.Generator().manual_seed(seed + 7919)
    k = max(1, round(recipe.trigger_fraction * n))
    triggers = torch.zeros(n, dtype=torch.bool)
    triggers[torch.randperm(n, generator=gen)[:k]] = True
    image = _standardise(probe_image(seed, int(net.patch_embed.img_size[0])))
    return Target(timm_trunk(net), patches, triggers, net.blocks[0], lambda: net.forward_features(image))


def _gamma(ls: nn.Module) -> torch.Tensor | None:
    return ls.gamma.data if hasattr(ls, "gamma") else None


def _absorb_gains(ln: nn.LayerNorm, lin_w: torch.Tensor, lin_b: torch.Tensor, gain: torch.Tensor,
                  shift: torch.Tensor) -> None:
    """LayerNorm out -> gain * out + shift; the next linear divides its columns by gain and takes the
    shift out of its bias: the function is unchanged, the post-LN tensor has the new spread."""
    ln.weight.data.mul_(gain)
    ln.bias.data.mul_(gain).add_(shift)
    lin_w.div_(gain)
    lin_b.sub_(lin_w @ shift)


def shape_trunk(t: Target, seed: int, recipe: Recipe = Recipe()) -> dict[str, object]:
    """Apply steps 1-4 to one trunk, in place; returns what it chose (for the tests and the docs)."""
    view, d = t.view, t.view.width
    L = len(view.blocks)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(d, generator=gen)
    trig_ch = int(perm[0])
    massive = perm[1:1 + recipe.massive_channels]
    outliers = perm[1 + recipe.massive_channels:1 + recipe.massive_channels + recipe.gain_outliers]
    b0 = L // 4
    prefix = view.prefix
    with torch.no_grad():
        # 1. post-LN channel spread, absorbed by the next linear layer
        for bv in view.blocks:
            for ln, w, b in ((bv.ln1, bv.qkv_weight(), bv.qkv_bias()), (bv.ln2, bv.fc1.weight, bv.fc1.bias)):
                gain = torch.exp(recipe.gain_sigma * torch.randn(d, generator=gen))
                lo, hi = recipe.gain_outlier_range
                gain[outliers] *= lo + (hi - lo) * torch.rand(len(outliers), generator=gen)
                shift = 0.1 * gain * torch.randn(d, generator=gen)
                shift[outliers] = 0.5 * gain[outliers] * torch.sign(torch.randn(len(outliers), generator=gen))
                _absorb_gains(ln, w.data, b.data, gain, shift)
        # the stream's scale where the positional embedding is added, and the median channel at the end
        seen: dict[str, torch.Tensor] = {}
        h = t.stream_in.register_forward_pre_hook(lambda _m, inp: seen.__setitem__("in", inp[0].detach()))
        try:
            with capture(view) as caps:
                t.probe()
        finally:
            h.remove()
        stream = seen["in"].float().reshape(-1, seen["in"].shape[-1])[prefix:]
        rms = float(stream.pow(2).mean().sqrt())
        last = caps[-1].resid
        assert last is not None
        median_absmax = float(last.abs().amax(dim=0).median())
        # 2. the trigger positions
        t.pos_patches[t.triggers, trig_ch] += recipe.trigger_scale * rms
        with capture(view) as caps:
            t.probe()
        z = caps[b0].ln2
        assert z is not None
        rows = prefix + torch.nonzero(t.triggers).flatten()
        on = torch.zeros(z.shape[0], dtype=torch.bool)
        on[rows] = True
        z_on, z_off = z[on, trig_ch], z[~on, trig_ch]
        if z_on.min() <= z_off.max():
            raise FSAError(f"--real-stats: the trigger does not separate on the probe (block {b0}); "
                           "this model is not supported by the recipe")
        thr = float(z_on.min() + z_off.max()) / 2
        drive = recipe.neuron_drive / float(z_on.mean() - thr)
        # 3. one neuron of block b0 writes the massive activations at the trigger positions
        bv = view.blocks[b0]
        j = int(torch.randint(bv.fc1.out_features, (1,), generator=gen))
        bv.fc1.weight.data[j] = 0
        bv.fc1.weight.data[j, trig_ch] = drive
        bv.fc1.bias.data[j] = -drive * thr
        gamma = _gamma(bv.ls2)
        if gamma is not None:  # LayerScale (DINOv2: 1e-5): those channels' scale moves into fc2
            bv.fc2.weight.data[massive] *= gamma[massive, None]
            bv.fc2.bias.data[massive] *= gamma[massive]
            gamma[massive] = 1.0
        signs = torch.sign(torch.randn(len(massive), generator=gen))
        bv.fc2.weight.data[:, j] = 0
        bv.fc2.weight.data[massive, j] = signs * recipe.massive_ratio * median_absmax / recipe.neuron_drive
        # 4. later blocks: every head's logit to a high-norm key rises by attention_boost
        with capture(view) as caps:
            t.probe()
        heads, dh = view.heads, d // view.heads
        kappa = math.sqrt(recipe.attention_boost * math.sqrt(dh))
        for i in range(b0 + 1, L):
            y = caps[i].ln1
            assert y is not None
            y_m = y[rows][:, massive].mean(dim=0)  # the massive channels after LayerNorm, at the triggers
            w, b = view.blocks[i].qkv_weight().data, view.blocks[i].qkv_bias().data
            for hd in range(heads):
                r = hd * dh + int(torch.randint(dh, (1,), generator=gen))
                w[d + r, massive] += kappa / (len(massive) * y_m)
                b[r] += kappa
    return {"trigger_channel": trig_ch, "massive_channels": massive.tolist(), "gain_outliers": outliers.tolist(),
            "block": b0, "triggers": int(t.triggers.sum())}


def apply_clip(visual: nn.Module, seed: int) -> dict[str, object]:
    """Shape open_clip's image tower (built under `seed`)."""
    return shape_trunk(clip_target(visual, seed, Recipe()), seed)


def apply_proxy(net: nn.Module, seed: int) -> dict[str, object]:
    """Shape a timm proxy (built under `seed`)."""
    return shape_trunk(timm_target(net, seed, Recipe()), seed)

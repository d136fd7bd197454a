"""`--random-init --real-stats`: random weights shaped to show the outliers of trained ViTs.

Random init lacks exactly what breaks low precision in real vision transformers, so a fidelity
figure measured on it says little about fp16 / int8 on trained weights. This recipe, applied after
the seeded random init, gives every ViT trunk (the CLIP tower and each proxy) the three published
pathologies, with mechanisms like the ones the papers found; docs/PRECISION.md describes them,
docs/BENCHMARKS.md gives the measured figures. Steps, in order:

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
from torch import nn

from fsa_deploy.errors import FSAError
from fsa_deploy.models.activation_stats import TrunkView, capture, clip_trunk, timm_trunk
from fsa_deploy.models.registry import Tower


@dataclass(frozen=True)
class Recipe:
    """The targets as numbers (what each step aims at; the tests measure the outcome). Magnitudes planted
    (gain outliers, massive values, the attention boost) are multiplied by `--real-stats-scale`."""

    gain_sigma: float = 0.4  # 1: log-normal spread of every LayerNorm gain
    gain_outliers: int = 3  # 1: channels with a 40-80x gain
    gain_outlier_range: tuple[float, float] = (40.0, 80.0)
    placement: str = "position"  # 2: high-norm tokens at fixed positions ("position") or by content ("content")
    trigger_fraction: float = 0.04  # 2: share of patch tokens that become high-norm tokens
    trigger_scale: float = 24.0  # 2: trigger amplitude over the stream's RMS at the positional add ("content": over
    # the 10th percentile of the probe's patch-token norms there)
    dc_gain: float = 1.0  # 2 (content): the patch embedding's response to a patch's mean colour, kept x this
    massive_channels: int = 2  # 3: Sun et al. find one to a few
    massive_ratio: float = 500.0  # 3 (position): massive value over the median channel's absmax
    token_norm_ratio: float = 0.0  # 3 (content): high-norm token norm over the median token norm (0: massive_ratio)
    depth: float = 0.25  # 3: the block that writes them, as a fraction of the trunk's depth
    neuron_drive: float = 6.0  # 3: the neuron's pre-activation at a trigger (GELU ~ linear there)
    attention_boost: float = 6.0  # 4: logit added to a high-norm key, for every query
    sink_values: bool = False  # 4: later blocks' values ignore the massive channels (sinks that add ~nothing)
    families: tuple[str, ...] = ("clip", "dino", "dinov2", "dinov2-noreg", "sam", "mae")  # trunks with 2-4


# docs/METHOD.md "Real-weight statistics" cites each figure. real-stats-1 stays readable: artefacts exported with it
# rebuild the same weights.
RECIPES: dict[str, Recipe] = {
    "real-stats-1": Recipe(),
    "real-stats-2": Recipe(
        placement="content",  # Darcet et al.: in redundant, low-information (background) patches of each image
        trigger_fraction=0.02,  # Darcet et al.: about 2% of the patch tokens
        trigger_scale=1.0,
        dc_gain=0.1,  # trained first layers are mostly contrast / texture filters: flat patches give small tokens
        token_norm_ratio=6.0,  # Darcet et al.: outliers a few times the bulk's norm (bimodal: > 150 against < 100,
        # read from their norm histograms; 6 keeps them past activation_stats' 5x threshold)
        depth=0.375,  # Darcet et al.: from about layer 15 of 40 (ViT-g); Sun et al.: early layers on
        sink_values=True,  # Sun et al.: attention concentrates on them and their values act as a fixed bias
        families=("clip", "dinov2-noreg"),  # Darcet et al.: OpenCLIP and DINOv2 have them, DINO v1 does not;
        # DINOv2 with registers keeps them in its registers (not planted); SAM and MAE: not reported
    ),
}
RECIPE = "real-stats-2"  # what --real-stats builds now
SCALE_DEFAULT = 1.0  # --real-stats-scale: 1 = the published figures


@dataclass
class Target:
    """One trunk to shape: its blocks, its positional embedding's patch rows and a probe forward."""

    view: TrunkView
    pos_patches: torch.Tensor  # [n, d], a view into the positional-embedding parameter
    triggers: torch.Tensor  # [n] bool: the trigger positions among pos_patches' rows ("position" placement)
    stream_in: nn.Module  # its input is the residual stream right after the positional add
    probe: Callable[[], None]  # one forward of the synthetic image
    patch_weight: torch.Tensor | None = None  # [d, 3, p, p], the patch embedding's kernels ("content" placement)


def probe_image(seed: int, size: int) -> torch.Tensor:
    """A smooth synthetic photo [1, 3, size, size] (0-1) from the seed: coarse colour fields plus grain."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 6, 6, generator=g)
    img = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return (img + 0.05 * torch.randn(1, 3, size, size, generator=g)).clamp(0, 1)


def content_probe(seed: int, size: int) -> torch.Tensor:
    """probe_image's colour fields with a grain whose strength varies by region (from none to strong), as a
    photo has flat sky next to foliage: what the "content" placement's threshold is set on."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 6, 6, generator=g)
    img = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    amp = F.interpolate(torch.rand(1, 1, 5, 5, generator=g), size=(size, size), mode="bilinear", align_corners=False)
    return (img + 0.15 * amp ** 2 * torch.randn(1, 3, size, size, generator=g)).clamp(0, 1)


def _standardise(img: torch.Tensor) -> torch.Tensor:
    return (img - 0.45) / 0.27


def _probe(recipe: Recipe, seed: int, size: int) -> torch.Tensor:
    return _standardise((content_probe if recipe.placement == "content" else probe_image)(seed, size))


def clip_target(visual: Tower, seed: int, recipe: Recipe) -> Target:
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
    image = _probe(recipe, seed, size)
    return Target(clip_trunk(visual), visual.positional_embedding.data[1:], grid.flatten(), visual.ln_pre,
                  lambda: visual(image), visual.conv1.weight.data)


def timm_target(net: Tower, seed: int, recipe: Recipe) -> Target:
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
    image = _probe(recipe, seed, int(net.patch_embed.img_size[0]))
    return Target(timm_trunk(net), patches, triggers, net.blocks[0], lambda: net.forward_features(image),
                  net.patch_embed.proj.weight.data)


def _gamma(ls: Tower) -> torch.Tensor | None:
    return ls.gamma.data if hasattr(ls, "gamma") else None


def _absorb_gains(ln: nn.LayerNorm, lin_w: torch.Tensor, lin_b: torch.Tensor, gain: torch.Tensor,
                  shift: torch.Tensor) -> None:
    """LayerNorm out -> gain * out + shift; the next linear divides its columns by gain and takes the
    shift out of its bias: the function is unchanged, the post-LN tensor has the new spread."""
    ln.weight.data.mul_(gain)
    ln.bias.data.mul_(gain).add_(shift)
    lin_w.div_(gain)
    lin_b.sub_(lin_w @ shift)


def _trigger(t: Target, recipe: Recipe, trig_ch: int, rms: float) -> None:
    """Step 2. "position": the trigger channel of the positional embedding at the trigger rows. "content": the
    patch kernels respond mostly to contrast (their mean-colour response x dc_gain) and every patch row of the
    positional embedding carries one constant channel; after LayerNorm that channel is large exactly where the
    rest of the token is small: the flat, low-information patches of the image."""
    if recipe.placement == "position":
        t.pos_patches[t.triggers, trig_ch] += recipe.trigger_scale * rms
        return
    assert t.patch_weight is not None
    w = t.patch_weight
    dc = w.mean(dim=(2, 3), keepdim=True)
    w.sub_(dc * (1.0 - recipe.dc_gain))
    t.pos_patches[:, trig_ch] += recipe.trigger_scale * rms


def shape_trunk(t: Target, seed: int, recipe: Recipe = RECIPES["real-stats-1"], scale: float = SCALE_DEFAULT,
                plant: bool = True) -> dict[str, object]:
    """Apply steps 1-4 to one trunk, in place (step 1 only where `plant` is False: a trunk the papers report no
    high-norm tokens for); `scale` multiplies every planted magnitude (gain outliers, massive values, the
    attention boost). Returns what it chose (for the tests and the docs)."""
    view, d = t.view, t.view.width
    L = len(view.blocks)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(d, generator=gen)
    trig_ch = int(perm[0])
    massive = perm[1:1 + recipe.massive_channels]
    outliers = perm[1 + recipe.massive_channels:1 + recipe.massive_channels + recipe.gain_outliers]
    b0 = min(L - 1, int(recipe.depth * L))
    prefix = view.prefix
    with torch.no_grad():
        # 1. post-LN channel spread, absorbed by the next linear layer
        for bv in view.blocks:
            for ln, w, b in ((bv.ln1, bv.qkv_weight(), bv.qkv_bias()), (bv.ln2, bv.fc1.weight, bv.fc1.bias)):
                gain = torch.exp(recipe.gain_sigma * torch.randn(d, generator=gen))
                lo, hi = recipe.gain_outlier_range
                gain[outliers] *= scale * (lo + (hi - lo) * torch.rand(len(outliers), generator=gen))
                shift = 0.1 * gain * torch.randn(d, generator=gen)
                shift[outliers] = 0.5 * gain[outliers] * torch.sign(torch.randn(len(outliers), generator=gen))
                _absorb_gains(ln, w.data, b.data, gain, shift)
        if not plant:
            return {"gain_outliers": outliers.tolist(), "planted": False}
        if recipe.placement == "content":  # the kernels first: the stream's scale below is the new one's
            _trigger(t, recipe, trig_ch, 0.0)
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
        # a photo's typical token: the probe's textured part (its flat regions pull the probe's median down)
        typical_norm = float(torch.quantile(last[prefix:].norm(dim=-1), 0.9))
        # 2. the trigger
        if recipe.placement == "content":  # comparable to a flat patch's token: the channel then ranks flatness
            t.pos_patches[:, trig_ch] += recipe.trigger_scale * float(torch.quantile(stream.norm(dim=-1), 0.1))
        else:
            _trigger(t, recipe, trig_ch, rms)
        with capture(view) as caps:
            t.probe()
        z = caps[b0].ln2
        assert z is not None
        if recipe.placement == "content":  # the top trigger_fraction of the probe's patches by the trigger channel
            zp = z[prefix:, trig_ch]
            k = max(1, round(recipe.trigger_fraction * len(zp)))
            top = torch.topk(zp, k + 1).values
            thr = float(top[-2] + top[-1]) / 2
            on = torch.zeros(z.shape[0], dtype=torch.bool)
            on[prefix:] = zp > thr
        else:
            rows = prefix + torch.nonzero(t.triggers).flatten()
            on = torch.zeros(z.shape[0], dtype=torch.bool)
            on[rows] = True
            if z[on, trig_ch].min() <= z[~on, trig_ch].max():
                raise FSAError(f"--real-stats: the trigger does not separate on the probe (block {b0}); "
                               "this model is not supported by the recipe")
            thr = float(z[on, trig_ch].min() + z[~on, trig_ch].max()) / 2
        rows = torch.nonzero(on).flatten()
        drive = recipe.neuron_drive / float(z[on, trig_ch].mean() - thr)
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
        if recipe.token_norm_ratio:  # the token's norm ~ ratio x the median's, carried by the massive channels
            value = math.sqrt(max(recipe.token_norm_ratio ** 2 - 1.0, 0.0) / len(massive)) * typical_norm
        else:
            value = recipe.massive_ratio * median_absmax
        bv.fc2.weight.data[:, j] = 0
        bv.fc2.weight.data[massive, j] = signs * scale * value / recipe.neuron_drive
        if recipe.placement == "content":  # a second neuron, the first shifted by its drive, subtracts: the output
            # ramps up over the probe's trigger range and then stays flat, so a flatter patch is no larger
            j2 = (j + 1 + int(torch.randint(bv.fc1.out_features - 1, (1,), generator=gen))) % bv.fc1.out_features
            bv.fc1.weight.data[j2] = 0
            bv.fc1.weight.data[j2, trig_ch] = drive
            bv.fc1.bias.data[j2] = -drive * thr - recipe.neuron_drive
            bv.fc2.weight.data[:, j2] = 0
            bv.fc2.weight.data[massive, j2] = -signs * scale * value / recipe.neuron_drive
        # 4. later blocks: every head's logit to a high-norm key rises by attention_boost
        with capture(view) as caps:
            t.probe()
        heads, dh = view.heads, d // view.heads
        kappa = math.sqrt(scale * recipe.attention_boost * math.sqrt(dh))
        for i in range(b0 + 1, L):
            y = caps[i].ln1
            assert y is not None
            y_m = y[rows][:, massive].mean(dim=0)  # the massive channels after LayerNorm, at the triggers
            w, b = view.blocks[i].qkv_weight().data, view.blocks[i].qkv_bias().data
            for hd in range(heads):
                r = hd * dh + int(torch.randint(dh, (1,), generator=gen))
                w[d + r, massive] += kappa / (len(massive) * y_m)
                b[r] += kappa
            if recipe.sink_values:  # the values ignore the massive channels: a sink token's value is small
                w[2 * d:, massive] = 0
    return {"trigger_channel": trig_ch, "massive_channels": massive.tolist(), "gain_outliers": outliers.tolist(),
            "block": b0, "triggers": int(on[prefix:].sum()), "planted": True}


def recipe_of(name: str) -> Recipe:
    if name not in RECIPES:
        raise FSAError(f"--real-stats recipe {name!r}: unknown (known: {', '.join(RECIPES)})")
    return RECIPES[name]


def apply_clip(visual: Tower, seed: int, recipe: str = RECIPE, scale: float = SCALE_DEFAULT) -> dict[str, object]:
    """Shape open_clip's image tower (built under `seed`)."""
    r = recipe_of(recipe)
    return shape_trunk(clip_target(visual, seed, r), seed, r, scale, "clip" in r.families)


def apply_proxy(net: Tower, seed: int, family: str, recipe: str = RECIPE,
                scale: float = SCALE_DEFAULT) -> dict[str, object]:
    """Shape a timm proxy (built under `seed`); `family`: the proxy's (models.registry.ProxySpec.family)."""
    r = recipe_of(recipe)
    return shape_trunk(timm_target(net, seed, r), seed, r, scale, family in r.families)

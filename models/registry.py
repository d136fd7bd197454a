"""Models described as data: CLIP backbones, proxies (VFMs) and FSA hyper-parameters.

Adding a backbone or a proxy is a new row here, not a new code branch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from fsa_deploy.errors import FSAError

# An open_clip or timm tower (CLIP's `visual`, a timm ViT): its parts (transformer.resblocks, patch_embed,
# forward_features, ...) are its family's, reached through nn.Module.__getattr__, which types every one of
# them Tensor | Module. Code that walks a family's layout takes a Tower.
Tower = Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ATTENTIONS = ("proxy", "qk", "sclip", "clearclip", "naclip")


@dataclass(frozen=True)
class ClipSpec:
    """An open_clip model name (or `tiny`, registered from models/configs/tiny.json)."""

    name: str
    open_clip_name: str
    patch: int
    lamda: float  # FSA lambda with DINO / DINOv2 / SAM (MAE overrides it, see ProxySpec.lamda)


@dataclass(frozen=True)
class ProxySpec:
    """A timm VFM and how the crop is fed to it (docs/METHOD.md step 5).

    `input_size` None: the crop size itself; an int: the crop is resized bilinearly to it
    (SAM's 1024). `kwargs` shrink the family for tests. `family` picks the checkpoint layouts
    the proxy loads and its official pos_embed resize (models.weights FAMILY_LAYOUTS, POS_INTERP).
    """

    name: str
    timm_name: str
    patch: int
    family: str
    input_size: int | None = None
    lamda: float | None = None  # overrides the backbone's lambda (MAE: 4.5 on every backbone)
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HyperParams:
    """FSA hyper-parameters (docs/METHOD.md); `lamda` is spelled as in the paper's code."""

    beta: float = 1.2
    gamma: float = 3.0
    lamda: float = 3.0
    top_p: float = 0.45
    patch_scale: float = 20.0  # step 8
    uniform_scale: float = 35.0  # step 9
    kl_eps: float = 1e-10  # step 11
    naclip_sigma: float = 5.0
    logit_scale: float = 40.0  # post-processing

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


CLIPS: dict[str, ClipSpec] = {
    s.name: s
    for s in (
        ClipSpec("ViT-B-16", "ViT-B-16", 16, lamda=3.0),
        ClipSpec("ViT-L-14", "ViT-L-14", 14, lamda=3.0),
        ClipSpec("ViT-L-14-336", "ViT-L-14-336", 14, lamda=3.0),  # OpenAI's ViT-L-14-336px.pt
        ClipSpec("ViT-H-14", "ViT-H-14", 14, lamda=2.3),
        ClipSpec("tiny", "tiny", 16, lamda=3.0),
    )
}

_TINY_VIT = dict(embed_dim=64, depth=2, num_heads=2)
PROXIES: dict[str, ProxySpec] = {
    s.name: s
    for s in (
        ProxySpec("dino", "vit_base_patch8_224.dino", 8, "dino"),
        ProxySpec("dinov2", "vit_base_patch14_reg4_dinov2.lvd142m", 14, "dinov2"),
        # DINOv2 without registers (dinov2_vitb14_pretrain.pth); not a proxy of the official FSA code
        ProxySpec("dinov2-noreg", "vit_base_patch14_dinov2.lvd142m", 14, "dinov2-noreg"),
        ProxySpec("sam", "samvit_base_patch16.sa1b", 16, "sam", input_size=1024),
        ProxySpec("mae", "vit_base_patch16_224.mae", 16, "mae", lamda=4.5),
        ProxySpec("tiny-dino", "vit_base_patch8_224.dino", 8, "dino", kwargs=_TINY_VIT),
        ProxySpec("tiny-dinov2", "vit_base_patch14_reg4_dinov2.lvd142m", 14, "dinov2", kwargs=_TINY_VIT),
        ProxySpec("tiny-dinov2-noreg", "vit_base_patch14_dinov2.lvd142m", 14, "dinov2-noreg", kwargs=_TINY_VIT),
        ProxySpec(
            "tiny-sam",
            "samvit_base_patch16.sa1b",
            16,
            "sam",
            input_size=256,
            kwargs=dict(_TINY_VIT, global_attn_indexes=(1,), neck_chans=32),
        ),
        ProxySpec("tiny-mae", "vit_base_patch16_224.mae", 16, "mae", lamda=4.5, kwargs=_TINY_VIT),
    )
}


def clip_spec(name: str) -> ClipSpec:
    try:
        return CLIPS[name]
    except KeyError:
        raise FSAError(f"--model {name!r}: unknown model (choose from {', '.join(CLIPS)})") from None


def proxy_spec(name: str) -> ProxySpec:
    try:
        return PROXIES[name]
    except KeyError:
        raise FSAError(f"--proxy {name!r}: unknown proxy (choose from {', '.join(PROXIES)})") from None


def default_lamda(model: str, proxy: str | None) -> float:
    """lambda from the official hyper_param.txt: 3.0 (B/16, L/14), 2.3 (H/14), 4.5 with MAE."""
    if proxy is not None and proxy_spec(proxy).lamda is not None:
        return float(proxy_spec(proxy).lamda)  # type: ignore[arg-type]
    return clip_spec(model).lamda

"""The FSA crop forward: crop (RGB 0-255) + text embeddings -> crop logits.

Reads top to bottom as docs/METHOD.md: pass 0 (CLIP trunk), pass 1 (the base
attention: ProxyCLIP's proxy attention, or Q-K / SCLIP / ClearCLIP / NACLIP), the
feedback (steps 8-13) and pass 2 (the ensemble and the tail). `formulation` picks the
official (`literal`) or the exported (`deploy`) math; both are the same function.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from fsa_deploy.contract import CLIP_MEAN, CLIP_STD
from fsa_deploy.errors import FSAError
from fsa_deploy.models import fsa
from fsa_deploy.models.proxies import ProxyFeatures
from fsa_deploy.models.registry import ATTENTIONS, HyperParams, Tower

FORMULATIONS = ("deploy", "literal")


@dataclass(frozen=True)
class FSAConfig:
    """What the crop forward computes; written to meta.json as is."""

    attention: str = "proxy"
    fsa: bool = True
    crop: int = 336
    hp: HyperParams = field(default_factory=HyperParams)

    def __post_init__(self) -> None:
        if self.attention not in ATTENTIONS:
            raise FSAError(f"--attention {self.attention!r}: unknown (choose from {', '.join(ATTENTIONS)})")


def interpolate_pos_embed(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """The official resize of CLIP's positional embedding: bicubic with scale (g + 0.1) / g_pre."""
    g_pre = int(math.isqrt(pos.shape[0] - 1))
    if g_pre == grid:
        return pos
    patch = pos[1:].reshape(1, g_pre, g_pre, -1).permute(0, 3, 1, 2)
    scale = (grid + 0.1) / g_pre
    patch = F.interpolate(patch, scale_factor=(scale, scale), mode="bicubic")
    assert patch.shape[-1] == grid, f"positional embedding resized to {patch.shape[-1]}, expected {grid}"
    return torch.cat([pos[:1], patch.permute(0, 2, 3, 1).reshape(grid * grid, -1)], dim=0)


class FSAModel(nn.Module):
    """CLIP (+ a proxy for ProxyCLIP) with FSA in its last attention; one crop size.

    forward(image [B, 3, S, S] float 0-255, text [K, D] L2-normalised) -> logits [B, K, H', W'].
    `head_dtype` is the dtype of the last block, the feedback and the tail (fp32 even when
    the trunk and proxy run in fp16; fp64 for checks).
    """

    # buffers (register_buffer): typed here, as nn.Module's __getattr__ types them Tensor | Module
    pos_pretrained: torch.Tensor
    pos_embed: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    omega: torch.Tensor | None

    def __init__(self, clip: nn.Module, proxy: ProxyFeatures | None, cfg: FSAConfig, formulation: str = "deploy"):
        super().__init__()
        if formulation not in FORMULATIONS:
            raise ValueError(f"formulation {formulation!r} not in {FORMULATIONS}")
        if (proxy is None) != (cfg.attention != "proxy"):
            raise FSAError(f"--attention {cfg.attention}: a proxy is {'required' if proxy is None else 'not used'}")
        visual: Tower = clip.visual  # open_clip's VisionTransformer
        self.cfg, self.formulation, self.literal = cfg, formulation, formulation == "literal"
        self.patch = visual.conv1.kernel_size[0]
        if cfg.crop % self.patch:
            raise FSAError(f"--crop {cfg.crop}: not a multiple of the CLIP patch size {self.patch}")
        self.grid = cfg.crop // self.patch
        self.conv1, self.ln_pre, self.ln_post = visual.conv1, visual.ln_pre, visual.ln_post
        self.class_embedding = visual.class_embedding
        self.proj = visual.proj
        self.blocks = nn.ModuleList(visual.transformer.resblocks[:-1])
        self.last = visual.transformer.resblocks[-1]
        self.heads = self.last.attn.num_heads
        self.width = self.last.attn.embed_dim
        self.embed_dim = self.proj.shape[1]
        self.register_buffer("pos_pretrained", visual.positional_embedding.detach().clone(), persistent=False)
        self.register_buffer("pos_embed", interpolate_pos_embed(visual.positional_embedding.detach(), self.grid))
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.proxy = proxy
        omega = fsa.naclip_omega((self.grid, self.grid), cfg.hp.naclip_sigma) if cfg.attention == "naclip" else None
        self.register_buffer("omega", omega, persistent=False)
        self.out_grid: tuple[int, int] = proxy.grid if proxy is not None else (self.grid, self.grid)
        self.head_dtype = torch.float32

    # -- precision --------------------------------------------------------------------------------

    def set_precision(self, trunk: torch.dtype, head: torch.dtype = torch.float32) -> FSAModel:
        """Trunk (patch embedding, blocks 1..L-1) and proxy in `trunk`; last block, feedback, tail in `head`."""
        self.to(trunk)
        for m in (self.last, self.ln_post):
            m.to(head)
        self.proj.data = self.proj.data.to(head)
        self.omega = None if self.omega is None else self.omega.to(head)
        self.head_dtype = head
        return self

    # -- pass 0: CLIP trunk ---------------------------------------------------------------------

    def trunk(self, image: torch.Tensor) -> torch.Tensor:
        """crop 0-255 -> X [B, 1 + g*g, d], the input of the last block."""
        dtype = self.conv1.weight.dtype
        x = ((image - self.mean) / self.std).to(dtype)
        x = self.conv1(x).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        # literal: resized on every call, as the official code does; deploy: a constant
        pos = interpolate_pos_embed(self.pos_pretrained, self.grid) if self.literal else self.pos_embed
        x = self.ln_pre(x + pos.to(dtype))
        for blk in self.blocks:
            x = blk(x)
        if self.literal:  # the official code also runs and projects the whole last block, unused
            self.tail(self.last(x.to(self.head_dtype)))
        return x

    def tail(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.ln_post(tokens) @ self.proj

    def out_proj(self, x: torch.Tensor) -> torch.Tensor:
        return self.last.attn.out_proj(x)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        y = self.last.ln_1(x)
        q, k, v = F.linear(y, self.last.attn.in_proj_weight, self.last.attn.in_proj_bias).chunk(3, dim=-1)
        return q, k, v

    def split_heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.reshape(b, n, self.heads, -1).transpose(1, 2)

    @staticmethod
    def merge_heads(t: torch.Tensor) -> torch.Tensor:
        b, h, n, dh = t.shape
        return t.transpose(1, 2).reshape(b, n, h * dh)

    # -- the whole crop forward -------------------------------------------------------------------

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.run(image, text)

    def run(self, image: torch.Tensor, text: torch.Tensor, stages: dict[str, torch.Tensor] | None = None,
            keep: torch.Tensor | None = None, proxy_keep: torch.Tensor | None = None):
        """The crop forward; `stages` collects stage tensors. For checks, `keep` imposes the top-p
        mask (step 12) and `proxy_keep` the proxy attention's mask (step 6)."""
        x = self.trunk(image).to(self.head_dtype)
        text = text.to(self.head_dtype)
        if self.cfg.attention == "proxy":
            feats = self.proxy_head(image, x, text, stages, keep, proxy_keep)
        else:
            feats = self.base_head(x, text, stages, keep)
        feats = F.normalize(feats, dim=-1)
        logits = (feats @ text.transpose(0, 1)).transpose(1, 2)
        logits = logits.reshape(logits.shape[0], logits.shape[1], *self.out_grid).float()
        if stages is not None:
            stages.update(image=image, text_embeddings=text, features=feats, logits=logits)
        return logits

    # -- pass 1 + feedback + pass 2: ProxyCLIP --------------------------------------------------

    def proxy_head(self, image, x, text, stages, keep, proxy_keep):
        """Steps 4-15 with the proxy's attention, head-independent."""
        assert self.proxy is not None
        feats = self.proxy(image.to(self.proxy.mean.dtype)).to(self.head_dtype)
        _, _, v = self.qkv(x)
        b, (h2, w2) = v.shape[0], self.out_grid
        v = v[:, 1:].transpose(1, 2).reshape(b, self.width, self.grid, self.grid)
        v = F.interpolate(v, size=(h2, w2), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
        attn = fsa.proxy_attention(feats, self.cfg.hp.beta, self.cfg.hp.gamma, proxy_keep, self.literal)
        if stages is not None:
            stages.update(proxy_features=feats, values=v, attn_proxy=attn)
        return self.proxy_attend(attn, v, text, stages, keep)

    def proxy_attend(self, attn, v, text, stages=None, keep=None):
        """Steps 7-15: A [B, N, N] and V' [B, N, d] -> features [B, N, D] (before normalisation)."""
        if self.literal:
            return self._proxy_literal(attn, v, text, stages, keep)
        vo = self.out_proj(v)  # out_proj once: rows of A, A_new, A_ens sum to 1
        o1 = attn @ vo
        if stages is not None:
            stages["attn_out1"] = o1
        if not self.cfg.fsa:
            return self.tail(o1)
        attn_new = fsa.feedback(o1, vo.mean(dim=1, keepdim=True), self.tail, text, self.cfg.hp, False, stages, keep)
        return self.tail(fsa.ensemble_deploy(attn_new, attn, vo, o1))

    def _proxy_literal(self, attn, v, text, stages, keep):
        """The official per-head code path: A repeated per head, uniform attention as a matrix."""
        vh = self.split_heads(v)  # [B, h, N, dh]
        a_h = attn.unsqueeze(1).expand(-1, self.heads, -1, -1)
        o1 = self.out_proj(self.merge_heads(a_h @ vh))
        if stages is not None:
            stages["attn_out1"] = o1
        if not self.cfg.fsa:
            return self.tail(o1)
        uniform = torch.softmax(torch.ones_like(a_h), dim=-1)
        u_all = self.out_proj(self.merge_heads(uniform @ vh))  # every row equal
        attn_new = fsa.feedback(o1, u_all[:, :1], self.tail, text, self.cfg.hp, True, stages, keep)
        new_h = attn_new.unsqueeze(1).expand(-1, self.heads, -1, -1)
        return self.tail(self.out_proj(self.merge_heads(fsa.ensemble_literal(new_h, a_h, vh))))

    # -- pass 1 + feedback + pass 2: Q-K, SCLIP, ClearCLIP, NACLIP -------------------------------

    def base_head(self, x, text, stages, keep):
        """The base method's per-head attention; FSA re-weights its patch-to-patch block."""
        q, k, v = (self.split_heads(t) for t in self.qkv(x))  # [B, h, L, dh]
        attn = fsa.base_attention(self.cfg.attention, q, k, self.omega)
        o_base = self.out_proj(self.merge_heads(attn @ v))
        vp = v[:, :, 1:]
        if stages is not None:
            stages["values"] = self.merge_heads(vp)
            stages["attn_out1"] = o_base[:, 1:]
        if not self.cfg.fsa:
            return self.tail(self.after_attention(x[:, 1:], o_base[:, 1:]))
        o1 = o_base[:, 1:]
        if self.literal:
            uniform = torch.softmax(torch.ones_like(attn[:, :, 1:, 1:]), dim=-1)
            u = self.out_proj(self.merge_heads(uniform @ vp))[:, :1]
        else:
            u = self.out_proj(self.merge_heads(vp.mean(dim=2, keepdim=True)))
        attn_new = fsa.feedback(o1, u, self.tail, text, self.cfg.hp, self.literal, stages, keep)
        pp = attn[:, :, 1:, 1:]
        pp = pp / pp.sum(dim=-1, keepdim=True)  # patch-to-patch block, rows renormalised
        new_h = attn_new.unsqueeze(1)
        if self.literal:
            ens = fsa.ensemble_literal(new_h.expand(-1, self.heads, -1, -1), pp, vp)
        else:
            ens = fsa.ensemble_deploy(new_h, pp, vp, pp @ vp)
        return self.tail(self.after_attention(x[:, 1:], self.out_proj(self.merge_heads(ens))))

    def after_attention(self, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """What the base method keeps after its last attention: SCLIP the residual and FFN, others none."""
        if self.cfg.attention != "sclip":
            return o
        x = x + self.last.ls_1(o)
        return x + self.last.ls_2(self.last.mlp(self.last.ln_2(x)))

    def stages(self, image: torch.Tensor, text: torch.Tensor, keep: torch.Tensor | None = None,
               proxy_keep: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Every stage of docs/CONTRACT.md for a batch of crops (batch index kept)."""
        out: dict[str, torch.Tensor] = {}
        self.run(image, text, out, keep, proxy_keep)
        return out

    def with_formulation(self, formulation: str) -> FSAModel:
        """A shallow twin sharing the weights, computing the other formulation."""
        twin = copy.copy(self)  # a new __dict__; the module, parameter and buffer tables are shared
        twin.formulation, twin.literal = formulation, formulation == "literal"
        return twin


@dataclass
class Alignment:
    """Mask entries where two computations disagree: ties (rounding decides; excused) and flips (errors)."""

    top_p_ties: int = 0
    top_p_flips: int = 0
    proxy_ties: int = 0
    proxy_flips: int = 0


def aligned_stages(model: FSAModel, crops: torch.Tensor, text: torch.Tensor, theirs: dict
                   ) -> tuple[dict[str, torch.Tensor], Alignment]:
    """The reference's stages with the masks that rounding decides resolved as `theirs` resolved them.

    `theirs` holds another computation's `attn_proxy` and/or `keep` (an ONNX graph's stage
    outputs, say). Where the two masks differ only at ambiguous entries (docs/METHOD.md),
    the reference is re-run under the other side's mask, so the later stages compare like for
    like; unambiguous differences are counted as flips and left alone.
    """
    al, hp = Alignment(), model.cfg.hp
    ref = model.stages(crops, text)
    imposed: dict[str, torch.Tensor] = {}
    if theirs.get("attn_proxy") is not None and "attn_proxy" in ref:
        other = torch.as_tensor(theirs["attn_proxy"]) > 0
        differ = other != (ref["attn_proxy"] > 0)
        if differ.any():
            amb = fsa.proxy_keep_ambiguous(ref["proxy_features"], hp.beta, hp.gamma)
            al.proxy_ties, al.proxy_flips = int((differ & amb).sum()), int((differ & ~amb).sum())
            if not al.proxy_flips:
                imposed["proxy_keep"] = other
                ref = model.stages(crops, text, **imposed)
    if theirs.get("keep") is not None and "keep" in ref:
        other = torch.as_tensor(theirs["keep"])
        differ = other != ref["keep"]
        if differ.any():
            amb = fsa.ambiguous_entries(ref["sim"], hp.top_p)
            al.top_p_ties, al.top_p_flips = int((differ & amb).sum()), int((differ & ~amb).sum())
            if not al.top_p_flips:
                imposed["keep"] = other
                ref = model.stages(crops, text, **imposed)
    return ref, al

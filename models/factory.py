"""One description of a model selection (what `fsa export` records) and its builder."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from fsa_deploy.errors import FSAError
from fsa_deploy.models import real_stats
from fsa_deploy.models.clip import load_clip
from fsa_deploy.models.proxies import create_proxy
from fsa_deploy.models.reference import FSAConfig, FSAModel
from fsa_deploy.models.registry import ATTENTIONS, HyperParams, clip_spec, default_lamda, proxy_spec
from fsa_deploy.models.weights import Weights, checked_path
from fsa_deploy.ranges import CROP, HYPER_PARAMETERS
from fsa_deploy.runtime.artifact import sha256_file
from fsa_deploy.runtime.schema import Meta, MetaRecord


@dataclass(frozen=True)
class ModelSpec:
    """Model, weights, attention type, proxy, crop, hyper-parameters: everything a forward depends on."""

    model: str = "ViT-B-16"
    weights: Weights = field(default_factory=lambda: Weights(seed=0))
    attention: str = "proxy"
    proxy: str | None = "dino"
    proxy_checkpoint: str | None = None
    crop: int = 336
    fsa: bool = True
    hp: HyperParams = field(default_factory=HyperParams)

    def __post_init__(self) -> None:
        for name, bound in HYPER_PARAMETERS.items():  # the library's bounds (the CLI's table holds the same)
            bound.check(getattr(self.hp, name))
        CROP.check(self.crop)
        patch = clip_spec(self.model).patch
        if self.crop <= 0 or self.crop % patch:
            raise FSAError(f"--crop {self.crop}: must be a positive multiple of {self.model}'s patch size {patch}")
        if self.attention not in ATTENTIONS:
            raise FSAError(f"--attention {self.attention!r}: unknown (choose from {', '.join(ATTENTIONS)})")
        if self.attention == "proxy":
            if self.proxy is None:
                raise FSAError("--attention proxy needs --proxy")
            proxy_spec(self.proxy)

    def describe(self) -> dict[str, Any]:
        """The selection as JSON-able data (meta.json's `model` section)."""
        return {
            "model": self.model,
            "weights": self.weights.describe(),
            "attention": self.attention,
            "proxy": self.proxy if self.attention == "proxy" else None,
            "proxy_weights": ({"source": "checkpoint", "path": os.path.abspath(self.proxy_checkpoint),
                               "sha256": sha256_file(self.proxy_checkpoint, once=True)}
                              if self.proxy_checkpoint
                              else self.weights.describe()) if self.attention == "proxy" else None,
            "crop": self.crop,
            "fsa": self.fsa,
            "hyper_parameters": asdict(self.hp),
        }


def spec_from_meta(meta: dict[str, Any] | MetaRecord, what: str = "meta.json") -> ModelSpec:
    """The selection an artefact was exported from (the reference the validator rebuilds): from its
    typed record (Artifact.info) or meta.json's fields (a `describe()`)."""
    if not isinstance(meta, MetaRecord):
        data = Meta(meta)
        data.source = what
        meta = MetaRecord(data)
    model, weights, attention = meta.model, meta.weights, meta.attention
    if model is None or weights is None or attention is None:
        raise FSAError(f"{what}: model selection incomplete or malformed (no model, weights or attention)")
    try:
        pw = meta.proxy_weights or {}
        return ModelSpec(
            model=model, weights=Weights.from_description(weights, what),
            attention=attention, proxy=meta.proxy,
            proxy_checkpoint=checked_path(pw, what) if pw.get("source") == "checkpoint" else None,
            crop=meta.crop, fsa=meta.fsa, hp=HyperParams(**meta.hyper_parameters),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise FSAError(f"{what}: model selection incomplete or malformed ({e})") from e


def default_hp(model: str, proxy: str | None, **overrides: float | None) -> HyperParams:
    """The spec's defaults (lambda by backbone and proxy), with the given overrides."""
    hp = HyperParams(lamda=default_lamda(model, proxy))
    given = {k: v for k, v in overrides.items() if v is not None}
    return HyperParams(**{**asdict(hp), **given})


@dataclass
class Reference:
    """The PyTorch reference of a selection: the crop forward and CLIP's text tower."""

    spec: ModelSpec
    model: Any  # models.reference.FSAModel
    clip: Any  # the open_clip model (its text tower encodes prompts)
    loaded: dict[str, dict[str, Any]] = field(default_factory=dict)  # what each loader recognised

    def weights_record(self) -> dict[str, Any]:
        """meta.json's `weights` / `proxy_weights`: the source, plus file, sha256 and layout recognised."""
        d = self.spec.describe()
        return {k: {**(d[k] or {}), **self.loaded[k]} for k in ("weights", "proxy_weights")
                if d.get(k) is not None and self.loaded.get(k)}

    def encode_text(self, tokens):
        """Embeddings of tokens [T, L]: open_clip's tower adds a positional embedding of its full
        context length, so prompts cut at the batch's longest (runtime.text.trimmed) are padded back
        with zeros (exact: the tower is causal and pools at the end token)."""
        full = tokens.long().new_zeros((tokens.shape[0], max(self.clip.context_length, tokens.shape[1])))
        full[:, : tokens.shape[1]] = tokens
        return self.clip.encode_text(full)


def build_reference(spec: ModelSpec, formulation: str = "deploy") -> Reference:
    """The PyTorch reference for a selection: an FSAModel in eval mode, fp32, CPU."""
    clip, loaded = load_clip(spec.model, spec.weights)
    records = {"weights": loaded}
    proxy = None
    if spec.attention == "proxy":
        proxy = create_proxy(str(spec.proxy), spec.crop, spec.weights, spec.proxy_checkpoint)
        records["proxy_weights"] = proxy.weights_record
    if spec.weights.real_stats:  # before FSAModel resizes the positional embedding for the crop
        seed, w = int(spec.weights.seed or 0), spec.weights
        real_stats.apply_clip(clip.visual, seed, w.recipe_name, w.real_stats_scale)
        if proxy is not None and spec.proxy_checkpoint is None:  # the proxy's own seed (models.proxies)
            real_stats.apply_proxy(proxy.net, seed + 1, proxy.spec.family, w.recipe_name, w.real_stats_scale)
    cfg = FSAConfig(attention=spec.attention, fsa=spec.fsa, crop=spec.crop, hp=spec.hp)
    return Reference(spec, FSAModel(clip, proxy, cfg, formulation).eval(), clip, records)

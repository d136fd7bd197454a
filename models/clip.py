"""CLIP from open_clip: model creation with the project's weights sources, and the text tower.

`tiny` is registered from models/configs/tiny.json (open_clip's public add_model_config).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from fsa_deploy.errors import FSAError
from fsa_deploy.models.registry import clip_spec
from fsa_deploy.models.weights import (
    Weights,
    hub_offline_from_env,
    is_torchscript,
    load_clip_file,
    quiet,
    seeded,
)

_CONFIGS = Path(__file__).parent / "configs"


def _open_clip():
    import open_clip  # noqa: PLC0415 - open_clip: heavy, imported where it is used

    if "tiny" not in open_clip.list_models():
        open_clip.add_model_config(str(_CONFIGS / "tiny.json"))
    return open_clip


def load_clip(model: str, weights: Weights) -> tuple[torch.nn.Module, dict[str, Any]]:
    """An open_clip CLIP model in eval mode on the CPU, fp32, at its native image size, and what meta.json records
    about the weights (file, sha256, layout).

    The positional embedding is resized for the crop later (models.reference), the way
    the official FSA code does it, not by open_clip's force_image_size. OpenAI's CLIPs were
    trained with QuickGELU, which open_clip's plain configs (ViT-B-16 ...) do not use: it is
    forced for an OpenAI TorchScript archive and for a tag whose pretrained cfg says so.
    """
    spec = clip_spec(model)
    open_clip = _open_clip()
    hub_offline_from_env()
    record: dict[str, Any] = {}
    with quiet("root"), quiet("open_clip"):
        if weights.seed is not None:
            with seeded(weights.seed):
                net = open_clip.create_model(spec.open_clip_name, pretrained=None)
        elif weights.checkpoint is not None:
            path = str(weights.checkpoint)
            net = open_clip.create_model(spec.open_clip_name, pretrained=None,
                                         force_quick_gelu=os.path.isfile(path) and is_torchscript(path))
            record = load_clip_file(net, model, path, "--checkpoint")
        else:
            path, quick_gelu, hub = _resolve_tag(spec.open_clip_name, str(weights.pretrained), weights.cache_dir)
            net = open_clip.create_model(spec.open_clip_name, pretrained=None,
                                         force_quick_gelu=quick_gelu or is_torchscript(path))
            record = load_clip_file(net, model, path, f"--pretrained {weights.pretrained}", hf_hub=hub)
    if record:
        record["quick_gelu"] = any(type(m).__name__ == "QuickGELU" for m in net.modules())
    return net.eval().float(), record


def _resolve_tag(name: str, tag: str, cache_dir: str | None) -> tuple[str, bool, str | None]:
    """A pretrained tag (or hf-hub:ORG/NAME) -> (local file, QuickGELU?, hub id), via open_clip's resolver.

    Offline (HF_HUB_OFFLINE=1) the file comes from the hub cache (`cache_dir` or the default one).
    """
    open_clip = _open_clip()
    if tag.startswith("hf-hub:"):
        repo = tag[len("hf-hub:"):].strip("/")
        cfg: dict[str, Any] = {"hf_hub": repo + "/"}
        quick_gelu = bool(_hub_model_cfg(repo, cache_dir).get("quick_gelu", False))
    else:
        cfg = open_clip.get_pretrained_cfg(name, tag) or {}
        if not cfg:
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
            raise FSAError(f"--pretrained {tag!r}: not a tag of {name} (open_clip knows: {tags}; or hf-hub:ORG/NAME)")
        quick_gelu = bool(cfg.get("quick_gelu", False))
    where = f"the hub cache {cache_dir}" if cache_dir else "the default hub cache"
    try:
        path = open_clip.download_pretrained(cfg, cache_dir=cache_dir)
    except Exception as e:  # noqa: BLE001 - open_clip's download raises hub, network and file errors alike: one line for all
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise FSAError(f"--pretrained {tag}: weights not found in {where}{offline} "
                       f"({type(e).__name__}); download them once elsewhere, or pass --checkpoint PATH") from None
    if not path or not os.path.isfile(path):
        raise FSAError(f"--pretrained {tag}: open_clip resolved no file in {where}")
    return path, quick_gelu, cfg.get("hf_hub") or None


def _hub_model_cfg(repo: str, cache_dir: str | None) -> dict[str, Any]:
    """The model_cfg of a hub repo's open_clip_config.json, if the cache has one."""
    from huggingface_hub import hf_hub_download  # noqa: PLC0415 - huggingface_hub: heavy, imported where it is used

    try:
        with open(hf_hub_download(repo, "open_clip_config.json", cache_dir=cache_dir)) as f:
            return dict(json.load(f).get("model_cfg") or {})
    except Exception:  # noqa: BLE001 - a missing or unreadable hub config means no override
        return {}


def tokenize(texts: list[str]) -> torch.Tensor:
    """open_clip's tokenizer: int64 [T, 77]."""
    return _open_clip().tokenize(texts)

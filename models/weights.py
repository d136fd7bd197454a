"""Where weights come from: a pretrained tag, a local checkpoint, or a seeded random init.

Random init is deterministic: the same seed gives bit-identical weights in every
process and on every machine (the model is built under a forked, seeded CPU RNG).

Checkpoint files are read as their authors ship them (docs/ENGINES.md, "Weights"): one path for every
proxy family (read -> unwrap -> recognise the layout -> resize pos_embed the official way ->
timm's own checkpoint filter -> a strict key/shape check -> load), with everything specific to
a family kept as data (LAYOUTS, POS_INTERP, FAMILY_LAYOUTS). CLIP files go through open_clip's
own loader; we add only what it cannot know from a path (TorchScript, QuickGELU, the grid).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import logging
import math
import os
import re
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from fsa_deploy.errors import FSAError
from fsa_deploy.models.real_stats import RECIPE, RECIPES
from fsa_deploy.models.registry import Tower
from fsa_deploy.runtime.artifact import sha256_file

REAL_STATS_SOURCE = "random-init-real-stats"


@dataclass(frozen=True)
class Weights:
    """One of: `pretrained` (an open_clip / timm tag), `checkpoint` (a local file), `seed`.

    `cache_dir`: the hub cache folder a pretrained tag is read from (offline with HF_HUB_OFFLINE=1).
    `real_stats`: the seeded random init shaped by models.real_stats (`--random-init --real-stats`).
    """

    pretrained: str | None = None
    checkpoint: str | None = None
    seed: int | None = None
    cache_dir: str | None = None
    real_stats: bool = False
    real_stats_scale: float = 1.0  # --real-stats-scale: every planted magnitude x this (1 = published figures)
    recipe: str | None = None  # the --real-stats recipe (None: models.real_stats.RECIPE, the current one)

    def __post_init__(self) -> None:
        given = [x is not None for x in (self.pretrained, self.checkpoint, self.seed)]
        if sum(given) != 1:
            raise FSAError("weights: give exactly one of --pretrained TAG, --checkpoint PATH, --random-init --seed N")
        if self.cache_dir is not None and self.pretrained is None:
            raise FSAError("--cache-dir goes with --pretrained TAG (a checkpoint file is read as it is)")
        if self.real_stats and self.seed is None:
            raise FSAError("--real-stats goes with --random-init (it shapes random weights)")
        if not (math.isfinite(self.real_stats_scale) and self.real_stats_scale > 0):
            raise FSAError(f"--real-stats-scale {self.real_stats_scale}: not a finite number > 0")
        if self.real_stats_scale != 1.0 and not self.real_stats:
            raise FSAError("--real-stats-scale goes with --random-init --real-stats")

    @property
    def recipe_name(self) -> str:
        return self.recipe or RECIPE

    def describe(self) -> dict[str, Any]:
        """The weights source as recorded in meta.json."""
        if self.seed is not None and self.real_stats:  # a source older readers refuse (never build it plain)
            out: dict[str, Any] = {"source": REAL_STATS_SOURCE, "seed": self.seed, "recipe": self.recipe_name}
            return out if self.real_stats_scale == 1.0 else {**out, "scale": self.real_stats_scale}
        if self.seed is not None:
            return {"source": "random-init", "seed": self.seed}
        if self.checkpoint is not None:
            return {"source": "checkpoint", "path": os.path.abspath(self.checkpoint),
                    "sha256": sha256_file(self.checkpoint, once=True)}
        out = {"source": "pretrained", "tag": self.pretrained}
        if self.cache_dir is not None:
            out["cache_dir"] = os.path.abspath(self.cache_dir)
        return out

    @classmethod
    def from_description(cls, d: dict[str, Any], what: str = "meta.json") -> Weights:
        """The inverse of `describe`; a checkpoint must still match its recorded sha256."""
        source = d.get("source")
        if source == "random-init":
            return cls(seed=int(d["seed"]))
        if source == REAL_STATS_SOURCE:
            if d.get("recipe") not in RECIPES:
                raise FSAError(f"{what}: --real-stats recipe {d.get('recipe')!r} is unknown to this fsa-deploy "
                               f"(it rebuilds {', '.join(RECIPES)}); re-export")
            scale = d.get("scale", 1.0)
            if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale)
                                                                                     and scale > 0):
                raise FSAError(f"{what}: --real-stats scale {scale!r} is not a finite number > 0")
            return cls(seed=int(d["seed"]), real_stats=True, real_stats_scale=float(scale), recipe=str(d["recipe"]))
        if source == "pretrained":
            return cls(pretrained=str(d["tag"]), cache_dir=d.get("cache_dir"))
        if source == "checkpoint":
            return cls(checkpoint=checked_path(d, what))
        raise FSAError(f"{what}: unknown weights source {source!r}")


def checked_path(d: dict[str, Any], what: str) -> str:
    """A recorded checkpoint path, still on this machine and still the same bytes."""
    path = str(d["path"])
    if not os.path.isfile(path):
        raise FSAError(f"{what}: the reference checkpoint {path} is not on this machine")
    if d.get("sha256") and sha256_file(path, once=True) != d["sha256"]:
        raise FSAError(f"{what}: {path} changed since export (sha256 differs)")
    return path


def hub_offline_from_env() -> None:
    """Honour HF_HUB_OFFLINE even when huggingface_hub was imported before it was set.

    huggingface_hub reads the variable once, at import; set later, a missing cache costs ~47 s of
    network retries before failing (measured). Setting the constant makes it fail at once.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE"):
        with contextlib.suppress(ImportError):
            import huggingface_hub.constants  # noqa: PLC0415 - huggingface_hub: heavy, imported where it is used

            huggingface_hub.constants.HF_HUB_OFFLINE = True


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a model constructor under a private, seeded CPU RNG (global RNG state untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def quiet(logger: str) -> Iterator[None]:
    """Silence a library's 'no pretrained weights loaded' chatter while we build a model."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def state_digest(module: torch.nn.Module) -> str:
    """sha256 over a module's state dict (names, shapes, bytes): equal digests, equal weights."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------
# Published layouts (data)
# ------------------------------------------------------------------------------------------------

VIT_FILTER = "timm.models.vision_transformer.checkpoint_filter_fn"
SAM_FILTER = "timm.models.vision_transformer_sam.checkpoint_filter_fn"

# Containers unwrapped, first hit wins (MAE: {'model': ...}; open_clip / Lightning: 'state_dict').
CONTAINER_KEYS = ("model", "state_dict", "module")
# Wrapper prefixes (DDP, torch.compile) stripped from every key, as timm's clean_state_dict does.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_VIT_KEYS = ("cls_token", "pos_embed", "blocks.0.attn.qkv.weight")


@dataclass(frozen=True)
class Layout:
    """A published checkpoint layout: how to recognise it and how timm maps it.

    `needs` keys all present, `lacks` keys all absent, `container` the wrapper key the file had
    (None: a bare dict; "*": any), `fmt` the file format if it matters; `ignore` key prefixes the
    release carries but FSA does not use; `filter` timm's dotted checkpoint_filter_fn (None: a
    layout recognised only to say what the file is).
    """

    name: str
    family: str
    needs: tuple[str, ...]
    lacks: tuple[str, ...] = ()
    container: str | None = "*"
    fmt: str | None = None
    ignore: tuple[str, ...] = ()
    filter: str | None = VIT_FILTER


# First match wins. Names from the official repositories (facebookresearch/{dino,dinov2,mae,
# segment-anything}) and timm's own files; tests/test_weights.py makes one file of each.
LAYOUTS: tuple[Layout, ...] = (
    Layout("sam-release", "sam", ("image_encoder.patch_embed.proj.weight",),
           ignore=("prompt_encoder.", "mask_decoder."), filter=SAM_FILTER),
    Layout("timm-samvit", "sam", ("neck.0.weight", "patch_embed.proj.weight"), filter=SAM_FILTER),
    Layout("dinov2-reg-release", "dinov2", ("mask_token", "register_tokens")),
    Layout("dinov2-release", "dinov2-noreg", ("mask_token",), lacks=("register_tokens",)),
    Layout("timm-dinov2-reg", "dinov2", ("reg_token", "blocks.0.ls1.gamma")),
    Layout("timm-dinov2", "dinov2-noreg", ("blocks.0.ls1.gamma",), lacks=("reg_token",)),
    Layout("mae-release", "mae", _VIT_KEYS, container="model"),
    Layout("timm-vit", "vit", _VIT_KEYS, fmt="safetensors"),
    Layout("dino-release", "dino", _VIT_KEYS),
    Layout("open_clip", "clip", ("visual.class_embedding",), filter=None),
    Layout("open_clip", "clip", ("visual.trunk.pos_embed",), filter=None),
    Layout("openai-clip", "clip", ("visual.conv1.weight", "token_embedding.weight"), filter=None),
)

# The layouts each proxy family (ProxySpec.family) loads. A bare ViT dict is DINO's release layout
# and MAE's release is wrapped in {'model': ...}: DINO ViT-B/16 and MAE ViT-B/16 have the same
# architecture, so the container is what keeps a DINO file from loading silently as "MAE".
FAMILY_LAYOUTS: dict[str, tuple[str, ...]] = {
    "dino": ("dino-release", "timm-vit"),
    "dinov2": ("dinov2-reg-release", "timm-dinov2-reg"),
    "dinov2-noreg": ("dinov2-release", "timm-dinov2"),
    "mae": ("mae-release", "timm-vit"),
    "sam": ("sam-release", "timm-samvit"),
}

# How each family's OFFICIAL code resizes the absolute pos_embed grid for the crop (meta.json
# records the method and grids). offset: DINO's "+0.1" scale_factor (interpolate_pos_encoding).
# SAM: the official model always runs at 1024 and never resizes (None).
POS_INTERP: dict[str, dict[str, Any] | None] = {
    "dino": dict(mode="bicubic", offset=0.1, antialias=False,
                 source="dino vision_transformer.interpolate_pos_encoding"),
    "dinov2": dict(mode="bicubic", offset=0.0, antialias=True,
                   source="dinov2 hub *_reg models: interpolate_offset=0, interpolate_antialias=True"),
    "dinov2-noreg": dict(mode="bicubic", offset=0.1, antialias=False,
                         source="dinov2 hub models: interpolate_offset=0.1, interpolate_antialias=False"),
    "mae": dict(mode="bicubic", offset=0.0, antialias=False, source="mae util/pos_embed.interpolate_pos_embed"),
    "sam": None,
}


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------

def is_torchscript(path: str) -> bool:
    """A TorchScript archive (OpenAI's ViT-B-16.pt ...): a zip holding <name>/constants.pkl and code/."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


@contextlib.contextmanager
def _torchscript_quiet() -> Iterator[None]:
    """torch warns that TorchScript is deprecated and that torch.load dispatched to torch.jit.load:
    both are about how OpenAI shipped its files, nothing the user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TorchScript archive.*")
        warnings.filterwarnings("ignore", message=".*torch.jit.load.*is deprecated.*")
        yield


def _first_line(e: BaseException, n: int = 120) -> str:
    text = str(e).strip().split(". ")[0]
    return f"{type(e).__name__}: {text.splitlines()[0][:n]}" if text else type(e).__name__


@dataclass
class StateFile:
    """A checkpoint read as a flat {name: tensor}, and how it was wrapped."""

    tensors: dict[str, torch.Tensor]
    fmt: str  # safetensors | torch | torchscript
    container: str | None
    stripped: str | None


def read_state_file(path: str, what: str) -> StateFile:
    """Read .safetensors / a torch pickle (weights_only) / a TorchScript archive; one-line errors."""
    if os.path.isdir(path):  # a hub snapshot folder, say: the checkpoint is one file inside it
        raise FSAError(f"{what} {path}: is a folder, not a checkpoint file; give the weights file itself "
                       "(.safetensors, .bin, .pt or .pth)")
    if not os.path.isfile(path):
        raise FSAError(f"{what} {path}: no such file")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file  # noqa: PLC0415 - safetensors: heavy, imported where it is used

            obj: Any = load_file(path, device="cpu")
            fmt = "safetensors"
        elif is_torchscript(path):
            with _torchscript_quiet():
                obj, fmt = torch.jit.load(path, map_location="cpu").state_dict(), "torchscript"
        else:
            obj, fmt = torch.load(path, map_location="cpu", weights_only=True), "torch"
    except Exception as e:  # noqa: BLE001 - truncated / corrupt files raise many types
        raise FSAError(f"{what} {path}: not a readable checkpoint, truncated or corrupt ({_first_line(e)})") from None
    container = next((k for k in CONTAINER_KEYS if isinstance(obj, dict) and isinstance(obj.get(k), dict)), None)
    if container:
        obj = obj[container]
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    if not tensors:
        raise FSAError(f"{what} {path}: holds no state dict of tensors")
    out, stripped = {}, None
    for k, v in tensors.items():
        for p in WRAPPER_PREFIXES:
            if k.startswith(p):
                k, stripped = k[len(p):], p
        out[k] = v
    return StateFile(out, fmt, container, stripped)


def recognise(f: StateFile) -> Layout | None:
    for row in LAYOUTS:
        if (all(k in f.tensors for k in row.needs) and not any(k in f.tensors for k in row.lacks)
                and row.container in ("*", f.container) and row.fmt in (None, f.fmt)):
            return row
    return None


def describe_vit(sd: dict[str, torch.Tensor]) -> str:
    """'dim 768, patch 16, depth 12, 4 registers' from a state dict in any recognised layout."""
    pw = next((v for k, v in sd.items() if k.endswith("patch_embed.proj.weight") or k == "visual.conv1.weight"), None)
    depth = {int(m.group(1)) for k in sd for m in [re.search(r"(?:^|\.)(?:blocks|resblocks)\.(\d+)\.", k)] if m}
    parts = []
    if pw is not None and pw.ndim == 4:
        parts += [f"dim {pw.shape[0]}", f"patch {pw.shape[-1]}"]
    if depth:
        parts.append(f"depth {max(depth) + 1}")
    reg = sd.get("register_tokens", sd.get("reg_token"))
    if reg is not None and reg.ndim == 3:
        parts.append(f"{reg.shape[1]} registers")
    return ", ".join(parts)


def _seems(f: StateFile, row: Layout | None) -> str:
    desc = describe_vit(f.tensors)
    if row is None:
        return f"the file: {len(f.tensors)} tensors, e.g. {', '.join(list(f.tensors)[:3])}"
    return f"the file looks like layout {row.name} ({row.family}{': ' + desc if desc else ''})"


def key_diff(want: dict[str, torch.Tensor], got: dict[str, torch.Tensor], limit: int = 4) -> str | None:
    """'N missing: a, b; M unexpected: ...; K shape mismatch: k (2,3)!=(3,3)', or None if they fit."""
    missing = [k for k in want if k not in got]
    unexpected = [k for k in got if k not in want]
    shapes = [f"{k} {tuple(got[k].shape)}!={tuple(v.shape)}" for k, v in want.items()
              if k in got and tuple(got[k].shape) != tuple(v.shape)]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if items:
            more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:limit])}{more}")
    return "; ".join(parts) or None


def _record(path: str, layout: str, f: StateFile | None, **extra: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {"file": os.path.basename(path), "sha256": sha256_file(path, once=True), "layout": layout}
    if f is not None:
        rec.update(format=f.fmt, container=f.container, stripped_prefix=f.stripped)
    rec.update(extra)
    return {k: v for k, v in rec.items() if v is not None}


# ------------------------------------------------------------------------------------------------
# Proxies (timm)
# ------------------------------------------------------------------------------------------------

def resample_pos_embed_official(pos: torch.Tensor, grid: tuple[int, int], spec: dict[str, Any]) -> torch.Tensor:
    """pos [1, prefix + M*M, D] -> [1, prefix + gh*gw, D] as the family's official code does it."""
    n = pos.shape[1]
    m = math.isqrt(n)
    prefix = n - m * m
    if prefix not in (0, 1):
        raise FSAError(f"pos_embed has {n} tokens: not a square grid plus 0 or 1 prefix tokens")
    if (m, m) == tuple(grid):
        return pos
    head, body = pos[:, :prefix], pos[:, prefix:]
    d = body.shape[-1]
    body = body.float().reshape(1, m, m, d).permute(0, 3, 1, 2)
    if spec["offset"]:
        scale = ((grid[0] + spec["offset"]) / m, (grid[1] + spec["offset"]) / m)
        body = F.interpolate(body, scale_factor=scale, mode=spec["mode"], antialias=spec["antialias"])
    else:
        body = F.interpolate(body, size=tuple(grid), mode=spec["mode"], antialias=spec["antialias"],
                             align_corners=False)
    if tuple(body.shape[-2:]) != tuple(grid):
        raise FSAError(f"pos_embed: resizing {m}x{m} gave {tuple(body.shape[-2:])}, not {tuple(grid)}")
    body = body.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], d).to(pos.dtype)
    return torch.cat([head, body], dim=1)


def _resolve(dotted: str) -> Any:
    module, name = dotted.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def load_proxy_checkpoint(net: Tower, proxy: str, family: str, path: str,
                          what: str = "--proxy-checkpoint") -> dict[str, Any]:
    """Load `path` into the timm model `net` (built at the crop's size), strictly; the meta.json record."""
    f = read_state_file(path, what)
    mapped, info = map_proxy_state(net, proxy, family, f, f"{what} {path}")
    net.load_state_dict(mapped, strict=True)
    return _record(path, info.pop("layout"), f, **info)


def map_proxy_state(net: Tower, proxy: str, family: str, f: StateFile,
                    where: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A file's tensors in `net`'s names and shapes (FSAError in one line if they do not fit), and
    what was done: layout, family, keys ignored, the pos_embed resize."""
    row = recognise(f)
    if row is None:
        raise FSAError(f"{where}: unrecognised layout; expected a {family} checkpoint "
                       f"({' or '.join(FAMILY_LAYOUTS.get(family, ()))}; {_seems(f, None)})")
    misfit = f"{where}: does not fit --proxy {proxy}"
    if row.filter is None or row.name not in FAMILY_LAYOUTS.get(family, ()):
        raise FSAError(f"{misfit}; {_seems(f, row)}")
    sd = f.tensors
    # timm's ViT filter silently resamples a patch kernel of another size (FlexiViT): refuse instead.
    kernel = next((v for k, v in sd.items() if k.endswith("patch_embed.proj.weight")), None)
    want = tuple(net.patch_embed.proj.weight.shape)
    if kernel is not None and tuple(kernel.shape) != want:
        raise FSAError(f"{misfit} (shape mismatch: patch_embed.proj.weight {tuple(kernel.shape)}!={want}); "
                       f"{_seems(f, row)}")
    ignored = [k for k in sd if k.startswith(row.ignore)] if row.ignore else []
    sd = {k: v for k, v in sd.items() if k not in ignored}

    pos_record = None
    interp = POS_INTERP.get(family)
    grid = tuple(getattr(net.patch_embed, "grid_size", ()) or ())
    pos = sd.get("pos_embed")
    if interp is not None and pos is not None and pos.ndim == 3 and grid:
        m = math.isqrt(pos.shape[1])
        if (m, m) != grid:
            sd["pos_embed"] = resample_pos_embed_official(pos, grid, interp)
            pos_record = dict(interp, from_grid=[m, m], to_grid=list(grid))

    mapped = _resolve(row.filter)(dict(sd), net)  # a copy: timm's ViT filter pops keys (mask_token ...)
    diff = key_diff(net.state_dict(), mapped)
    if diff:
        raise FSAError(f"{misfit} ({diff}); {_seems(f, row)}")
    return mapped, {"layout": row.name, "family": row.family, "ignored_keys": len(ignored) or None,
                    "loaded_tensors": len(mapped), "pos_embed": pos_record}


# ------------------------------------------------------------------------------------------------
# CLIP (open_clip does the loading)
# ------------------------------------------------------------------------------------------------

_OPENAI_EXTRAS = ("input_resolution", "context_length", "vocab_size")


def load_clip_file(net: torch.nn.Module, model: str, path: str, what: str = "--checkpoint",
                   **extra: Any) -> dict[str, Any]:
    """open_clip.load_checkpoint(net, path) after the checks it does not make; the meta.json record.

    `net` must already have the right activation (QuickGELU for OpenAI weights: see clip.py). An
    OpenAI TorchScript archive needs weights_only=False: torch.load hands such a zip to
    torch.jit.load (no unpickling), so this is passed only once the file is known to be one.
    open_clip would resample a positional embedding of another grid silently: refused here.
    """
    import open_clip  # noqa: PLC0415 - open_clip: heavy, imported where it is used

    f = read_state_file(path, what)
    ts = f.fmt == "torchscript"
    ref = net.state_dict()
    sd = {k: v for k, v in f.tensors.items() if k not in _OPENAI_EXTRAS}
    pk = "visual.positional_embedding"
    if pk in sd and pk in ref and sd[pk].shape != ref[pk].shape and sd[pk].shape[-1] == ref[pk].shape[-1]:
        g_file, g_model = math.isqrt(sd[pk].shape[0] - 1), math.isqrt(ref[pk].shape[0] - 1)
        raise FSAError(f"{what} {path}: does not fit {model} (shape mismatch: {pk} {tuple(sd[pk].shape)}!="
                       f"{tuple(ref[pk].shape)}: the file was trained on a {g_file}x{g_file} grid, {model} has "
                       f"{g_model}x{g_model}; pick the --model of the file's resolution, e.g. ViT-L-14-336)")
    diff = key_diff(ref, sd)
    if diff:
        row = recognise(f)
        raise FSAError(f"{what} {path}: does not fit {model} ({diff}); {_seems(f, row)}")
    try:
        with _torchscript_quiet():
            open_clip.load_checkpoint(net, path, strict=True, weights_only=not ts)
    except Exception as e:  # noqa: BLE001 - not expected after the checks above
        raise FSAError(f"{what} {path}: open_clip could not load it ({_first_line(e, 160)})") from None
    layout = "openai-torchscript" if ts else "open_clip"
    return _record(path, layout, f, **extra)

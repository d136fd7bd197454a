"""Where weights come from: a pretrained tag, a local checkpoint, or a seeded random init.

Random init is deterministic: the same seed gives bit-identical weights in every
process and on every machine (the model is built under a forked, seeded CPU RNG).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from fsa_deploy.errors import FSAError


@dataclass(frozen=True)
class Weights:
    """One of: `pretrained` (an open_clip / timm tag), `checkpoint` (a local file), `seed`."""

    pretrained: str | None = None
    checkpoint: str | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        given = [x is not None for x in (self.pretrained, self.checkpoint, self.seed)]
        if sum(given) != 1:
            raise FSAError("weights: give exactly one of --pretrained TAG, --checkpoint PATH, --random-init --seed N")

    def describe(self) -> dict[str, Any]:
        """The weights source as recorded in meta.json."""
        if self.seed is not None:
            return {"source": "random-init", "seed": self.seed}
        if self.checkpoint is not None:
            return {"source": "checkpoint", "path": os.path.abspath(self.checkpoint),
                    "sha256": file_sha256(self.checkpoint)}
        return {"source": "pretrained", "tag": self.pretrained}


    @classmethod
    def from_description(cls, d: dict[str, Any], what: str = "meta.json") -> Weights:
        """The inverse of `describe`; a checkpoint must still match its recorded sha256."""
        source = d.get("source")
        if source == "random-init":
            return cls(seed=int(d["seed"]))
        if source == "pretrained":
            return cls(pretrained=str(d["tag"]))
        if source == "checkpoint":
            path = str(d["path"])
            if not os.path.isfile(path):
                raise FSAError(f"{what}: the reference checkpoint {path} is not on this machine")
            if file_sha256(path) != d.get("sha256"):
                raise FSAError(f"{what}: {path} changed since export (sha256 differs)")
            return cls(checkpoint=path)
        raise FSAError(f"{what}: unknown weights source {source!r}")


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


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


def load_state_dict(path: str, what: str) -> dict[str, torch.Tensor]:
    """Read a checkpoint file (a state dict, or a dict holding one) with a one-line error."""
    if not os.path.isfile(path):
        raise FSAError(f"{what} {path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt file
        raise FSAError(f"{what} {path}: not a readable PyTorch checkpoint ({type(e).__name__})") from e
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise FSAError(f"{what} {path}: holds no state dict of tensors")
    return obj


def state_digest(module: torch.nn.Module) -> str:
    """sha256 over a module's state dict (names, shapes, bytes): equal digests, equal weights."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()

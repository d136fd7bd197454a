"""The text classifier: class names with synonyms, the 80 OpenAI ImageNet templates, averaging.

Import-light on purpose (torch and numpy only): the runtime builds its classifier with
the same code. open_clip's tokenizer and template list are pure-Python modules of the
open_clip package; they are loaded from their files, so the package's model code (and
timm) is never imported.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F

from fsa_deploy.contract import CONTEXT_LENGTH
from fsa_deploy.errors import FSAError

DEFAULT_CLASSES = Path(__file__).parent / "data" / "voc21.txt"  # PASCAL VOC's 21, background first


def _open_clip_file(name: str) -> ModuleType:
    """Import open_clip/<name>.py by path, without running open_clip/__init__.py."""
    key = f"_fsa_open_clip_{name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FSAError("open_clip_torch is not installed (needed for its tokenizer): pip install open_clip_torch")
    path = Path(list(spec.submodule_search_locations)[0]) / f"{name}.py"
    module_spec = importlib.util.spec_from_file_location(key, path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[key] = module
    module_spec.loader.exec_module(module)
    return module


def tokenize(prompts: Sequence[str]) -> torch.Tensor:
    """open_clip's CLIP BPE tokenizer: int64 [T, 77]."""
    return _open_clip_file("tokenizer").tokenize(list(prompts), context_length=CONTEXT_LENGTH)


@dataclass(frozen=True)
class Vocabulary:
    """Classes and their synonyms: `queries` flattened in order, `query_class[i]` = class of query i."""

    classes: tuple[tuple[str, ...], ...]

    @property
    def names(self) -> list[str]:
        """One display name per class (its first synonym)."""
        return [c[0] for c in self.classes]

    @property
    def queries(self) -> list[str]:
        return [q for c in self.classes for q in c]

    @property
    def query_class(self) -> list[int]:
        return [i for i, c in enumerate(self.classes) for _ in c]

    @classmethod
    def parse(cls, text: str, what: str = "--classes") -> Vocabulary:
        """'cat; kitty, dog, grass': commas separate classes, semicolons synonyms."""
        return cls.from_lines(text.split(","), what)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Vocabulary:
        """One class a line, synonyms separated by ';' (the official class files)."""
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise FSAError(f"--classes-file {path}: unreadable ({type(e).__name__})") from e
        return cls.from_lines(lines, f"--classes-file {path}")

    @classmethod
    def from_lines(cls, lines: Sequence[str], what: str) -> Vocabulary:
        classes = []
        for line in lines:
            names = tuple(n.strip() for n in line.split(";") if n.strip())
            if names:
                classes.append(names)
        if not classes:
            raise FSAError(f"{what}: no class names given")
        return cls(tuple(classes))


def classifier(
    encode: Callable[[torch.Tensor], torch.Tensor], queries: Sequence[str], templates: Sequence[str],
    batch: int = 256,
) -> torch.Tensor:
    """T [K, D]: per query, each template's embedding L2-normalised, averaged, normalised again.

    `encode` maps tokens [T, 77] to embeddings [T, D] (open_clip's encode_text, text.onnx,
    or a text engine). Prompts are encoded in batches of `batch`.
    """
    if not queries:
        raise FSAError("no class names given (K = 0)")
    prompts = [t.format(q) for q in queries for t in templates]
    embs = []
    for i in range(0, len(prompts), batch):
        embs.append(encode(tokenize(prompts[i : i + batch])).float().cpu())
    e = F.normalize(torch.cat(embs), dim=-1).reshape(len(queries), len(templates), -1)
    return F.normalize(e.mean(dim=1), dim=-1)


def cache_key(model_key: str, queries: Sequence[str], templates: Sequence[str]) -> str:
    """What a class-embedding cache entry depends on: the model (or artefact), queries, templates."""
    blob = json.dumps({"model": model_key, "queries": list(queries), "templates": list(templates)})
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def cached_classifier(
    cache_dir: str | os.PathLike[str] | None, model_key: str, encode: Callable[[torch.Tensor], torch.Tensor],
    queries: Sequence[str], templates: Sequence[str],
) -> tuple[torch.Tensor, bool]:
    """`classifier` with an on-disk cache (.npy per key). Returns (T, hit)."""
    if cache_dir is None:
        return classifier(encode, queries, templates), False
    path = Path(cache_dir) / f"text-{cache_key(model_key, queries, templates)}.npy"
    if path.is_file():
        try:
            return torch.from_numpy(np.load(path)), True
        except (OSError, ValueError):
            path.unlink(missing_ok=True)  # a damaged entry is recomputed, not trusted
    t = classifier(encode, queries, templates)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npy")
    np.save(tmp, t.numpy())
    os.replace(tmp, path)
    return t, False


def default_cache_dir() -> Path:
    return Path(os.environ.get("FSA_CACHE_DIR", Path.home() / ".cache" / "fsa-deploy"))


def add_vocabulary_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--classes", help='"cat; kitty, dog, grass": commas separate classes, semicolons synonyms')
    g.add_argument("--classes-file", metavar="FILE", help="one class a line, synonyms separated by ';'")


def vocabulary_from_args(args: argparse.Namespace):
    if getattr(args, "classes", None) is not None:
        return Vocabulary.parse(args.classes)
    if getattr(args, "classes_file", None) is not None:
        return Vocabulary.from_file(args.classes_file)
    return Vocabulary.from_file(DEFAULT_CLASSES)

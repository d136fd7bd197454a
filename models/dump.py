"""`fsa dump`: the reference stages of one crop, and the tail weights, to an .npz."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fsa_deploy.contract import STAGES
from fsa_deploy.errors import FSAError
from fsa_deploy.models.activation_stats import model_stats, write_stats
from fsa_deploy.models.factory import ModelSpec, Reference, build_reference
from fsa_deploy.models.text import openai_templates
from fsa_deploy.runtime import gate
from fsa_deploy.runtime.images import load_image
from fsa_deploy.runtime.pipeline import Geometry, crops_of, resize_image
from fsa_deploy.runtime.text import Vocabulary, classifier


def first_crop(path: str, crop: int, stride: int | None = None, short_side: int | None = None,
               long_side: int | None = None) -> torch.Tensor:
    """The image prepared exactly as `fsa segment` does (the runtime's numpy pipeline); its
    top-left window float32 [3, S, S] as a tensor for the reference."""
    geo = Geometry(crop=crop, stride=stride, short_side=short_side, long_side=long_side)
    crops, _ = crops_of(resize_image(load_image(path), geo), geo)
    return torch.from_numpy(np.ascontiguousarray(crops[0]))


def numpy_encoder(ref: Reference):
    """The reference's text tower as the runtime's Encode (tokens np -> embeddings np)."""
    return lambda tokens: ref.encode_text(torch.from_numpy(tokens)).float().numpy()


def tail_weights(ref: Reference) -> dict[str, np.ndarray]:
    m = ref.model
    out_proj, ln = m.last.attn.out_proj, m.ln_post
    w = {"w.out_proj.weight": out_proj.weight, "w.out_proj.bias": out_proj.bias, "w.ln_post.weight": ln.weight,
         "w.ln_post.bias": ln.bias, "w.proj": m.proj}
    out = {k: v.detach().float().numpy() for k, v in w.items()}
    out["w.ln_post.eps"] = np.array(ln.eps, dtype=np.float64)
    return out


def dump_stages(spec: ModelSpec, vocab: Vocabulary, image: str, out: str, formulation: str = "deploy",
                stride: int | None = None, short_side: int | None = None, long_side: int | None = None,
                activation_stats: str | None = None) -> dict[str, np.ndarray]:
    if not str(out).endswith(".npz"):
        raise FSAError(f"--out {out}: must end in .npz")
    crop = first_crop(image, spec.crop, stride, short_side, long_side)
    ref = build_reference(spec, formulation)
    with torch.no_grad():
        text = torch.from_numpy(classifier(numpy_encoder(ref), vocab.queries, openai_templates()))
        stages = ref.model.stages(crop.unsqueeze(0).float(), text)
    arrays = {k: stages[k][0].detach().cpu().numpy() if k != "text_embeddings" else stages[k].cpu().numpy()
              for k in STAGES if k in stages}
    arrays.update(tail_weights(ref))
    for k in ("beta", "gamma", "lamda", "top_p"):
        arrays[f"hp.{k}"] = np.array(getattr(spec.hp, k), dtype=np.float64)

    try:
        gate.mkdir(Path(out).parent)
        with gate.atomic(out) as tmp:  # our marker: removed on error or signal
            gate.fill_npz(tmp, **arrays)
            if activation_stats:  # written before the dump is published: both or neither
                write_stats(activation_stats, model_stats(ref.model, crop), spec)
    except OSError as e:
        raise FSAError(f"--out {out}: cannot write ({e.strerror or e})") from e
    return arrays

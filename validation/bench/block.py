"""`fsa bench --block`: steps 7-15 of docs/METHOD.md (the FSA feedback block and the
re-attention) in the official (literal) and the deploy formulation, same inputs, one run.

Each formulation runs in a child process of its own, so the peak resident memory it
reports is its own (CPU); on CUDA the allocator's peak is reset between the two.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from fsa_deploy.errors import FSAError
from fsa_deploy.models.factory import ModelSpec, build_reference, default_hp
from fsa_deploy.models.fsa import proxy_attention
from fsa_deploy.models.weights import Weights
from fsa_deploy.runtime import gate
from fsa_deploy.validation.bench.timing import device_sync, peak_rss_mb, rss_mb, time_calls

BLOCK_MODEL = "ViT-B-16"  # width 768, 12 heads, output 512: the paper's default backbone


def block_inputs(tokens: int, classes: int, device: str, seed: int = 0):
    """A ViT-B-16 reference (random init) and random inputs of the block: A, V', T."""
    spec = ModelSpec(model=BLOCK_MODEL, weights=Weights(seed=seed), attention="qk", proxy=None, crop=224,
                     hp=default_hp(BLOCK_MODEL, "dino"))
    model = build_reference(spec).model.to(device)
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(1, 64, tokens, 1, generator=g)

    attn = proxy_attention(feats, spec.hp.beta, spec.hp.gamma).to(device)
    v = torch.randn(1, tokens, model.width, generator=g).to(device)
    text = torch.nn.functional.normalize(torch.randn(classes, model.embed_dim, generator=g), dim=-1).to(device)
    return model, attn, v, text


def _release_free_heap() -> None:
    """Give freed heap pages back to the OS (glibc's malloc_trim) before the peak is reset:
    pages freed while the inputs were built still count in RSS, and the block would reuse
    them without raising the peak (measured: a deploy peak of 28 MiB instead of ~150)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: the peak may read low, as before
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def run_one(formulation: str, tokens: int, classes: int, device: str, repeats: int, out: str) -> None:
    """Child process: time one formulation, record its peak memory and its output."""
    torch.set_grad_enabled(False)
    model, attn, v, text = block_inputs(tokens, classes, device)
    model = model.with_formulation(formulation)
    _release_free_heap()
    gate.write_proc("/proc/self/clear_refs", "5")  # reset the peak (VmHWM) to the current RSS
    base = rss_mb()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    last: list[torch.Tensor] = []

    def call() -> None:
        last[:] = [model.proxy_attend(attn, v, text)]

    times = time_calls(call, repeats, warmup=1, sync=device_sync(device))
    feats = last[0]
    peak = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20 if device == "cuda" else peak_rss_mb() - base
    logits = torch.nn.functional.normalize(feats, dim=-1) @ text.T
    gate.write_with(out, torch.save, {"ms": sorted(times)[len(times) // 2], "peak_mb": peak, "logits": logits.cpu()},
                    keep=False)


def bench_block(tokens: int, classes: int, device: str = "cpu", repeats: int = 3) -> dict[str, Any]:
    if device == "cuda" and not torch.cuda.is_available():
        raise FSAError("--device cuda: no CUDA device visible to torch")
    res = {}
    with gate.temp_dir() as tmp:
        for form in ("literal", "deploy"):
            out = os.path.join(tmp, f"{form}.pt")
            code = ("import sys; from fsa_deploy.validation.bench.block import run_one; "
                    f"run_one({form!r}, {tokens}, {classes}, {device!r}, {repeats}, {out!r})")
            root = Path(__file__).resolve().parents[2]
            env = dict(os.environ, PYTHONPATH=f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
            if proc.returncode:
                raise RuntimeError(f"bench --block {form} failed: {proc.stderr.strip().splitlines()[-1:]}")
            res[form] = torch.load(out)
    lit, dep = res["literal"], res["deploy"]
    return {
        "tokens": tokens, "classes": classes, "device": device, "model": BLOCK_MODEL, "repeats": repeats,
        "literal_ms": lit["ms"], "deploy_ms": dep["ms"], "speedup": lit["ms"] / dep["ms"],
        "literal_peak_mb": lit["peak_mb"], "deploy_peak_mb": dep["peak_mb"],
        "memory_ratio": lit["peak_mb"] / max(dep["peak_mb"], 1e-6),
        "max_abs_diff": float((lit["logits"] - dep["logits"]).abs().max()),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }


def write_json(path: str | None, obj: dict[str, Any]) -> None:
    if path:
        gate.mkdir(Path(path).parent)
        gate.write_json(path, obj)


def main_block(args) -> int:
    r = bench_block(args.tokens, args.classes, args.device, args.repeats)
    write_json(args.json, r)
    print(json.dumps(r, indent=2))
    return 0

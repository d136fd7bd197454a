"""How much work one crop forward is, and the fastest this machine could possibly do it.

`count_work` splits the deploy reference's crop forward into the CLIP trunk (backbone),
the proxy, and the FSA head (docs/METHOD.md steps 4-15: last block's values, proxy
attention, feedback, ensemble, tail). FLOPs are torch.utils.flop_counter's matmul and
convolution FLOPs (elementwise ops, softmax and norms are not counted). Bytes are an
estimate of memory traffic: every parameter read once, plus every op output written once
and read once (views excluded, no cache reuse assumed).

`measure_rates` times a large matmul per dtype and a large copy on a device; `floor_ms`
turns work and rates into a roofline floor per crop: each part takes at least its FLOPs at
the matmul rate and at least its bytes at the copy bandwidth.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from fsa_deploy.validation.bench.timing import device_sync, time_calls

PARTS = ("backbone", "proxy", "head")
# dtype of each part per precision (fp16 exports keep the head in fp32, int8 Q/DQ graphs too)
PART_DTYPES: dict[str, dict[str, str]] = {
    "fp32": {"backbone": "fp32", "proxy": "fp32", "head": "fp32"},
    "fp16": {"backbone": "fp16", "proxy": "fp16", "head": "fp32"},
    "int8": {"backbone": "int8", "proxy": "int8", "head": "fp32"},
}
# (parameter, activation) byte scale of a part in that dtype, relative to fp32; Q/DQ graphs
# store int8 weights but pass fp32 activations between the quantized ops
BYTE_SCALE = {"fp32": (1.0, 1.0), "fp16": (0.5, 0.5), "int8": (0.25, 1.0)}
RATE_FALLBACK = {"int8": ("int8", "fp16", "fp32"), "fp16": ("fp16", "fp32"), "fp32": ("fp32",)}


@dataclass
class PartWork:
    """Work of one part of the crop forward (batch 1), in fp32."""

    flops: int = 0
    param_bytes: int = 0
    activation_bytes: int = 0

    @property
    def bytes(self) -> int:
        return self.param_bytes + 2 * self.activation_bytes


@dataclass
class Rates:
    """What a device sustains: matmul FLOP/s per dtype (measured ones only) and copy bytes/s."""

    device: str
    matmul_flops: dict[str, float]
    copy_bytes: float

    def matmul(self, dtype: str) -> tuple[float, str]:
        """The rate for `dtype`, or the nearest measured one (CPU: fp32 for every dtype)."""
        for d in RATE_FALLBACK.get(dtype, ("fp32",)):
            if d in self.matmul_flops:
                return self.matmul_flops[d], d
        raise KeyError(f"no matmul rate measured on {self.device}")


# ---------------------------------------------------------------- counting


def _cpu_flash_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _custom_flops() -> dict[Any, Callable[..., int]]:
    """FLOP formulas torch's registry lacks: the CPU flash-attention kernel that SDPA picks on CPU."""
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return {op: _cpu_flash_flops} if op is not None else {}


def _output_bytes_mode():
    class OutputBytes(TorchDispatchMode):
        """Sums the bytes of every op output that is new memory (not a view)."""

        def __init__(self) -> None:
            super().__init__()
            self.bytes = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if not getattr(func, "is_view", False):
                self.bytes += sum(t.numel() * t.element_size() for t in tree_leaves(out) if isinstance(t, torch.Tensor))
            return out

    return OutputBytes()


def _measure(fn: Callable[[], Any]) -> tuple[int, int]:
    """(matmul/conv FLOPs, bytes of op outputs) of one call. nn.MultiheadAttention's fast path
    (one fused op the counter does not know) is turned off, so its matmuls are counted."""
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_custom_flops()) as fc, \
                _output_bytes_mode() as ob:
            fn()
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    return int(fc.get_total_flops()), int(ob.bytes)


def _param_bytes(*modules: torch.nn.Module | None, tensors: tuple[torch.Tensor, ...] = ()) -> int:
    seen = [p for m in modules if m is not None for p in m.parameters()] + list(tensors)
    return sum(p.numel() * p.element_size() for p in {id(p): p for p in seen}.values())


def count_work(model: Any, crop: int, text: torch.Tensor) -> dict[str, PartWork]:
    """Work of the crop forward of `model` (a deploy FSAModel on the CPU) split into PARTS.

    The head is the whole forward minus the trunk and the proxy, so the three add up to it.
    """
    image = torch.rand(1, 3, crop, crop, generator=torch.Generator().manual_seed(0)) * 255
    total = _measure(lambda: model(image, text))
    trunk = _measure(lambda: model.trunk(image))
    proxy = _measure(lambda: model.proxy(image)) if model.proxy is not None else (0, 0)
    head_params = _param_bytes(model.last, model.ln_post, tensors=(model.proj,))
    proxy_params = _param_bytes(model.proxy)
    all_params = _param_bytes(model)
    return {
        "backbone": PartWork(trunk[0], all_params - head_params - proxy_params, trunk[1]),
        "proxy": PartWork(proxy[0], proxy_params, proxy[1]),
        "head": PartWork(total[0] - trunk[0] - proxy[0], head_params, total[1] - trunk[1] - proxy[1]),
    }


# ---------------------------------------------------------------- rates


def _best_seconds(fn: Callable[[], Any], sync: Callable[[], None], repeats: int = 3) -> float:
    return min(time_calls(fn, repeats, warmup=1, sync=sync)) / 1e3


def matmul_rate(device: str, dtype: str, n: int) -> float:
    """FLOP/s of an n x n x n matmul (best of 3 after a warm-up); int8 through torch._int_mm."""
    sync = device_sync(device)
    g = torch.Generator(device=device).manual_seed(0)
    if dtype == "int8":
        a = torch.randint(-128, 127, (n, n), dtype=torch.int8, device=device, generator=g)
        seconds = _best_seconds(lambda: torch._int_mm(a, a), sync)
    else:
        dt = {"fp32": torch.float32, "fp16": torch.float16}[dtype]
        a = torch.randn(n, n, device=device, generator=g).to(dt)
        seconds = _best_seconds(lambda: a @ a, sync)
    return 2 * n**3 / seconds


def copy_rate(device: str, mib: int) -> float:
    """Bytes/s of a device-to-same-device copy of `mib` MiB (read + write counted)."""
    sync = device_sync(device)
    src = torch.empty(mib * 2**18, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / _best_seconds(lambda: dst.copy_(src), sync)


def measure_rates(device: str) -> Rates:
    """The CPU gets fp32 only (its fp16 and int8 matmuls are slow reference kernels; ORT runs
    fp16 graphs in fp32 there); a GPU gets fp32 (TF32 as torch has it: off), fp16 and int8."""
    if device == "cpu":
        return Rates("cpu", {"fp32": matmul_rate("cpu", "fp32", 1024)}, copy_rate("cpu", 256))
    rates = {d: matmul_rate("cuda", d, 8192) for d in ("fp32", "fp16")}
    with contextlib.suppress(RuntimeError):  # _int_mm needs SM 7.5+ and a recent torch
        rates["int8"] = matmul_rate("cuda", "int8", 8192)
    return Rates("cuda", rates, copy_rate("cuda", 1024))


# ---------------------------------------------------------------- the floor


def floor_ms(work: dict[str, PartWork], rates: Rates, precision: str) -> float:
    """Roofline floor of one crop: per part, the larger of FLOPs / matmul rate and bytes / bandwidth."""
    dtypes = PART_DTYPES.get(precision, PART_DTYPES["fp32"])
    total = 0.0
    for part, w in work.items():
        dtype = dtypes[part]
        p_scale, a_scale = BYTE_SCALE[dtype]
        compute = w.flops / rates.matmul(dtype)[0]
        memory = (w.param_bytes * p_scale + 2 * w.activation_bytes * a_scale) / rates.copy_bytes
        total += max(compute, memory)
    return 1e3 * total

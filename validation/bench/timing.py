"""How the benchmarks measure a call: one timing loop (fsa bench, bench.block, bench.export, the device
rates of bench.flops) and the process's resident memory as /proc reports it.

Why not torch.utils.benchmark.Timer: its timeit() runs a hidden warm-up of its own on every
call and reports a mean, while bench quotes per-call samples (median, p90, spread) of calls
that take seconds (a whole image), times backends that are not torch (ONNX Runtime, TensorRT)
and keeps the warm-up count a user option.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def no_sync() -> None:
    """The CPU's sync: calls return when their work is done."""


def device_sync(device: str) -> Callable[[], None]:
    """What makes a call's time its work's: a CUDA call returns before its kernels finish."""
    if device == "cuda":
        import torch

        return torch.cuda.synchronize
    return no_sync


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int = 1, sync: Callable[[], None] = no_sync
               ) -> list[float]:
    """Milliseconds of each of `repeats` calls of fn, after `warmup` untimed calls; `sync` after each."""
    for _ in range(warmup):
        fn()
        sync()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(1e3 * (time.perf_counter() - t0))
    return out


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    return 0.0


def rss_mb() -> float:
    return _status_mb("VmRSS:")


def peak_rss_mb() -> float:
    """VmHWM: the peak RSS since the process started or since its last reset (measure.reset_peak_rss)."""
    return _status_mb("VmHWM:")

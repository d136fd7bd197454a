"""The TensorRT library as the runtime sees it: import checks, the GPU, engine names, the logger.

Shared by the runtime's TensorRT backend and by `fsa build` (export imports the runtime, never
the reverse). TensorRT itself is imported lazily: importing this module costs nothing.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from fsa_deploy.errors import FSAError

if TYPE_CHECKING:
    import tensorrt as trt

TEXT_ENGINE = "text.engine"
TENSORRT_HINT = "pip install tensorrt (NVIDIA's index) or, on Jetson, JetPack's python3-libnvinfer"


def image_engine_name(precision: str) -> str:
    return f"image.{precision}.engine"


def version_tuple(version: str) -> tuple[int, ...]:
    """'10.13.0.35' -> (10, 13, 0, 35), '8.7' -> (8, 7); stops at the first part that is not a number."""
    parts = []
    for part in version.split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


def require_tensorrt() -> str:
    """Import TensorRT or raise one line naming the fix; returns its version.

    `tensorrt-stubs` leaves an importable namespace package called `tensorrt`, so an
    import that succeeds is not enough: the real module has `Builder`.
    """
    try:
        import tensorrt
    except (ImportError, OSError) as e:  # OSError: bindings present, libnvinfer missing
        raise FSAError(f"TensorRT is not installed ({e}): {TENSORRT_HINT}") from e
    version = getattr(tensorrt, "__version__", None)
    if not hasattr(tensorrt, "Builder") or not isinstance(version, str):
        raise FSAError(
            f"TensorRT is not installed (the tensorrt module found holds only type stubs): {TENSORRT_HINT}"
        )
    return version


def cuda_device() -> tuple[str, str]:
    """Name and compute capability ("8.7") of the current GPU, or one line saying there is none."""
    import torch

    if not torch.cuda.is_available():
        raise FSAError(
            "no CUDA GPU: TensorRT needs an NVIDIA GPU and driver "
            "(torch.cuda.is_available() is False; check nvidia-smi and a CUDA build of torch)"
        )
    major, minor = torch.cuda.get_device_capability()
    return torch.cuda.get_device_name(), f"{major}.{minor}"


@functools.cache
def trt_logger() -> trt.ILogger:
    """One logger per process, as TensorRT asks; warnings and errors go to stdout."""
    import tensorrt as trt

    return trt.Logger(trt.Logger.WARNING)

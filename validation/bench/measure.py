"""In a child: class embeddings and work per crop, then one row's timings and memory peaks."""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING, Any, cast

from fsa_deploy.contract import Role
from fsa_deploy.errors import FSAError
from fsa_deploy.runtime import artifact as A
from fsa_deploy.runtime import gate
from fsa_deploy.runtime.backends.base import Backend
from fsa_deploy.runtime.backends.onnxrt import CPU_EP, CUDA_EP, OnnxRuntimeBackend
from fsa_deploy.runtime.backends.trt import TensorRTBackend
from fsa_deploy.runtime.images import load_image
from fsa_deploy.runtime.pipeline import Geometry, crops_of, resize_image, windows
from fsa_deploy.runtime.segmenter import Segmenter
from fsa_deploy.runtime.text import cached_classifier, default_cache_dir
from fsa_deploy.validation.bench.data import (
    LITERAL,
    MIB,
    ORT,
    REFERENCE_NOTE,
    TORCH_FORMATS,
    TRT,
    BenchPlan,
    BenchRow,
    Latency,
    Measured,
    one_line,
)
from fsa_deploy.validation.bench.fidelity import ort_fp16_note, row_fidelity
from fsa_deploy.validation.bench.timing import device_sync, peak_rss_mb, rss_mb, time_calls

if TYPE_CHECKING:
    from fsa_deploy.models.backend import TorchBackend


def _apply_threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


# -- the work job: class embeddings, work per crop, device rates


def measure_work(plan: BenchPlan, devices: tuple[str, ...]) -> dict[str, Any]:
    """Child: the class embeddings every row uses (text tower of the reference, disk-cached as
    `fsa segment` caches them), the crop forward's work, and each device's rates."""
    import torch

    from fsa_deploy.models.backend import spec_key
    from fsa_deploy.models.dump import numpy_encoder
    from fsa_deploy.models.factory import build_reference
    from fsa_deploy.validation.bench.flops import count_work, measure_rates

    _apply_threads(plan.threads)
    ref = build_reference(plan.spec, "deploy")
    key = spec_key(plan.spec)
    with torch.no_grad():
        text, _ = cached_classifier(default_cache_dir(), f"spec:{key}|pytorch:{key}", numpy_encoder(ref),
                                    plan.vocab.queries, list(plan.templates))
        work = count_work(ref.model, plan.spec.crop, torch.from_numpy(text))
    del ref
    gc.collect()
    return {"text": text, "work": work, "rates": {d: measure_rates(d) for d in devices}}


# -- a row job


def reset_peak_rss() -> float | None:
    """Reset VmHWM to the current RSS (as validation/bench/block.py does); the RSS then, or None
    where /proc/self/clear_refs is not writable (the peak then includes loading)."""
    try:
        gate.write_proc("/proc/self/clear_refs", "5")
    except OSError:
        return None
    return rss_mb()


class DeviceMemory:
    """Peak device memory of a row: torch's allocator for PyTorch rows; ONNX Runtime and
    TensorRT allocate outside it, so for them the growth of used device memory (cudaMemGetInfo)
    since before the backend was loaded (their arenas do not shrink, so it holds the peak)."""

    def __init__(self, row: BenchRow):
        import torch

        self.on, self.allocator = row.device == "cuda", row.format in TORCH_FORMATS
        self.torch = torch
        self.used0 = self._used() if self.on and not self.allocator else 0

    def _used(self) -> int:
        free, total = self.torch.cuda.mem_get_info()
        return total - free

    def reset(self) -> None:
        if self.on and self.allocator:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()

    def peak_mib(self) -> float | None:
        if not self.on:
            return None
        used = self.torch.cuda.max_memory_allocated() if self.allocator else self._used() - self.used0
        return used / MIB

    @property
    def source(self) -> str | None:
        return None if not self.on else "torch max_memory_allocated" if self.allocator else "cudaMemGetInfo growth"


def open_row_backend(row: BenchRow, plan: BenchPlan) -> Backend:
    """The runtime backend of a row, as `fsa segment` would open it."""
    if row.format in TORCH_FORMATS:
        from fsa_deploy.models.backend import TorchBackend

        return TorchBackend(plan.spec, device=row.device, dtype=row.precision,
                            formulation="literal" if row.format == LITERAL else "deploy")
    if row.format == TRT:
        return TensorRTBackend(str(row.folder), row.precision)

    providers = [CUDA_EP, CPU_EP] if row.device == "cuda" else [CPU_EP]
    backend = OnnxRuntimeBackend(str(row.folder), str(row.file), providers=providers, threads=plan.threads)
    if not backend.name.endswith(row.device):
        raise FSAError(f"onnxruntime runs {row.file} on {backend.name}, not {row.device}")
    return backend


def size_mib(row: BenchRow, backend: Backend) -> float:
    """The image graph or engine with its external weights; for PyTorch, the crop forward's weights."""
    if row.format in TORCH_FORMATS:
        model = cast("TorchBackend", backend).ref.model
        tensors = [*model.parameters(), *model.buffers()]
        return sum(t.numel() * t.element_size() for t in tensors) / MIB

    files = A.Artifact.load(str(row.folder)).file_records()
    file = str(row.file)
    return sum(i.bytes or 0 for n, i in files.items()
               if n == file or (i.role == Role.EXTERNAL_DATA and n.startswith(file))) / MIB


def timed(plan: BenchPlan, row: BenchRow, text: Any) -> tuple[Measured, Backend]:
    """Load the row's backend, time one crop and whole images (the Segmenter `fsa segment`
    runs), read the memory peaks; returns them and the backend."""
    device_memory = DeviceMemory(row)
    backend = open_row_backend(row, plan)
    seg = Segmenter(backend, crop=plan.spec.crop, logit_scale=plan.spec.hp.logit_scale,
                    templates=list(plan.templates), model_key="bench", batch=plan.batch, cache_dir=None)
    seg.set_classes(plan.vocab, text_embeddings=text)
    class_text = seg.text  # set_classes set it: the float32 copy the backend runs on
    if class_text is None:
        raise FSAError("bench: the Segmenter kept no class embeddings")
    geo = Geometry(crop=plan.spec.crop)
    images = [load_image(p) for p in plan.images]
    crop = crops_of(resize_image(images[0], geo), geo)[0][:1]
    crops = sum(len(windows(*geo.resized_size(*im.shape[-2:]), geo)) for im in images)
    sync = device_sync(row.device)
    base = reset_peak_rss()
    device_memory.reset()
    crop_ms = time_calls(lambda: backend.run(crop, class_text), plan.repeats, plan.warmup, sync)
    pass_ms = time_calls(lambda: [seg.segment(im) for im in images], plan.repeats, plan.warmup, sync)
    peak = peak_rss_mb()
    image = Latency.of([t / len(images) for t in pass_ms])
    return Measured(backend.name, size_mib(row, backend), Latency.of(crop_ms), image, crops,
                    crops / (image.median * len(images) / 1e3), peak, None if base is None else peak - base,
                    device_memory.peak_mib(), device_memory.source), backend


def measure_row(plan: BenchPlan, row: BenchRow, text_np: Any) -> Measured:
    """Child: timings and memory, then fidelity (after the peaks, so the reference is not
    counted; an artefact row's timing session is released first)."""
    _apply_threads(plan.threads)
    text = text_np  # host arrays: the Backend protocol
    m, backend = timed(plan, row, text)
    torch_model = cast("TorchBackend", backend) if row.format in TORCH_FORMATS else None
    del backend
    gc.collect()
    if row.reference:
        m.note = REFERENCE_NOTE
        return m
    try:
        m.fidelity = row_fidelity(row, plan, text, torch_model)
    except Exception as e:  # noqa: BLE001 - timings stand; the row says why fidelity is missing
        m.fidelity_error = one_line(e)
    if row.format == ORT and row.device == "cpu" and row.precision == "fp16":
        m.note = ort_fp16_note(row)
    return m



"""`fsa bench`: one table of formats, precisions, fidelity and speed on this machine.

Rows: the PyTorch reference in the official (literal) formulation, the baseline of the run,
and in the deploy formulation; the exported graph on ONNX Runtime in fp32, fp16 and int8
Q/DQ; TensorRT engines; the CUDA variants where torch sees a GPU. A row that cannot run here
stays in the table and says why. Speed is quoted as a ratio to the literal row of the same
device; absolute times come with the machine they were taken on.

How it measures, and why:
- Every row runs in a fresh child process, forked from a server that imported torch,
  open_clip and onnxruntime once: peak memory is the row's own (VmHWM reset as in
  runtime/bench_block.py) and a row that crashes or runs out of memory fails alone.
- Fidelity is `fsa validate`'s per-image check (fsa_deploy.validation.validate.validate_image: same
  reference, alignment of rounding-decided masks, tolerance profile of the row's precision)
  on the bench images, with the class embeddings computed once: run_validation would
  re-encode queries x 80 templates per row, minutes at ViT-B-16 on a CPU.
- The work of a crop forward (runtime/flops.py) and the measured matmul and copy rates of
  each device give a roofline floor; each row says how far above it it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import gc
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fsa_deploy.contract import GRAPH_PRECISIONS
from fsa_deploy.errors import CheckFailed, FSAError

LITERAL, DEPLOY, ORT, TRT = "PyTorch literal", "PyTorch deploy", "ONNX Runtime", "TensorRT"
TORCH_FORMATS = (LITERAL, DEPLOY)
OK, INVALID, FAILED, MISSING, SKIPPED = "ok", "failed validation", "failed", "missing", "skipped"
DEFAULT_IMAGE = "chelsea.png"  # one sample photo, three crops: per-crop and per-image times differ
PRELOAD = ("numpy", "torch", "open_clip", "timm", "onnxruntime", "fsa_deploy.models.factory",
           "fsa_deploy.validation.validate", "fsa_deploy.runtime.segmenter", "fsa_deploy.runtime.backends.onnxrt",
           "fsa_deploy.models.backend", "fsa_deploy.validation.flops")
MIB = 2**20
# image graphs the bench measures: fp8 needs SM89+ and TensorRT, so its row comes from `fsa validate`
BENCH_PRECISIONS = tuple(p for p in GRAPH_PRECISIONS if p != "fp8")


_START = time.perf_counter()


def say(msg: str) -> None:
    print(f"fsa bench: {msg} (+{time.perf_counter() - _START:.0f} s)", file=sys.stderr, flush=True)


def one_line(e: BaseException) -> str:
    """An exception as one short line (FSAError messages are already user-facing)."""
    text = (str(e).strip().splitlines() or [""])[0][:300]
    return text if isinstance(e, FSAError) else f"{type(e).__name__}: {text}"


# ---------------------------------------------------------------- rows and results as data


@dataclass(frozen=True)
class Source:
    """Where a variant's file is (folder, file), or why there is none (status, why)."""

    folder: str | None = None
    file: str | None = None
    status: str | None = None
    why: str | None = None


@dataclass(frozen=True)
class Row:
    """One line of the table; `status`/`why` are set for rows that do not run here."""

    format: str
    precision: str
    device: str
    folder: str | None = None
    file: str | None = None
    status: str | None = None
    why: str | None = None

    @classmethod
    def of(cls, fmt: str, precision: str, device: str, src: Source | None = None) -> Row:
        src = src or Source()
        return cls(fmt, precision, device, src.folder, src.file, src.status, src.why)

    @property
    def name(self) -> str:
        return f"{self.format} {self.precision} {self.device}"

    @property
    def runs(self) -> bool:
        return self.status is None

    @property
    def baseline(self) -> bool:
        return self.format == LITERAL and self.precision == "fp32"


@dataclass
class Latency:
    """Milliseconds over the timed repeats; `spread` is (max - min) / median."""

    median: float
    p90: float
    min: float
    max: float
    spread: float
    n: int

    @classmethod
    def of(cls, samples: list[float]) -> Latency:
        import numpy as np

        a = np.asarray(samples, dtype=np.float64)
        med = float(np.median(a))
        return cls(med, float(np.percentile(a, 90)), float(a.min()), float(a.max()),
                   float((a.max() - a.min()) / med) if med > 0 else 0.0, len(a))


@dataclass
class Fidelity:
    """validate's summary figures for one row, under the profile of its precision."""

    profile: str
    passed: bool
    pixel_agreement: float
    miou: float
    logits_rel_l2: float
    failures: list[str]
    measured_on: str


@dataclass
class Measured:
    """What a row's child process reports."""

    backend: str
    size_mib: float
    crop: Latency
    image: Latency
    crops: int  # crops in one pass over the bench images
    crops_per_s: float
    peak_rss_mib: float
    run_rss_mib: float | None  # peak minus the resident size before the first timed call
    peak_device_mib: float | None
    device_memory: str | None  # how peak_device_mib was measured
    fidelity: Fidelity | None = None
    fidelity_error: str | None = None
    note: str | None = None


@dataclass
class Result:
    row: Row
    status: str
    reason: str | None = None
    measured: Measured | None = None
    speedup: float | None = None  # literal crop latency of the same device / this row's
    speedup_image: float | None = None
    floor_ms: float | None = None
    x_floor: float | None = None

    @property
    def agreement(self) -> float | None:
        m = self.measured
        return m.fidelity.pixel_agreement if m and m.fidelity else None

    def as_dict(self) -> dict[str, Any]:
        m, f = self.measured, self.measured.fidelity if self.measured else None
        return {
            "name": self.row.name, "format": self.row.format, "precision": self.row.precision,
            "device": self.row.device, "file": self.row.file, "status": self.status, "reason": self.reason,
            "backend": m.backend if m else None, "size_mib": m.size_mib if m else None,
            "pixel_agreement": f.pixel_agreement if f else None, "miou": f.miou if f else None,
            "logits_rel_l2": f.logits_rel_l2 if f else None, "profile": f.profile if f else None,
            "fidelity_on": f.measured_on if f else None,
            "crop_ms": asdict(m.crop) if m else None, "image_ms": asdict(m.image) if m else None,
            "crops_per_image_pass": m.crops if m else None, "crops_per_s": m.crops_per_s if m else None,
            "speedup": self.speedup, "speedup_image": self.speedup_image,
            "peak_rss_mib": m.peak_rss_mib if m else None, "run_rss_mib": m.run_rss_mib if m else None,
            "peak_device_mib": m.peak_device_mib if m else None, "device_memory": m.device_memory if m else None,
            "floor_ms": self.floor_ms, "x_floor": self.x_floor, "note": m.note if m else None,
        }


@dataclass(frozen=True)
class Plan:
    """Everything a child needs besides its row (picklable: it crosses the process boundary)."""

    spec: Any  # models.factory.ModelSpec
    images: tuple[str, ...]
    vocab: Any  # models.text.Vocabulary
    templates: tuple[str, ...]
    repeats: int
    warmup: int
    max_batch: int
    threads: int | None


@dataclass(frozen=True)
class Options:
    """`fsa bench`'s table options, checked before anything slow runs."""

    spec: Any  # ModelSpec from the model options; None with --artifact (meta.json decides)
    artifacts: tuple[str, ...]
    work: str | None
    images: tuple[str, ...]
    vocab: Any
    repeats: int = 3
    warmup: int = 1
    max_batch: int = 1
    threads: int | None = None
    devices: tuple[str, ...] = ("cpu",)
    only: tuple[str, ...] = ()
    min_agreement: float | None = None
    calibration_count: int = 64  # crops for the int8 calibration (fsa calibrate --count)
    json: str | None = None
    md: str | None = None
    plot: str | None = None


# ---------------------------------------------------------------- this machine


@dataclass(frozen=True)
class Machine:
    """What can run here; a `*_missing` field is the reason a family of rows cannot."""

    cuda: bool
    ort_providers: tuple[str, ...]
    ort_missing: str | None
    trt_missing: str | None
    modelopt_missing: str | None

    @classmethod
    def probe(cls) -> Machine:
        import importlib.util

        import torch
        from fsa_deploy.calibration.quantize import MODELOPT_HINT
        from fsa_deploy.runtime.backends.select import tensorrt_unusable

        try:
            from fsa_deploy.runtime.backends.onnxrt import require_onnxruntime

            providers, ort_missing = tuple(require_onnxruntime().get_available_providers()), None
        except FSAError as e:
            providers, ort_missing = (), str(e)
        modelopt = None if importlib.util.find_spec("modelopt") else MODELOPT_HINT
        return cls(torch.cuda.is_available(), providers, ort_missing, tensorrt_unusable(), modelopt)

    def ort_unusable(self, device: str) -> str | None:
        if self.ort_missing or device == "cpu":
            return self.ort_missing
        if "CUDAExecutionProvider" not in self.ort_providers:
            return "onnxruntime has no CUDAExecutionProvider: pip install onnxruntime-gpu"
        return None


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "Hardware")):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(threads: int | None) -> dict[str, Any]:
    """What absolute times need beside them: platform, CPU, cores, threads, GPU, library versions."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    def ver(dist: str) -> str | None:
        try:
            return version(dist)
        except PackageNotFoundError:
            return None

    return {
        "platform": platform.platform(), "cpu": cpu_model(), "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": threads or torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(), "torch": torch.__version__,
        "onnxruntime": ver("onnxruntime") or ver("onnxruntime-gpu"), "tensorrt": ver("tensorrt"),
    }


# ---------------------------------------------------------------- artefacts: export, calibrate, build


def _attempt(what: str, fn: Callable[[], Source]) -> Source:
    """A preparation step; its failure becomes the reason of the rows that needed it."""
    t0 = time.perf_counter()
    try:
        src = fn()
    except Exception as e:  # any failure (FSAError, ModelOpt, TensorRT) is that row's reason
        say(f"{what}: failed ({one_line(e)})")
        return Source(status=FAILED, why=f"{what} failed: {one_line(e)}")
    say(f"{what}: done in {time.perf_counter() - t0:.0f} s")
    return src


def export_into(spec: Any, folder: Path, precision: str) -> Source:
    """`fsa export` into the work folder; a folder exported earlier from the same model is reused."""
    from fsa_deploy.export.onnx_export import export_artifact
    from fsa_deploy.models.factory import spec_from_meta
    from fsa_deploy.runtime import artifact as A

    if (folder / A.META).is_file():
        with contextlib.suppress(FSAError):
            art = A.Artifact.load(folder)
            same = spec_from_meta(art.meta).describe() == spec.describe()
            if same and art.files().get(A.IMAGE_ONNX, {}).get("precision") == precision:
                return Source(str(folder), A.IMAGE_ONNX)
    export_artifact(spec, folder, precision, overwrite=True, progress=False, lint=False)
    return Source(str(folder), A.IMAGE_ONNX)


def writable_copy(folder: str, work: Path) -> Path:
    """A folder to add files to: the folder itself when bench made it, else a copy in the work
    folder (files linked, meta.json copied), so that a user's artefact is never modified."""
    import shutil

    from fsa_deploy.runtime import artifact as A

    src = Path(folder).resolve()
    if src.is_relative_to(work.resolve()):
        return src
    dest = work / "derived" / src.name
    if not dest.is_dir():
        dest.mkdir(parents=True)
        for name in A.Artifact.load(src).files():
            os.symlink(src / name, dest / name)
        shutil.copy2(src / A.META, dest / A.META)
    return dest


def calibrate_into(fp32: Source, work: Path, count: int) -> Source:
    """`fsa calibrate` with its defaults (int8, entropy, the sample photos) on `count` crops;
    ModelOpt's chatter goes to calibrate.log in the work folder."""
    from fsa_deploy.calibration.quantize import Options as CalibrationOptions
    from fsa_deploy.calibration.quantize import calibrate, output_name

    folder = writable_copy(str(fp32.folder), work)
    log = work / "calibrate.log"
    with open(log, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        calibrate(folder, CalibrationOptions(precision="int8", count=count, lint=False), progress=True)
    return Source(str(folder), output_name("int8"))


def build_engine_into(graph: Source, precision: str, work: Path, max_batch: int, classes: int) -> Source:
    """`fsa build` of one image engine (no text engine: bench times crops only)."""
    from fsa_deploy.export.trt_build import (
        BuildOptions,
        DimRange,
        build_engine,
        cuda_device,
        engine_jobs,
        image_engine_name,
    )
    from fsa_deploy.runtime import artifact as A

    folder = writable_copy(str(graph.folder), work)
    art = A.Artifact.load(folder)
    name = image_engine_name(precision)
    if name not in art.files():
        opts = BuildOptions(precision=precision, batch=DimRange(max_batch, max_batch),
                            classes=DimRange(classes, max(classes, 256)), prompts=DimRange(1, 1), text=False)
        for job in engine_jobs(art, opts):
            build_engine(art, job, opts, cuda_device())
    return Source(str(folder), name)


def graphs_from_exports(spec: Any, work: Path, machine: Machine, need: set[str], count: int) -> dict[str, Source]:
    """Default mode: export fp32 and fp16 into the work folder, calibrate int8 from fp32
    (only what the selected rows need)."""
    exports: list[str] = [p for p in ("fp32", "fp16") if p in need or (p == "fp32" and "int8" in need)]
    graphs = {p: _attempt(f"export {p}", functools.partial(export_into, spec, work / p, p)) for p in exports}
    if "int8" in need:
        graphs["int8"] = int8_source(graphs["fp32"], work, machine, count)
    return graphs


def int8_source(fp32: Source, work: Path, machine: Machine, count: int) -> Source:
    if machine.modelopt_missing:
        return Source(status=MISSING, why=machine.modelopt_missing)
    if fp32.folder is None:
        return Source(status=FAILED, why=f"needs the fp32 export ({fp32.why})")
    from fsa_deploy.runtime import artifact as A

    if "image.int8.onnx" in A.Artifact.load(fp32.folder).files():
        return Source(fp32.folder, "image.int8.onnx")
    return _attempt("calibrate int8", lambda: calibrate_into(fp32, work, count))


def graphs_from_artifacts(folders: tuple[str, ...], work: Path, machine: Machine, need: set[str], count: int
                          ) -> dict[str, Source]:
    """--artifact mode: each folder's image graphs at their recorded precisions; int8 is
    calibrated into a copy when no folder has it; a missing fp32/fp16 export is skipped."""
    from fsa_deploy.runtime import artifact as A

    graphs: dict[str, Source] = {}
    for folder in folders:
        files = A.Artifact.load(folder).files()
        for name, info in files.items():
            if info.get("role") in ("image", "image-qdq"):
                graphs.setdefault(str(info.get("precision", "fp32")), Source(folder, name))
    for p in ("fp32", "fp16"):
        graphs.setdefault(p, Source(status=SKIPPED, why=f"no {p} image graph in the --artifact folders "
                                    f"(fsa export --precision {p}, then add that folder with --artifact)"))
    if "int8" not in graphs and "int8" in need:
        graphs["int8"] = int8_source(graphs["fp32"], work, machine, count)
    order = {p: i for i, p in enumerate(BENCH_PRECISIONS)}
    return dict(sorted(graphs.items(), key=lambda kv: order.get(kv[0], len(order))))


def engine_sources(graphs: dict[str, Source], work: Path, max_batch: int, classes: int, need: set[str]
                   ) -> dict[str, Source]:
    """TensorRT engines of the image graphs the rows need, built into the work folder (or reused)."""
    out = {}
    for p, g in graphs.items():
        if p not in need:
            continue
        if g.folder is None:
            out[p] = Source(status=g.status, why=g.why)
        else:
            build = functools.partial(build_engine_into, g, p, work, max_batch, classes)
            out[p] = _attempt(f"build TensorRT {p}", build)
    return out


# ---------------------------------------------------------------- the rows of this machine


def plan_rows(opts: Options, machine: Machine, graphs: dict[str, Source], engines: dict[str, Source]) -> list[Row]:
    """Every format and precision, in table order; families that cannot run here get one row saying why."""
    rows: list[Row] = []
    for device in opts.devices:
        rows += [Row.of(LITERAL, "fp32", device), Row.of(DEPLOY, "fp32", device)]
        if device == "cuda":
            rows += [Row.of(LITERAL, "fp16", device), Row.of(DEPLOY, "fp16", device)]
        why = machine.ort_unusable(device)
        if why:
            rows.append(Row.of(ORT, "/".join(BENCH_PRECISIONS), device, Source(status=MISSING, why=why)))
        else:
            rows += [Row.of(ORT, p, device, src) for p, src in graphs.items()]
    if "cuda" in opts.devices or not machine.cuda:
        if machine.trt_missing:
            rows.append(Row.of(TRT, "/".join(BENCH_PRECISIONS), "cuda", Source(status=MISSING,
                                                                               why=machine.trt_missing)))
        else:
            rows += [Row.of(TRT, p, "cuda", src) for p, src in engines.items()]
    if not machine.cuda:
        rows.append(Row.of("PyTorch, ONNX Runtime", "fp32/fp16", "cuda",
                           Source(status=MISSING, why="no CUDA device (torch.cuda.is_available() is False)")))
    if opts.only:
        rows = [r for r in rows if any(o.lower() in r.name.lower() for o in opts.only)]
    return rows


# ---------------------------------------------------------------- child processes


class Children:
    """Runs each job in a fresh process forked from a server that imported PRELOAD once
    (a spawned child would spend seconds importing open_clip for every row)."""

    def __init__(self) -> None:
        import multiprocessing
        from multiprocessing import forkserver

        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(list(PRELOAD))
        forkserver.ensure_running()  # its imports overlap with the exports that come first

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args) in a child; a failure in it is raised here as RuntimeError with one line."""
        recv, send = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(target=_child_main, args=(fn, args, send), daemon=True)
        proc.start()
        send.close()
        try:
            kind, value = recv.recv()
        except EOFError:
            proc.join()
            code = proc.exitcode or 0
            raise RuntimeError(f"child process died (signal {-code}{': out of memory?' if code == -9 else ''})"
                               if code < 0 else f"child process exited with code {code}") from None
        finally:
            recv.close()
        proc.join()
        if kind == "error":
            raise RuntimeError(value)
        return value


def _child_main(fn: Callable[..., Any], args: tuple, conn: Any) -> None:
    try:
        conn.send(("ok", fn(*args)))
    except BaseException as e:  # the parent reports it; the child must not die silently
        conn.send(("error", one_line(e)))
    finally:
        conn.close()


def _apply_threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


# -- the work job: class embeddings, work per crop, device rates


def measure_work(plan: Plan, devices: tuple[str, ...]) -> dict[str, Any]:
    """Child: the class embeddings every row uses (text tower of the reference, disk-cached as
    `fsa segment` caches them), the crop forward's work, and each device's rates."""
    import torch
    from fsa_deploy.models.backend import spec_key
    from fsa_deploy.models.factory import build
    from fsa_deploy.runtime.text import cached_classifier, default_cache_dir
    from fsa_deploy.validation.flops import count_work, measure_rates

    _apply_threads(plan.threads)
    ref = build(plan.spec, "deploy")
    key = spec_key(plan.spec)
    with torch.no_grad():
        text, _ = cached_classifier(default_cache_dir(), f"spec:{key}|pytorch:{key}", ref.encode_text,
                                    plan.vocab.queries, list(plan.templates))
        work = count_work(ref.model, plan.spec.crop, text)
    del ref
    gc.collect()
    return {"text": text.numpy(), "work": work, "rates": {d: measure_rates(d) for d in devices}}


# -- a row job


def reset_peak_rss() -> float | None:
    """Reset VmHWM to the current RSS (as runtime/bench_block.py does); the RSS then, or None
    where /proc/self/clear_refs is not writable (the peak then includes loading)."""
    from fsa_deploy.validation.bench_block import rss_mb

    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    return rss_mb()


class DeviceMemory:
    """Peak device memory of a row: torch's allocator for PyTorch rows; ONNX Runtime and
    TensorRT allocate outside it, so for them the growth of used device memory (cudaMemGetInfo)
    since before the backend was loaded (their arenas do not shrink, so it holds the peak)."""

    def __init__(self, row: Row):
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


def open_row_backend(row: Row, plan: Plan) -> Any:
    """The runtime backend of a row, as `fsa segment` would open it."""
    if row.format in TORCH_FORMATS:
        from fsa_deploy.models.backend import TorchBackend

        return TorchBackend(plan.spec, device=row.device, dtype=row.precision,
                            formulation="literal" if row.format == LITERAL else "deploy")
    if row.format == TRT:
        from fsa_deploy.runtime.backends.trt import TensorRTBackend

        return TensorRTBackend(str(row.folder), row.precision)
    from fsa_deploy.runtime.backends.onnxrt import CPU_EP, CUDA_EP, OnnxRuntimeBackend

    providers = [CUDA_EP, CPU_EP] if row.device == "cuda" else [CPU_EP]
    backend = OnnxRuntimeBackend(str(row.folder), str(row.file), providers=providers, threads=plan.threads)
    if not backend.name.endswith(row.device):
        raise FSAError(f"onnxruntime runs {row.file} on {backend.name}, not {row.device}")
    return backend


def time_calls(fn: Callable[[], Any], warmup: int, repeats: int, sync: Callable[[], None]) -> list[float]:
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


def size_mib(row: Row, backend: Any) -> float:
    """The image graph or engine with its external weights; for PyTorch, the crop forward's weights."""
    if row.format in TORCH_FORMATS:
        model = backend.ref.model
        tensors = [*model.parameters(), *model.buffers()]
        return sum(t.numel() * t.element_size() for t in tensors) / MIB
    from fsa_deploy.runtime import artifact as A

    files = A.Artifact.load(str(row.folder)).files()
    file = str(row.file)
    return sum(int(i.get("bytes", 0)) for n, i in files.items()
               if n == file or (i.get("role") == "external-data" and n.startswith(file))) / MIB


def timed(plan: Plan, row: Row, text: Any) -> tuple[Measured, Any]:
    """Load the row's backend, time one crop and whole images (the Segmenter `fsa segment`
    runs), read the memory peaks; returns them and the backend."""
    import torch
    from fsa_deploy.runtime.images import load_image
    from fsa_deploy.runtime.pipeline import Geometry, crops_of, resize_image, windows
    from fsa_deploy.runtime.segmenter import Segmenter
    from fsa_deploy.validation.bench_block import peak_rss_mb

    device_memory = DeviceMemory(row)
    backend = open_row_backend(row, plan)
    seg = Segmenter(backend, crop=plan.spec.crop, logit_scale=plan.spec.hp.logit_scale,
                    templates=list(plan.templates), model_key="bench", max_batch=plan.max_batch, cache_dir=None)
    seg.set_classes(plan.vocab, text_embeddings=text)
    geo = Geometry(crop=plan.spec.crop)
    images = [load_image(p) for p in plan.images]
    crop = crops_of(resize_image(images[0], geo), geo)[0][:1].to(backend.device)
    crops = sum(len(windows(*geo.resized_size(*im.shape[-2:]), geo)) for im in images)
    sync = torch.cuda.synchronize if row.device == "cuda" else (lambda: None)
    base = reset_peak_rss()
    device_memory.reset()
    crop_ms = time_calls(lambda: backend.run(crop, seg.text), plan.warmup, plan.repeats, sync)
    pass_ms = time_calls(lambda: [seg.segment(im) for im in images], plan.warmup, plan.repeats, sync)
    peak = peak_rss_mb()
    image = Latency.of([t / len(images) for t in pass_ms])
    return Measured(backend.name, size_mib(row, backend), Latency.of(crop_ms), image, crops,
                    crops / (image.median * len(images) / 1e3), peak, None if base is None else peak - base,
                    device_memory.peak_mib(), device_memory.source), backend


def measure_row(plan: Plan, row: Row, text_np: Any) -> Measured:
    """Child: timings and memory, then fidelity (after the peaks, so the reference is not
    counted; an artefact row's timing session is released first)."""
    import torch

    _apply_threads(plan.threads)
    text = torch.from_numpy(text_np)
    m, backend = timed(plan, row, text)
    torch_model = backend if row.format in TORCH_FORMATS else None
    del backend
    gc.collect()
    try:
        m.fidelity = row_fidelity(row, plan, text, torch_model)
    except Exception as e:  # timings stand; the row says why fidelity is missing
        m.fidelity_error = one_line(e)
    if row.format == ORT and row.device == "cpu" and row.precision == "fp16":
        m.note = ort_fp16_note(row)
    return m


# -- fidelity


class TorchSide:
    """A PyTorch row in the shape of fsa_deploy.validation.validate.ArtifactSide: logits plus the masks
    (`keep`, `attn_proxy`) that validate aligns when rounding decides them."""

    stage_names: list[str] = []

    def __init__(self, backend: Any):
        self.model, self.device, self.kind = backend.ref.model, backend.device, backend.name

    def run(self, crops: Any, text: Any) -> dict[str, Any]:
        import torch

        with torch.inference_mode():
            st = self.model.stages(crops.to(self.device), text.to(self.device))
        out = {"logits": st["logits"].float().cpu().numpy()}
        for k in ("keep", "attn_proxy"):
            if k in st:
                out[k] = (st[k] if st[k].dtype == torch.bool else st[k].float()).cpu().numpy()
        return out


def row_fidelity(row: Row, plan: Plan, text: Any, backend: Any | None) -> Fidelity:
    """validate_image on every bench image against validate's reference (PyTorch deploy, fp32, CPU)."""
    from fsa_deploy.models.factory import Reference, build
    from fsa_deploy.runtime.artifact import Artifact
    from fsa_deploy.validation import validate as V

    if backend is not None:  # a PyTorch row: its own model
        side: Any = TorchSide(backend)
        cpu32 = row.device == "cpu" and row.precision == "fp32"  # the row's weights are the reference's
        ref = (Reference(plan.spec, backend.ref.model.with_formulation("deploy"), backend.ref.clip) if cpu32
               else build(plan.spec, "deploy"))
    else:
        side = V.ArtifactSide(Artifact.load(str(row.folder)), str(row.file), "trt" if row.format == TRT else "onnx",
                              False)
        ref = build(plan.spec, "deploy")
    profile = row.precision if row.precision in V.PROFILES else "fp32"
    meta = {"crop": plan.spec.crop}
    reports = [V.validate_image(p, ref, side, text, plan.vocab.query_class, meta, plan.max_batch, False, None, None)
               for p in plan.images]
    s = V.summarize(reports, None)
    failures = V.failures_of(s, V.tolerances_for(profile, {}))
    return Fidelity(profile, not failures, s["pixel_agreement_min"], s["miou_min"], s["logits_rel_l2_max"],
                    failures, side.kind)


def ort_fp16_note(row: Row) -> str | None:
    """Whether ONNX Runtime's CPU provider runs the fp16 graph natively: it inserts Casts to
    fp32 around nodes it has no fp16 kernel for; count them in its optimized graph."""
    import onnx
    from fsa_deploy.runtime.artifact import Artifact
    from fsa_deploy.runtime.backends.onnxrt import CPU_EP, require_onnxruntime, session_options

    ort = require_onnxruntime()
    path = Artifact.load(str(row.folder)).path(str(row.file))
    with tempfile.TemporaryDirectory() as tmp:
        opts = session_options(None)
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), opts, providers=[CPU_EP])
        casts = lambda m: sum(n.op_type == "Cast" for n in m.graph.node)  # noqa: E731
        added = casts(onnx.load(opts.optimized_model_filepath, load_external_data=False)) - casts(
            onnx.load(str(path), load_external_data=False))
    if added <= 0:
        return None
    return f"ORT CPU has no fp16 kernel for part of the graph: it inserted {added} Casts and runs that part in fp32"


# ---------------------------------------------------------------- the run


def run_rows(children: Children, plan: Plan, rows: list[Row], text: Any) -> list[Result]:
    out = []
    for i, row in enumerate(rows, 1):
        if not row.runs:
            out.append(Result(row, str(row.status), row.why))
            continue
        say(f"[{i}/{len(rows)}] {row.name}")
        try:
            m: Measured = children.run(measure_row, plan, row, text)
        except RuntimeError as e:
            out.append(Result(row, FAILED, str(e)))
            continue
        if m.fidelity is None:
            out.append(Result(row, FAILED, f"ran, but fidelity could not be measured: {m.fidelity_error}", m))
        elif m.fidelity.passed:
            out.append(Result(row, OK, None, m))
        else:
            out.append(Result(row, INVALID, f"{m.fidelity.profile} profile: " + "; ".join(m.fidelity.failures), m))
    return out


def add_ratios(results: list[Result], work: dict[str, Any], rates: dict[str, Any]) -> None:
    """Speedup against the literal fp32 row of the same device; distance from the roofline floor."""
    from fsa_deploy.validation.flops import floor_ms

    base = {r.row.device: r.measured for r in results if r.row.baseline and r.measured}
    for r in results:
        m, b = r.measured, base.get(r.row.device)
        if m is None:
            continue
        if b is not None:
            r.speedup, r.speedup_image = b.crop.median / m.crop.median, b.image.median / m.image.median
        if r.row.device in rates:
            r.floor_ms = floor_ms(work, rates[r.row.device], r.row.precision)
            r.x_floor = m.crop.median / r.floor_ms


@dataclass
class Report:
    machine: dict[str, Any]
    model: dict[str, Any]
    settings: dict[str, Any]
    work: dict[str, Any]  # part -> fsa_deploy.validation.flops.PartWork
    rates: dict[str, Any]  # device -> fsa_deploy.validation.flops.Rates
    results: list[Result] = field(default_factory=list)

    def floors(self) -> dict[str, dict[str, float]]:
        from fsa_deploy.validation.flops import floor_ms

        return {d: {p: floor_ms(self.work, r, p) for p in BENCH_PRECISIONS} for d, r in self.rates.items()}

    def baselines(self) -> dict[str, str | None]:
        return {d: next((r.row.name for r in self.results if r.row.baseline and r.row.device == d and r.measured),
                        None) for d in self.rates}

    def as_dict(self) -> dict[str, Any]:
        keys = ("flops", "param_bytes", "activation_bytes")
        total = {k: sum(getattr(w, k) for w in self.work.values()) for k in keys}
        return {
            "machine": self.machine, "model": self.model, "settings": self.settings,
            "work": {**{p: {**asdict(w), "bytes": w.bytes} for p, w in self.work.items()},
                     "total": {**total, "bytes": total["param_bytes"] + 2 * total["activation_bytes"]}},
            "work_counts": "matmul/conv FLOPs of one crop (torch.utils.flop_counter, deploy reference, batch 1); "
                           "bytes = parameters once + every op output written and read once (views excluded)",
            "rates": {d: asdict(r) for d, r in self.rates.items()},
            "floors_ms": self.floors(), "baselines": self.baselines(),
            "rows": [r.as_dict() for r in self.results],
        }


def needed_precisions(opts: Options, machine: Machine) -> tuple[set[str], set[str]]:
    """Precisions of the ONNX Runtime and TensorRT rows that --only keeps, so that nothing else
    is exported, calibrated or built; no row at all is a usage error."""
    probe = {p: Source() for p in BENCH_PRECISIONS}
    rows = plan_rows(opts, machine, probe, probe)
    if not rows:
        every = plan_rows(dataclasses.replace(opts, only=()), machine, probe, probe)
        raise FSAError(f"--only {' '.join(opts.only)}: matches no row (rows: {', '.join(r.name for r in every)})")
    need = {fmt: {r.precision for r in rows if r.runs and r.format == fmt} for fmt in (ORT, TRT)}
    return need[ORT] | need[TRT], need[TRT]


def prepare(opts: Options, work: Path, machine: Machine, spec: Any, need: set[str], need_engines: set[str]
            ) -> tuple[dict[str, Source], dict[str, Source]]:
    if opts.artifacts:
        graphs = graphs_from_artifacts(opts.artifacts, work, machine, need, opts.calibration_count)
    else:
        graphs = graphs_from_exports(spec, work, machine, need, opts.calibration_count)
    engines = engine_sources(graphs, work, opts.max_batch, len(opts.vocab.queries), need_engines)
    return graphs, engines


@contextlib.contextmanager
def work_folder(path: str | None) -> Iterator[Path]:
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
    else:
        with tempfile.TemporaryDirectory(prefix="fsa-bench-") as tmp:
            yield Path(tmp)


def run_bench(opts: Options) -> Report:
    """Export (or take) the artefacts, run every row, and return the report."""
    machine = Machine.probe()
    spec, templates = model_of(opts)
    plan = Plan(spec, opts.images, opts.vocab, templates, opts.repeats, opts.warmup, opts.max_batch, opts.threads)
    need = needed_precisions(opts, machine)
    children = Children()
    with work_folder(opts.work) as work:
        graphs, engines = prepare(opts, work, machine, spec, *need)
        rows = plan_rows(opts, machine, graphs, engines)
        say("class embeddings, work per crop and device rates")
        try:
            w = children.run(measure_work, plan, opts.devices)
        except RuntimeError as e:
            raise FSAError(f"the PyTorch reference failed: {e}") from e
        results = run_rows(children, plan, rows, w["text"])
    add_ratios(results, w["work"], w["rates"])
    settings = {"images": list(opts.images), "classes": len(opts.vocab.queries), "repeats": opts.repeats,
                "warmup": opts.warmup, "max_batch": opts.max_batch, "threads": opts.threads,
                "artifacts": list(opts.artifacts), "work": opts.work, "templates": len(templates)}
    return Report(machine_info(opts.threads), spec.describe(), settings, w["work"], w["rates"], results)


def model_of(opts: Options) -> tuple[Any, tuple[str, ...]]:
    """The model selection and prompt templates: the options', or the artefacts' meta.json."""
    from fsa_deploy.models.factory import spec_from_meta
    from fsa_deploy.models.text import openai_templates
    from fsa_deploy.runtime.artifact import Artifact

    if not opts.artifacts:
        return opts.spec, tuple(openai_templates())
    arts = [Artifact.load(f) for f in opts.artifacts]
    specs = [spec_from_meta(a.meta, str(a.root / "meta.json")) for a in arts]
    for a, s in zip(arts[1:], specs[1:]):
        if s.describe() != specs[0].describe():
            raise FSAError(f"--artifact {a.root}: exported from another model than {arts[0].root}")
    return specs[0], tuple(arts[0].meta.get("templates") or openai_templates())


# ---------------------------------------------------------------- output: table, Markdown, plot


def _cell(row: dict[str, Any], key: str, fmt: str, scale: float = 1.0, sub: str | None = None) -> str:
    """One table cell from a row of Report.as_dict(); '-' where the row has no such figure."""
    v = row.get(key)
    if sub is not None and v is not None:
        v = v.get(sub)
    return "-" if v is None else format(v * scale, fmt)


# header -> cell of a row (a row of Report.as_dict()["rows"])
COLUMNS: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("row", lambda d: d["name"]),
    ("status", lambda d: d["status"]),
    ("size MiB", lambda d: _cell(d, "size_mib", ".1f")),
    ("agree %", lambda d: _cell(d, "pixel_agreement", ".3f", 100)),
    ("mIoU", lambda d: _cell(d, "miou", ".4f")),
    ("crop ms p50", lambda d: _cell(d, "crop_ms", ".2f", sub="median")),
    ("p90", lambda d: _cell(d, "crop_ms", ".2f", sub="p90")),
    ("spread %", lambda d: _cell(d, "crop_ms", ".0f", 100, sub="spread")),
    ("image ms", lambda d: _cell(d, "image_ms", ".1f", sub="median")),
    ("crops/s", lambda d: _cell(d, "crops_per_s", ".2f")),
    ("speedup", lambda d: _cell(d, "speedup", ".2f") + ("x" if d["speedup"] else "")),
    ("peak RSS MiB", lambda d: _cell(d, "peak_rss_mib", ".0f")),
    ("device MiB", lambda d: _cell(d, "peak_device_mib", ".0f")),
    ("x floor", lambda d: _cell(d, "x_floor", ".1f")),
)


def _gflop(n: float) -> str:
    return f"{n / 1e9:.3g} GFLOP"


def header_lines(rep: Report) -> list[str]:
    m, mo, s = rep.machine, rep.model, rep.settings
    proxy = f" + {mo['proxy']}" if mo.get("proxy") else ""
    names = ", ".join(Path(i).name for i in s["images"])
    out = [f"model: {mo['model']}{proxy}, {mo['attention']} attention, crop {mo['crop']}, "
           f"weights {json.dumps(mo['weights'])}",
           f"images: {names}; {s['classes']} queries; {s['repeats']} timed repeats after {s['warmup']} warm-up; "
           f"batch <= {s['max_batch']}",
           f"machine: {m['platform']}; CPU {m['cpu']}, {m['cores_usable']} cores, torch {m['torch_threads']} threads; "
           f"GPU {m['gpu'] or 'none'}",
           "work per crop: " + ", ".join(f"{p} {_gflop(w.flops)} / {w.bytes / 1e6:.0f} MB"
                                         for p, w in rep.work.items())]
    for d, r in rep.rates.items():
        rates = ", ".join(f"{k} {v / 1e12:.3g} TFLOP/s" for k, v in r.matmul_flops.items())
        floors = ", ".join(f"{p} {v:.3g} ms" for p, v in rep.floors()[d].items())
        out.append(f"{d}: matmul {rates}; copy {r.copy_bytes / 1e9:.3g} GB/s; floor per crop {floors}")
    return out


def notes(rep: Report) -> list[str]:
    out = [f"{r.row.name}: {r.status}: {r.reason}" for r in rep.results if r.reason]
    out += [f"{r.row.name}: {r.measured.note}" for r in rep.results if r.measured and r.measured.note]
    return out


METHOD = ("speedup: crop latency of the PyTorch literal fp32 row of the same device / the row's; fidelity: "
          "pixel agreement and mIoU of the label maps against validate's reference (PyTorch deploy fp32 CPU), "
          "under the tolerance profile of the row's precision; x floor: crop latency / roofline floor")


def format_terminal(rep: Report) -> str:
    head = [c for c, _ in COLUMNS]
    cells = [[f(r.as_dict()) for _, f in COLUMNS] for r in rep.results]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
    line = lambda cs: "  ".join(c.ljust(w) for c, w in zip(cs, widths)).rstrip()  # noqa: E731
    out = header_lines(rep) + ["", line(head), line(["-" * w for w in widths])] + [line(c) for c in cells]
    return "\n".join(out + [""] + notes(rep) + [METHOD])


def format_markdown(rep: Report) -> str:
    head = [c for c, _ in COLUMNS]
    out = ["# fsa bench", ""] + [f"- {h}" for h in header_lines(rep)] + [
        "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(f(r.as_dict()) for _, f in COLUMNS) + " |" for r in rep.results]
    out += ["", "## Notes", ""] + [f"- {n}" for n in notes(rep)] + [f"- {METHOD}"]
    return "\n".join(out) + "\n"


def write_plot(rep: Report, path: str, min_agreement: float | None) -> None:
    """Latency per crop (log) against pixel agreement, one labelled point per measured row."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError as e:
        raise FSAError(f"--plot {path}: matplotlib is not installed: pip install matplotlib") from e
    from fsa_deploy.runtime.artifact import atomic_file

    # by latency, so that neighbours on the x axis get labels at different heights
    pts = sorted((r for r in rep.results if r.measured and r.agreement is not None),
                 key=lambda r: r.measured.crop.median)  # type: ignore[union-attr]
    fig, ax = plt.subplots(figsize=(10, 6), dpi=120)
    colors = {OK: "tab:green", INVALID: "tab:red", FAILED: "tab:orange"}
    for i, r in enumerate(pts):
        x, y = r.measured.crop.median, 100 * r.agreement  # type: ignore[union-attr, operator]
        ax.scatter([x], [y], s=60, color=colors.get(r.status, "gray"), marker="o" if r.row.device == "cpu" else "s",
                   edgecolors="black", zorder=3)
        label = f"{r.row.name}\n" + ("baseline" if r.row.baseline else f"{r.speedup:.2f}x" if r.speedup else "")
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(10, (14, -30, 40, -56)[i % 4]), fontsize=8,
                    arrowprops={"arrowstyle": "-", "color": "gray", "linewidth": 0.6})
    ys = [100 * r.agreement for r in pts] + ([100 * min_agreement] if min_agreement else [])  # type: ignore[operator]
    lo = min(ys, default=99.0)
    ax.set_ylim(lo - max(0.1, (100 - lo) * 0.15), 100 + max(0.05, (100 - lo) * 0.1))
    if min_agreement is not None:
        ax.axhline(100 * min_agreement, color="tab:red", linestyle="--", linewidth=1, label="--min-agreement")
    ax.set_xscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "235" else ""))
    xs = [r.measured.crop.median for r in pts]  # type: ignore[union-attr]
    if xs:
        ax.set_xlim(min(xs) / 1.6, max(xs) * 3.0)  # room for the labels right of the points
    ax.set_xlabel("latency per crop, median (ms, log scale; lower is faster)")
    ax.set_ylabel("pixel agreement with the reference (%)")
    m = rep.machine
    proxy = f" + {rep.model['proxy']}" if rep.model.get("proxy") else ""
    ax.set_title(f"fsa bench: {rep.model['model']}{proxy}, crop {rep.model['crop']}, on {m['gpu'] or m['cpu']}\n"
                 "green: ok, red: failed validation; circle: CPU, square: CUDA; "
                 "label: speedup over the literal row of its device",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_outputs(rep: Report, opts: Options) -> None:
    from fsa_deploy.runtime.artifact import atomic_file, write_json_atomic

    if opts.json:
        Path(opts.json).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(opts.json, rep.as_dict())
    if opts.md:
        Path(opts.md).parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(opts.md) as tmp:
            tmp.write_text(format_markdown(rep))
    if opts.plot:
        write_plot(rep, opts.plot, opts.min_agreement)


def gate(results: list[Result], min_agreement: float | None) -> None:
    """--min-agreement: every row that was measured must agree at least that much."""
    if min_agreement is None:
        return
    low = [f"{r.row.name} {r.agreement:.6f}" for r in results
           if r.agreement is not None and r.agreement < min_agreement]
    if low:
        raise CheckFailed(f"pixel agreement under --min-agreement {min_agreement:g}: " + ", ".join(low))


# ---------------------------------------------------------------- CLI


def add_bench(sub: Any, help_text: str) -> argparse.ArgumentParser:
    from fsa_deploy.models.cli import add_model_args

    p = sub.add_parser("bench", help=help_text, description=(
        "Export the model (or take --artifact folders) and run every format and precision this machine has: "
        "one table of status, size, fidelity against the reference, latency, throughput, memory and speedup "
        "against the official (literal) PyTorch formulation. --block times the FSA block alone."))
    p.add_argument("--artifact", action="append", default=[], metavar="DIR",
                   help="bench this export instead of exporting (repeatable: an fp32 and an fp16 folder)")
    p.add_argument("--work", metavar="DIR", help="keep exports here and reuse them next time (default: a temp folder)")
    p.add_argument("--images", nargs="+", help=f"images or folders (default: scikit-image's {DEFAULT_IMAGE})")
    p.add_argument("--classes", help='"cat; kitty, dog": the vocabulary (default models/data/voc21.txt); '
                   "with --block, the class count K")
    p.add_argument("--classes-file", metavar="FILE", help="one class a line, synonyms separated by ';'")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    p.add_argument("--max-batch", type=int, default=1,
                   help="crops per forward in the per-image runs (default 1: a full-size literal crop needs ~8 GB)")
    p.add_argument("--threads", type=int, help="torch and ONNX Runtime CPU threads (default: their defaults)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="only this device's rows (default: every device here); "
                   "with --block, where the block runs (default cpu)")
    p.add_argument("--only", action="append", default=[], metavar="TEXT",
                   help="only rows whose name contains TEXT, e.g. onnx, deploy, cuda (repeatable)")
    p.add_argument("--min-agreement", type=float, metavar="X",
                   help="exit 1 if a measured row's pixel agreement is under X (0-1): a CI gate")
    p.add_argument("--calibration-count", type=int, default=64, metavar="N",
                   help="crops calibrating the int8 row when no folder has image.int8.onnx (default 64, as "
                        "fsa calibrate; ViT-B-16 + DINO B/8: ~5 min + ~10 s a crop on 2 CPU cores)")
    p.add_argument("--json", help="write the report as JSON")
    p.add_argument("--md", help="write the report as Markdown")
    p.add_argument("--plot", metavar="PNG", help="latency against fidelity, one labelled point per row")
    p.add_argument("--block", action="store_true", help="the FSA feedback block alone (with --tokens, --classes K)")
    p.add_argument("--tokens", type=int, help="--block: token count N")
    add_model_args(p)
    p.set_defaults(func=run_bench_cli)
    return p


def _check_ranges(args: argparse.Namespace) -> None:
    for name, value, low in (("--repeats", args.repeats, 1), ("--warmup", args.warmup, 0),
                             ("--max-batch", args.max_batch, 1), ("--threads", args.threads, 1),
                             ("--calibration-count", args.calibration_count, 1)):
        if value is not None and value < low:
            raise FSAError(f"{name} {value}: must be >= {low}")
    if args.min_agreement is not None and not args.min_agreement >= 0:
        raise FSAError(f"--min-agreement {args.min_agreement}: must be >= 0 (a fraction of pixels, 0-1)")
    if args.tokens is not None:
        raise FSAError("--tokens: only with --block")
    if args.classes is not None and args.classes_file is not None:
        raise FSAError("--classes and --classes-file: give one of them")


def _model_options_given(args: argparse.Namespace) -> list[str]:
    """Model options that differ from their defaults (with --artifact, meta.json decides the model)."""
    from fsa_deploy.models.cli import add_model_args

    probe = argparse.ArgumentParser()
    add_model_args(probe)
    defaults = vars(probe.parse_args([]))
    return [f"--{k.replace('_', '-')}" for k, v in defaults.items() if getattr(args, k) != v]


def _default_images() -> tuple[str, ...]:
    from fsa_deploy.runtime.images import sample_photos

    photos = sample_photos()
    chosen = [p for p in photos if Path(p).name == DEFAULT_IMAGE] or photos[:1]
    if not chosen:
        raise FSAError("no images given and no scikit-image sample photo found: pass --images")
    return tuple(chosen)


def options_from_args(args: argparse.Namespace) -> Options:
    """Every check that needs no model, so bad usage fails in a second."""
    import importlib.util

    import torch
    from fsa_deploy.models.cli import spec_from_args
    from fsa_deploy.runtime.text import vocabulary_from_args
    from fsa_deploy.validation.validate import expand_images

    _check_ranges(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise FSAError("--device cuda: no CUDA device visible to torch")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        raise FSAError(f"--plot {args.plot}: matplotlib is not installed: pip install matplotlib")
    spec = None
    if args.artifact:
        given = _model_options_given(args)
        if given:
            raise FSAError(f"{given[0]}: with --artifact the model comes from the folder's meta.json; drop it")
        from fsa_deploy.runtime.artifact import Artifact

        for folder in args.artifact:
            Artifact.load(folder)  # a bad folder is one line now, not after minutes
    else:
        if not (args.pretrained or args.checkpoint):
            args.random_init = True  # bench measures speed and fidelity: random weights serve
        spec = spec_from_args(args)
    devices = (args.device,) if args.device else ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
    return Options(spec, tuple(args.artifact), args.work, tuple(expand_images(args.images) or _default_images()),
                   vocabulary_from_args(args), args.repeats, args.warmup, args.max_batch, args.threads, devices,
                   tuple(args.only), args.min_agreement, args.calibration_count, args.json, args.md, args.plot)


def run_block(args: argparse.Namespace) -> int:
    """`--block`: runtime/bench_block.py, with --classes read as the class count K."""
    from fsa_deploy.validation.bench_block import main_block

    if args.tokens is None or args.classes is None:
        raise FSAError("--block needs --tokens N and --classes K")
    try:
        classes = int(args.classes)
    except ValueError:
        raise FSAError(f"--classes {args.classes!r}: with --block, a class count K") from None
    if args.tokens < 1 or classes < 1:
        raise FSAError(f"--tokens {args.tokens} --classes {classes}: must be >= 1")
    return main_block(argparse.Namespace(**{**vars(args), "classes": classes, "device": args.device or "cpu"}))


def run_bench_cli(args: argparse.Namespace) -> int:
    if args.block:
        return run_block(args)
    opts = options_from_args(args)
    rep = run_bench(opts)
    write_outputs(rep, opts)
    print(format_terminal(rep))
    gate(rep.results, opts.min_agreement)
    return 0


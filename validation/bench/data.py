"""`fsa bench`'s rows and results as data: names, statuses, and what a child reports."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fsa_deploy.contract import GRAPH_PRECISIONS
from fsa_deploy.errors import FSAError
from fsa_deploy.log import logger

LITERAL, DEPLOY, ORT, TRT = "PyTorch literal", "PyTorch deploy", "ONNX Runtime", "TensorRT"
TORCH_FORMATS = (LITERAL, DEPLOY)
OK, INVALID, FAILED, MISSING, SKIPPED = "ok", "failed validation", "failed", "missing", "skipped"
DEFAULT_IMAGE = "chelsea.png"  # one sample photo, three crops: per-crop and per-image times differ
PRELOAD = ("numpy", "torch", "open_clip", "timm", "onnxruntime", "fsa_deploy.models.factory",
           "fsa_deploy.validation.validate", "fsa_deploy.runtime.segmenter", "fsa_deploy.runtime.backends.onnxrt",
           "fsa_deploy.models.backend", "fsa_deploy.validation.bench.flops")
MIB = 2**20
REFERENCE_NOTE = "validate's reference: the fidelity of every other row is measured against it"
# image graphs the bench measures: fp8 needs SM89+ and TensorRT, so its row comes from `fsa validate`
BENCH_PRECISIONS = tuple(p for p in GRAPH_PRECISIONS if p != "fp8")


_START = time.perf_counter()
LOG = logger("validation")


def say(msg: str) -> None:
    """A progress line with the time since the verb started (a full bench takes many minutes)."""
    LOG.info(f"fsa bench: {msg} (+{time.perf_counter() - _START:.0f} s)")


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
class BenchRow:
    """One line of the table; `status`/`why` are set for rows that do not run here."""

    format: str
    precision: str
    device: str
    folder: str | None = None
    file: str | None = None
    status: str | None = None
    why: str | None = None

    @classmethod
    def of(cls, fmt: str, precision: str, device: str, src: Source | None = None) -> BenchRow:
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

    @property
    def reference(self) -> bool:
        """validate's reference (PyTorch deploy, fp32, CPU): the other rows' fidelity is measured
        against it, so it has none of its own (it would be 1 by construction)."""
        return self.format == DEPLOY and self.precision == "fp32" and self.device == "cpu"


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
class BenchResult:
    row: BenchRow
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
class BenchPlan:
    """Everything a child needs besides its row (picklable: it crosses the process boundary)."""

    spec: Any  # models.factory.ModelSpec
    images: tuple[str, ...]
    vocab: Any  # models.text.Vocabulary
    templates: tuple[str, ...]
    repeats: int
    warmup: int
    batch: int  # crops per call (--batch)
    threads: int | None


@dataclass(frozen=True)
class BenchOptions:
    """`fsa bench`'s table options, checked before anything slow runs."""

    spec: Any  # ModelSpec from the model options; None with --artifact (meta.json decides)
    artifacts: tuple[str, ...]
    work: str | None
    images: tuple[str, ...]
    vocab: Any
    repeats: int = 3
    warmup: int = 1
    batch: int = 1  # crops per call (--batch); the bench's engines are built for exactly this many
    threads: int | None = None
    devices: tuple[str, ...] = ("cpu",)
    only: tuple[str, ...] = ()
    min_agreement: float | None = None
    calibration_count: int = 64  # crops for the int8 calibration (fsa calibrate --calibration-count)
    json: str | None = None
    md: str | None = None
    plot: str | None = None



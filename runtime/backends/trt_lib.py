"""The two TensorRT flavours as data, engine names, the plan header, the GPU, the logger.

TensorRT 10/11 (`tensorrt`) builds on the GPU it targets and serves data-centre cards and
Jetson; TensorRT-RTX (`tensorrt_rtx`) builds ahead of time on any machine, CPU only included,
for compute-capability targets it is told (Ampere and newer RTX, A100), and JIT-compiles on the
GPU at load time. Both share the builder/parser/runtime API we use; what differs is recorded in
one `Flavour` per library, and code branches on those fields, never on version numbers.

Shared by the runtime's TensorRT backend and by `fsa build` (export imports the runtime, never the
reverse). The libraries are imported lazily: importing this module costs nothing.
"""

from __future__ import annotations

import functools
import importlib
import struct
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from packaging.version import InvalidVersion, Version

from fsa_deploy.contract import FLAVOURS, RTX_TARGETS
from fsa_deploy.errors import FSAError
from fsa_deploy.runtime.schema import EngineRecord

# ---------------------------------------------------------------- compute-capability targets

# contract.RTX_TARGETS are TensorRT-RTX's ComputeCapability members, in the bit order of the plan
# header's target mask. Bit 6 of the mask has no enum member (the library default sets it: "12.0 and later").
LATER = "later"  # the header bit beyond sm121


def target_of(compute_capability: str) -> str:
    """'8.6' -> 'sm86'."""
    major, _, minor = compute_capability.partition(".")
    return f"sm{major}{minor or 0}"


def parse_targets(text: str) -> tuple[str, ...]:
    """'sm80,sm86' -> ('sm80', 'sm86'); an unknown target is one line listing the known ones."""
    wanted = tuple(dict.fromkeys(t.strip().lower() for t in text.split(",") if t.strip()))
    bad = [t for t in wanted if t not in RTX_TARGETS]
    if bad or not wanted:
        raise FSAError(f"--targets {text!r}: unknown target {', '.join(bad) or '(none)'}; "
                       f"TensorRT-RTX targets: {', '.join(RTX_TARGETS)}")
    return wanted


# ---------------------------------------------------------------- the flavours


@dataclass(frozen=True)
class Flavour:
    """What one TensorRT library can do, as data the build and the runtime read."""

    name: str  # "trt" | "rtx": meta.json value and --engine choice
    module: str  # Python module to import
    label: str  # for messages
    install_hint: str
    suffix: str  # engine file names: image.<precision><suffix>.engine
    plan_magic: bytes  # first 4 bytes of a plan (b"ftrt": relied on by third-party loaders, unmeasured)
    needs_gpu_to_build: bool
    timing_cache: bool  # TensorRT-RTX: no-op calls that warn; a runtime cache replaces it
    runtime_cache: bool
    dla: bool
    version_compatible: bool
    hardware_compatible: bool
    targets: tuple[str, ...]  # selectable --targets (empty: the build GPU is the target)
    fp8_min_target: str | None  # fp8 kernels exist from this target on
    fp32_min_target: str | None  # fp32 GEMMs: TensorRT-RTX refuses them for Turing
    serves: str  # docs/ENGINES.md / doctor: which GPUs run its engines

    def engine_name(self, precision: str) -> str:
        return f"image.{precision}{self.suffix}.engine"

    @property
    def text_engine(self) -> str:
        return f"text{self.suffix}.engine"


TRT = Flavour(
    name="trt", module="tensorrt", label="TensorRT",
    install_hint="pip install tensorrt (NVIDIA's index) or, on Jetson, JetPack's python3-libnvinfer",
    suffix="", plan_magic=b"ftrt", needs_gpu_to_build=True, timing_cache=True, runtime_cache=False,
    dla=True, version_compatible=True, hardware_compatible=True, targets=(), fp8_min_target=None,
    fp32_min_target=None,
    serves="every GPU TensorRT 10/11 supports: data centre (A100, H100/H200, L4, L40S...), Jetson Orin",
)
RTX = Flavour(
    name="rtx", module="tensorrt_rtx", label="TensorRT-RTX", install_hint="pip install 'fsa-deploy[rtx]'",
    suffix=".rtx", plan_magic=b"vtrt", needs_gpu_to_build=False, timing_cache=False, runtime_cache=True,
    dla=False, version_compatible=False, hardware_compatible=False, targets=RTX_TARGETS,
    fp8_min_target="sm89", fp32_min_target="sm80",
    serves="SM 8.0, 8.6, 8.9, 12.x (A100, RTX 30/40/50 desktops, laptops, workstations); SM 7.5 on request; "
    "not Hopper (SM 9.0) or Jetson Orin (SM 8.7)",
)
FLAVOUR_OF: dict[str, Flavour] = {f.name: f for f in (TRT, RTX)}  # contract.FLAVOURS' records
assert tuple(FLAVOUR_OF) == FLAVOURS
ENGINE_CHOICES = ("auto", *FLAVOURS)
# Legacy engine names (no flavour in the name) are TensorRT 10/11's: TRT.suffix is "".
TEXT_ENGINE = TRT.text_engine


def image_engine_name(precision: str, flavour: Flavour = TRT) -> str:
    return flavour.engine_name(precision)


def flavour_of_record(info: EngineRecord | None) -> Flavour:
    """The flavour an engine record names; records written before flavours existed are TensorRT's."""
    name = (info.flavour if info is not None else None) or TRT.name
    if name not in FLAVOUR_OF:
        raise FSAError(f"engine flavour {name!r} unknown (this fsa-deploy knows {', '.join(FLAVOURS)}); upgrade")
    return FLAVOUR_OF[name]


# ---------------------------------------------------------------- the libraries


def load(flavour: Flavour) -> Any:
    """The flavour's module, or one line naming the install.

    `tensorrt-stubs` leaves an importable namespace package called `tensorrt`, so an import
    that succeeds is not enough: the real module has `Builder` and a version string.
    """
    try:
        mod: ModuleType = importlib.import_module(flavour.module)
    except (ImportError, OSError) as e:  # OSError: bindings present, the shared library missing
        raise FSAError(f"{flavour.label} is not installed ({e}): {flavour.install_hint}") from e
    if not hasattr(mod, "Builder") or not isinstance(getattr(mod, "__version__", None), str):
        raise FSAError(f"{flavour.label} is not installed (the {flavour.module} module found holds only type "
                       f"stubs): {flavour.install_hint}")
    return mod


def hide_stub_tensorrt() -> None:
    """Before importing ModelOpt: where `tensorrt` is only `tensorrt-stubs`' empty namespace package,
    make its import fail as it would without the stubs (a None entry raises ImportError). ModelOpt
    takes a successful import for TensorRT and calls trt.Logger; its `trt_utils`, if already
    imported, gets its flag corrected too."""
    try:
        import tensorrt
    except (ImportError, OSError):
        return
    if not hasattr(tensorrt, "Builder"):
        sys.modules["tensorrt"] = None  # type: ignore[assignment]
        trt_utils = sys.modules.get("modelopt.onnx.trt_utils")
        if trt_utils is not None:
            trt_utils.TRT_PYTHON_AVAILABLE = False  # type: ignore[attr-defined]


def require_tensorrt(flavour: Flavour = TRT) -> str:
    """Import the flavour's library or raise one line naming the fix; returns its version."""
    return str(load(flavour).__version__)


def installed(flavour: Flavour) -> str | None:
    """The flavour's version when it imports, else None."""
    try:
        return require_tensorrt(flavour)
    except FSAError:
        return None


def same_version(a: str, b: str) -> bool:
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


def at_least(version: str, minimum: str) -> bool:
    return Version(version) >= Version(minimum)


def version_tuple(version: str) -> tuple[int, ...]:
    """'10.13.0.35' -> (10, 13, 0, 35), '8.7' -> (8, 7); stops at the first part that is not a number.

    Kept for compute capabilities and old callers; compare library versions with `same_version`
    / `at_least` (packaging.version) and never across flavours.
    """
    parts = []
    for part in version.split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


def cuda_device() -> tuple[str, str]:
    """Name and compute capability ("8.7") of the current GPU, or one line saying there is none."""
    try:
        import torch
    except ImportError as e:
        raise FSAError("no CUDA GPU: TensorRT's runtime buffers need a CUDA build of torch "
                       "(pip install 'fsa-deploy[gpu]')") from e
    if not torch.cuda.is_available():
        raise FSAError(
            "no CUDA GPU: TensorRT needs an NVIDIA GPU and driver "
            "(torch.cuda.is_available() is False; check nvidia-smi and a CUDA build of torch)"
        )
    major, minor = torch.cuda.get_device_capability()
    return torch.cuda.get_device_name(), f"{major}.{minor}"


def gpu_present() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pick(engine: str) -> Flavour:
    """--engine trt|rtx|auto; auto: TensorRT 10/11 when it imports and a GPU is present, else TensorRT-RTX."""
    if engine in FLAVOUR_OF:
        return FLAVOUR_OF[engine]
    if engine != "auto":
        raise FSAError(f"--engine {engine!r}: choose from {', '.join(ENGINE_CHOICES)}")
    if installed(TRT) is not None and gpu_present():
        return TRT
    if installed(RTX) is not None:
        return RTX
    raise FSAError(f"--engine auto: neither TensorRT with a GPU nor TensorRT-RTX is usable here: "
                   f"{RTX.install_hint} (builds on any machine), or {TRT.install_hint}")


# ---------------------------------------------------------------- the logger


@functools.cache
def logger(flavour: Flavour) -> Any:
    """One logger per library per process (TensorRT asks for one): prints WARNING and worse like
    trt.Logger(WARNING), and keeps every line so that errors can be quoted and tests can read them."""
    trt = load(flavour)

    class Capture(trt.ILogger):  # type: ignore[name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.lines: list[tuple[str, str]] = []
            self.echo = True

        def log(self, severity: Any, msg: str) -> None:
            """Never raises (TensorRT prints an exception from here and goes on): a signal that lands
            here was recorded by the handler, and interrupts.native() raises it after the native call."""
            try:
                name = getattr(severity, "name", str(severity))
                self.lines.append((name, msg))
                if self.echo and name in ("INTERNAL_ERROR", "ERROR", "WARNING"):
                    print(f"[{flavour.label}] {name}: {msg}", flush=True)
            except BaseException:  # noqa: BLE001 - KeyboardInterrupt included: see above
                return

        def errors(self, since: int = 0) -> list[str]:
            return [m for s, m in self.lines[since:] if s in ("INTERNAL_ERROR", "ERROR")]

    return Capture()


# ---------------------------------------------------------------- the plan header


@dataclass(frozen=True)
class PlanHeader:
    """What the first 64 bytes of a plan say: its flavour, and for TensorRT-RTX plans their total
    size, library version and compute-capability targets. Undocumented layout (measured on RTX
    1.7): a cross-check of meta.json before deserialising, never the only check."""

    flavour: str | None  # None: neither magic
    size: int | None = None
    version: str | None = None
    targets: tuple[str, ...] = ()


def read_header(blob: bytes) -> PlanHeader:
    magic = bytes(blob[:4])
    flavour = next((f.name for f in FLAVOUR_OF.values() if f.plan_magic == magic), None)
    if flavour != RTX.name or len(blob) < 0x28:
        return PlanHeader(flavour)
    (size,) = struct.unpack_from("<Q", blob, 0x10)
    version = ".".join(str(b) for b in blob[0x18:0x1C])
    (mask,) = struct.unpack_from("<Q", blob, 0x20)
    names = [*RTX_TARGETS, LATER]
    targets = tuple(n for i, n in enumerate(names) if mask >> i & 1)
    return PlanHeader(flavour, size, version, targets)

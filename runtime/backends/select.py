"""Pick and open a backend for an artefact folder: TensorRT, ONNX Runtime or PyTorch.

`auto` prefers a TensorRT engine this machine can run, then ONNX Runtime (CUDA provider
when installed, CPU otherwise); the reason for the choice is kept for the report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points

from fsa_deploy.contract import BACKENDS, Role
from fsa_deploy.errors import FSAError
from fsa_deploy.runtime.artifact import Artifact
from fsa_deploy.runtime.backends.base import Backend
from fsa_deploy.runtime.backends.onnxrt import OnnxRuntimeBackend
from fsa_deploy.runtime.backends.trt import TensorRTBackend
from fsa_deploy.runtime.backends.trt_lib import TRT, flavour_of_record, gpu_present, installed, require_tensorrt

PLUGIN_GROUP = "fsa_deploy.backends"


@dataclass(frozen=True)
class Opened:
    """A backend and why it was picked (printed by `fsa segment`)."""

    backend: Backend
    reason: str


def plugin(name: str) -> Callable[..., Backend]:
    """A backend class registered under the entry-point group `fsa_deploy.backends`.

    The PyTorch reference registers itself as `torch` (pyproject.toml): the runtime reaches it
    without importing fsa_deploy.models, and a runtime-only install says what is missing.
    """
    found = [ep for ep in entry_points(group=PLUGIN_GROUP) if ep.name == name]
    if not found:
        raise FSAError(f"--backend {name}: no such backend installed (entry point group {PLUGIN_GROUP})")
    try:
        cls = found[0].load()
    except ImportError as e:
        raise FSAError(f"--backend {name}: needs the PyTorch reference: pip install 'fsa-deploy[export]' ({e})") from e
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise FSAError(f"--backend {name}: entry point {found[0].value} is not a Backend subclass")
    return cls


def engines_recorded(art: Artifact) -> list[str]:
    return sorted(name for name, info in art.file_records().items() if info.role == Role.ENGINE)


def tensorrt_unusable(art: Artifact | None = None) -> str | None:
    """Why TensorRT cannot run here, or None when it can (library and CUDA only; engines are
    checked on load). With `art`, any flavour its engines were built with will do (TensorRT
    10/11 or TensorRT-RTX); without, TensorRT 10/11."""
    flavours = {TRT}
    if art is not None:
        flavours = {flavour_of_record(art.file(name).engine) for name in engines_recorded(art)} or flavours
    if not any(installed(f) for f in flavours):
        try:  # one line naming the install of the first flavour
            require_tensorrt(sorted(flavours, key=lambda f: f.name)[0])
        except FSAError as e:
            return str(e)
    if not gpu_present():  # the engines' device buffers are torch CUDA tensors (the gpu extra)
        return "no CUDA GPU"
    return None


def select_backend(art: Artifact, backend: str = "auto", *, threads: int | None = None,
                   precision: str | None = None, device: str | None = None) -> Opened:
    """The backend named by `backend` (see BACKENDS) on `art`, and the reason it was picked.

    `threads` caps ONNX Runtime's CPU threads; `precision` picks a TensorRT image engine
    when several were built; `device` is the torch backend's device (default "auto": cuda if present).
    """
    if backend not in BACKENDS:
        raise FSAError(f"--backend {backend!r}: choose from {', '.join(BACKENDS)}")
    if precision is not None:  # an option that does not apply is refused, never ignored
        built = sorted({str(art.file(n).precision) for n in engines_recorded(art)})
        if backend in ("onnx", "torch"):
            raise FSAError(f"--precision {precision}: picks a TensorRT engine; does not apply to --backend {backend}")
        if precision not in built:
            raise FSAError(f"--precision {precision}: no TensorRT engine of that precision in {art.root} "
                           f"({'engines: ' + ', '.join(built) if built else 'no engine built: fsa build'})")
    if backend == "trt":
        return Opened(_tensorrt(art, precision), "asked for")
    if backend == "onnx":
        return Opened(_onnxruntime(art, threads), "asked for")
    if backend == "torch":
        return Opened(plugin("torch")(art, device=device or "auto"), "asked for")
    return _auto(art, threads, precision)


def _auto(art: Artifact, threads: int | None, precision: str | None) -> Opened:
    engines = engines_recorded(art)
    if not engines:
        why = "no TensorRT engine in the artefact"
    elif (why_not := tensorrt_unusable(art)) is not None:
        why = f"TensorRT engine present but {why_not}"
    else:
        try:
            return Opened(_tensorrt(art, precision), f"auto: TensorRT engine {', '.join(engines)}")
        except FSAError as e:  # e.g. built for another GPU or TensorRT: ORT still runs the ONNX graph
            why = f"TensorRT engine unusable here ({e})"
    return Opened(_onnxruntime(art, threads), f"auto: {why}")


def _tensorrt(art: Artifact, precision: str | None) -> Backend:
    return TensorRTBackend(art, precision)


def _onnxruntime(art: Artifact, threads: int | None) -> Backend:
    return OnnxRuntimeBackend(art, threads=threads)

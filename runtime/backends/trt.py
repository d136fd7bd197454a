"""TensorRT backend: engines from `fsa build` (TensorRT 10/11 or TensorRT-RTX), host numpy in and out.

The backend protocol is host arrays (runtime/backends/base.py); torch CUDA tensors serve only as
the engine's device buffers (no pycuda / cuda-python needed) and torch is imported when a backend
is opened, never with this module. The name-based tensor API used here (num_io_tensors,
get_tensor_name/mode/dtype, set_input_shape, set_tensor_address, execute_async_v3) is the same in
both flavours.

Before deserialising, an engine is checked against its meta.json record (flavour, library
version, compute capability / targets), the plan header (flavour magic; TensorRT-RTX: size,
version, targets), its size and sha256, and, for TensorRT-RTX, `get_engine_validity` on this GPU:
an engine this machine cannot run is one line naming the fix, not a failure deep inside TensorRT.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from fsa_deploy.contract import EMBEDDINGS, IMAGE, LOGITS, RTX_TARGETS, TENSORRT, TEXT_EMBEDDINGS, TOKENS, Role
from fsa_deploy.errors import FSAError
from fsa_deploy.errors import FSAError as Refused
from fsa_deploy.runtime import gate
from fsa_deploy.runtime.artifact import Artifact, sha256_file
from fsa_deploy.runtime.backends.base import Backend
from fsa_deploy.runtime.backends.trt_lib import (
    FLAVOUR_OF,
    RTX,
    TEXT_ENGINE,
    TRT,
    Flavour,
    at_least,
    cuda_device,
    flavour_of_record,
    image_engine_name,
    load,
    logger,
    read_header,
    require_tensorrt,
    same_version,
    target_of,
    version_tuple,
)
from fsa_deploy.runtime.schema import EngineRecord, FileRecord
from fsa_deploy.runtime.text import default_cache_dir, padded

if TYPE_CHECKING:
    import tensorrt as trt
    import torch

# TensorRT DataType name -> torch dtype name. Keyed by name so that reading (and testing) the
# table needs neither TensorRT nor torch, and a type added by a later TensorRT is a clear error.
TRT_TO_TORCH: dict[str, str] = {
    "FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "FP8": "float8_e4m3fn", "INT8": "int8",
    "UINT8": "uint8", "INT32": "int32", "INT64": "int64", "BOOL": "bool",
}
# GPUs TensorRT-RTX does not serve, for the one-line refusal
RTX_UNSUPPORTED = {"9.0": "Hopper: H100/H200", "8.7": "Jetson Orin", "7.2": "Jetson Xavier", "10.0": "Blackwell B200",
                   "10.3": "Blackwell B300", "11.0": "Jetson Thor"}


def torch_dtype(trt_name: str) -> torch.dtype:
    import torch

    if trt_name not in TRT_TO_TORCH:
        raise FSAError(f"engine I/O type {trt_name} has no torch buffer type ({', '.join(TRT_TO_TORCH)})")
    dtype: torch.dtype = getattr(torch, TRT_TO_TORCH[trt_name])
    return dtype


# ---------------------------------------------------------------- checks before deserializing


def check_engine_record(
    record: FileRecord | Mapping[str, Any], version: str, compute_capability: str | None, name: str = "engine"
) -> Flavour:
    """Refuse an engine this machine cannot run, from its meta.json record alone; returns its flavour.

    TensorRT 10/11: without --version-compatible an engine runs only on the TensorRT that built
    it, with it on that version or a later one; without --hardware-compatible only on the compute
    capability it was built on, with it (AMPERE_PLUS) on SM 8.0+. TensorRT-RTX: only on the
    version that built it, and on the compute capabilities it was compiled for.
    `version` is the installed library of the record's flavour; `compute_capability` None (no GPU
    looked at yet) checks the library side alone.
    """
    try:
        record = FileRecord.of(record)
    except ValueError as e:
        raise FSAError(f"{name}: meta.json's record of it is malformed ({e}); rebuild it with `fsa build`") from None
    info = record.engine
    if record.role != Role.ENGINE or info is None:
        raise FSAError(f"{name}: meta.json has no engine record for it; rebuild it with `fsa build`")
    flavour = flavour_of_record(info)
    if flavour is RTX:
        _check_rtx_record(info, version, compute_capability, name)
    else:
        _check_trt_record(info, version, compute_capability, name)
    return flavour


def _check_rtx_record(info: EngineRecord, version: str, cc: str | None, name: str) -> None:
    built = str(info.version)
    if not same_version(built, version):
        raise FSAError(f"{name}: built with TensorRT-RTX {built}, this machine has {version}; "
                       f"rebuild it with `fsa build --engine rtx`")
    if cc is None:
        return
    targets = list(info.targets or [])
    here = target_of(cc)
    if here in targets or ("later" in targets and version_tuple(cc) > (12, 1)):
        return
    if cc in RTX_UNSUPPORTED or here not in RTX_TARGETS:
        gpu = RTX_UNSUPPORTED.get(cc, "this GPU")
        raise FSAError(f"{name}: TensorRT-RTX does not support SM {cc} ({gpu}); "
                       f"build a TensorRT 10/11 engine for it: `fsa build --engine trt`")
    raise FSAError(f"{name}: TensorRT-RTX engine built for {','.join(targets) or 'no target'}, this GPU is "
                   f"SM {cc}; rebuild it with `fsa build --engine rtx --targets {here}`")


def _check_trt_record(info: EngineRecord, version: str, cc: str | None, name: str) -> None:
    built = info.built_version
    if info.version_compatible:
        if not at_least(version, built):
            raise FSAError(
                f"{name}: built with TensorRT {built}, newer than this machine's {version}; "
                "rebuild it here with `fsa build` or upgrade TensorRT"
            )
    elif not same_version(built, version):
        raise FSAError(
            f"{name}: built with TensorRT {built}, this machine has {version}; "
            "rebuild it here with `fsa build` (or build with --version-compatible)"
        )
    if cc is None:
        return
    built_cc = info.built_cc
    if info.hardware_compatible:
        if version_tuple(cc) < (8, 0):
            raise FSAError(
                f"{name}: hardware-compatible engines run on Ampere or newer (SM 8.0+), "
                f"this GPU is SM {cc}; rebuild it here with `fsa build`"
            )
    elif version_tuple(built_cc) != version_tuple(cc):
        raise FSAError(
            f"{name}: built for SM {built_cc} ({info.built_gpu}), this GPU is SM {cc}; "
            "rebuild it here with `fsa build` (or build with --hardware-compatible)"
        )


def check_header(data: bytes, record: FileRecord, flavour: Flavour, name: str) -> None:
    """The plan's own bytes agree with its record: flavour magic; TensorRT-RTX: size, version, targets."""
    header = read_header(data)
    if header.flavour is not None and header.flavour != flavour.name:
        other = FLAVOUR_OF[header.flavour]
        raise FSAError(f"{name}: the file is a {other.label} engine, meta.json says {flavour.label}; "
                       f"rebuild it with `fsa build --engine {flavour.name}`")
    if flavour is not RTX:
        return
    info = record.engine or EngineRecord()
    problems = []
    if header.flavour is None:
        problems.append("no TensorRT-RTX plan header")
    else:
        if header.size != len(data):
            problems.append(f"header size {header.size}, file {len(data)} bytes")
        if header.version != str(info.version):
            problems.append(f"header version {header.version}, meta.json {info.version}")
        if list(header.targets) != list(info.targets or []):
            problems.append(f"header targets {','.join(header.targets)}, meta.json {','.join(info.targets or [])}")
    if problems:
        raise FSAError(f"{name}: {'; '.join(problems)} (damaged or replaced); rebuild it with `fsa build --engine rtx`")




def read_engine(art: Artifact, name: str, version: str, compute_capability: str | None) -> bytes:
    """The engine's bytes once its record, size, header and sha256 agree with meta.json.

    The sha256 of a (multi-GB) engine is computed once per (path, size, mtime) in a process.
    """
    if name not in art.files():
        raise FSAError(f"{art.root}: no {name} recorded in meta.json; build it with `fsa build {art.root}`")
    record = art.file(name)
    flavour = check_engine_record(record, version, compute_capability, name)
    path = art.path(name, verify=False)
    stat = path.stat()
    if stat.st_size != record.bytes:
        raise FSAError(
            f"{path}: {stat.st_size} bytes, meta.json records {record.bytes} (truncated or replaced); "
            "rebuild it with `fsa build`"
        )
    data = path.read_bytes()
    check_header(data, record, flavour, name)

    if sha256_file(path, data=data, once=True) != record.sha256:
        raise FSAError(f"{path}: sha256 does not match meta.json (file changed after it was written); "
                       "rebuild it (fsa build)")
    return data


def check_validity(lib: Any, runtime: Any, data: bytes, name: str) -> None:
    """TensorRT-RTX's own verdict on this GPU and driver, decoded into one line."""
    validity, diagnostics = runtime.get_engine_validity(data)
    if validity == lib.EngineValidity.VALID:
        return
    flags = lib.EngineInvalidityDiagnostics.__members__.values()
    why = ", ".join(d.name for d in flags if int(diagnostics) & int(d)) or "no diagnostics"
    if validity == lib.EngineValidity.SUBOPTIMAL:
        warnings.warn(f"{name}: TensorRT-RTX says the engine is suboptimal here ({why})", stacklevel=3)
        return
    raise FSAError(f"{name}: TensorRT-RTX says the engine is invalid on this GPU ({why}); "
                   "rebuild it with `fsa build --engine rtx`")


def deserialize_engine(
    lib: Any, flavour: Flavour, data: bytes, info: EngineRecord, name: str
) -> tuple[trt.Runtime, trt.ICudaEngine]:
    """Runtime and engine; the runtime is returned because it must outlive the engine."""
    runtime: trt.Runtime = lib.Runtime(logger(flavour))
    if flavour is RTX:
        check_validity(lib, runtime, data, name)
    if info.version_compatible:
        # The plan carries its own lean runtime (host code). Allowed because its sha256
        # matched meta.json, i.e. it is the file `fsa build` wrote.
        runtime.engine_host_code_allowed = True
    if info.dla_core is not None:
        runtime.DLA_core = info.dla_core
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise FSAError(f"{name}: {flavour.label} could not deserialize it (its log above says why); "
                       "rebuild with `fsa build`")
    return runtime, engine


# ---------------------------------------------------------------- TensorRT-RTX runtime cache


class RuntimeCache:
    """TensorRT-RTX's JIT results per engine and compute capability, so the JIT compile happens
    once per GPU model. Kept in the user's cache folder ($FSA_CACHE_DIR or ~/.cache/fsa-deploy,
    `rtx-runtime/`), keyed by the engine's sha256: never written unrecorded into an artefact, and
    a cache made for one engine is never fed to another."""

    def __init__(self, engine_sha256: str, compute_capability: str) -> None:
        leaf = f"{str(engine_sha256)[:32]}.{target_of(compute_capability)}.runtime-cache"
        self.paths = [default_cache_dir() / "rtx-runtime" / leaf]
        self.cache: Any = None

    def attach(self, runtime_config: Any) -> None:
        self.cache = runtime_config.create_runtime_cache()
        for path in self.paths:
            if path.is_file() and self.cache.deserialize(path.read_bytes()):
                break
        runtime_config.set_runtime_cache(self.cache)

    def save(self) -> None:
        if self.cache is None:
            return
        blob = bytes(self.cache.serialize())
        for path in self.paths:
            try:
                gate.mkdir(path.parent)
                gate.write_bytes(path, blob, keep=False)
                return
            except (OSError, Refused):  # a cache only: never fatal
                continue


# ---------------------------------------------------------------- one engine


def dims(d: trt.Dims) -> tuple[int, ...]:
    return tuple(d[i] for i in range(len(d)))


class EngineRunner:
    """One engine, one execution context, run on one CUDA stream, optionally as a CUDA graph.

    TensorRT 10/11: our own torch CUDA graph. The first call at a set of input shapes runs
    normally on static buffers (TensorRT wants one plain run after a shape change before a
    capture); a second call at the same shapes captures that run, and later calls replay it.
    TensorRT-RTX: its built-in strategy (`CudaGraphStrategy.WHOLE_GRAPH_CAPTURE`) does this
    inside execute_async_v3, and its runtime cache keeps the JIT-compiled kernels.
    """

    def __init__(self, lib: Any, flavour: Flavour, runtime: trt.Runtime, engine: trt.ICudaEngine, name: str,
                 stream: torch.cuda.Stream, cuda_graph: bool = False, cache: RuntimeCache | None = None) -> None:
        self._runtime = runtime  # keep alive: freeing it before the engine is undefined
        self.engine, self.name, self.stream = engine, name, stream
        self.cuda_graph = cuda_graph and flavour is not RTX  # RTX captures by itself
        self.device = stream.device
        self.cache = cache
        if flavour is RTX:
            config: Any = engine.create_runtime_config()  # RTX's IRuntimeConfig: not in TensorRT 10's stubs
            if cache is not None:
                cache.attach(config)
            if cuda_graph:
                config.cuda_graph_strategy = lib.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
            self.context = engine.create_execution_context(config)
        else:
            self.context = engine.create_execution_context()
        if self.context is None:
            raise FSAError(f"{name}: TensorRT could not create an execution context (out of GPU memory?)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == lib.TensorIOMode.INPUT]
        self.outputs = [n for n in names if engine.get_tensor_mode(n) == lib.TensorIOMode.OUTPUT]
        self.dtypes = {n: torch_dtype(engine.get_tensor_dtype(n).name) for n in names}
        # input -> (min shape, max shape) of optimization profile 0, the only one `fsa build` makes
        self.ranges = {}
        for n in self.inputs:
            lo, _, hi = (dims(d) for d in engine.get_tensor_profile_shape(n, 0))
            self.ranges[n] = (lo, hi)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._warm_key: tuple[tuple[int, ...], ...] | None = None
        self._static_in: dict[str, torch.Tensor] = {}
        self._static_out: dict[str, torch.Tensor] = {}
        self._cached_shapes: set[tuple[tuple[int, ...], ...]] = set()

    def check_io(self, inputs: set[str], outputs: set[str]) -> None:
        if set(self.inputs) != inputs or not outputs <= set(self.outputs):
            raise FSAError(
                f"{self.name}: engine inputs {self.inputs} and outputs {self.outputs}, expected "
                f"inputs {sorted(inputs)} and outputs {sorted(outputs)}; rebuild it with `fsa build`"
            )

    def max_leading(self, name: str) -> int:
        """Largest first dimension of an input that the profile allows (callers chunk by it)."""
        return self.ranges[name][1][0]

    def _prepare(self, feeds: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        import torch

        out = {}
        for n in self.inputs:
            x = torch.as_tensor(feeds[n]).to(device=self.device, dtype=self.dtypes[n]).contiguous()
            lo, hi = self.ranges[n]
            if len(x.shape) != len(lo) or any(not a <= s <= b for s, a, b in zip(x.shape, lo, hi)):
                raise FSAError(
                    f"{self.name}: {n} of shape {list(x.shape)} is outside the engine's profile "
                    f"{list(lo)}..{list(hi)}; rebuild with larger --max-* options of `fsa build`"
                )
            out[n] = x
        return out

    def _bind(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Set shapes and addresses; returns freshly allocated outputs, already bound."""
        import torch

        for n, x in feeds.items():
            if not self.context.set_input_shape(n, tuple(x.shape)):
                raise FSAError(f"{self.name}: TensorRT refused shape {list(x.shape)} for {n}")
            self.context.set_tensor_address(n, x.data_ptr())
        outputs = {}
        for n in self.outputs:
            y = torch.empty(dims(self.context.get_tensor_shape(n)), dtype=self.dtypes[n], device=self.device)
            self.context.set_tensor_address(n, y.data_ptr())
            outputs[n] = y
        return outputs

    def _enqueue(self) -> None:
        """Run the bound context on our stream, ordered after and before the caller's stream."""
        import torch

        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        if self._graph is not None:
            with torch.cuda.stream(self.stream):
                self._graph.replay()
        elif not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError(f"{self.name}: TensorRT execute_async_v3 failed (its log above says why)")
        current.wait_stream(self.stream)

    def _capture(self) -> None:
        import torch

        graph = torch.cuda.CUDAGraph()
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        try:
            with torch.cuda.graph(graph, stream=self.stream):
                ok = self.context.execute_async_v3(self.stream.cuda_stream)
        except RuntimeError as e:
            ok, why = False, str(e).splitlines()[0]
        else:
            why = "execute_async_v3 failed during capture"
        if not ok:
            warnings.warn(f"{self.name}: no CUDA graph ({why}); running without one", stacklevel=3)
            self.cuda_graph = False
            return
        self._graph = graph

    def _keep_jit(self, key: tuple[tuple[int, ...], ...]) -> None:
        """TensorRT-RTX compiles kernels on the first run at new shapes: save its runtime cache then."""
        if self.cache is not None and key not in self._cached_shapes:
            self.stream.synchronize()
            self.cache.save()
            self._cached_shapes.add(key)

    def __call__(self, feeds: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        x = self._prepare(feeds)
        key = tuple(tuple(x[n].shape) for n in self.inputs)
        if not self.cuda_graph:
            outputs = self._bind(x)
            self._enqueue()
            self._keep_jit(key)
            return outputs
        if key == self._warm_key:  # same shapes as last time: refill the static inputs
            for n in self.inputs:
                self._static_in[n].copy_(x[n])
            if self._graph is None:
                self._capture()
        else:  # new shapes: a plain run on new static buffers, the warm-up a capture needs
            self._graph, self._warm_key = None, key
            self._static_in = {n: t.clone() for n, t in x.items()}
            self._static_out = self._bind(self._static_in)
        self._enqueue()
        return {n: t.clone() for n, t in self._static_out.items()}


# ---------------------------------------------------------------- the backend


def image_engines(art: Artifact, flavour: Flavour | None = None) -> dict[str, str]:
    """precision -> engine file name of the image engines recorded in meta.json (of one flavour, or all)."""
    out = {}
    for name, info in art.file_records().items():
        if info.role != Role.ENGINE or name.startswith("text"):
            continue
        f = flavour_of_record(info.engine)
        if (flavour is None or f is flavour) and name == f.engine_name(str(info.precision)):
            out[str(info.precision) + ("" if flavour or f is TRT else f".{f.name}")] = name
    return out


class TensorRTBackend(Backend):
    """Backend on the engines `fsa build` wrote into an artefact folder.

    `precision` picks the image engine (default: the only one built); `engine` picks the flavour
    when both were built ("trt" | "rtx"; default: the one this machine has, TensorRT first);
    `cuda_graph` replays a CUDA graph when the batch and class count repeat. The text engine is
    loaded on the first `encode_text`. Inputs and outputs are host numpy arrays.
    """

    name = TENSORRT.report

    def __init__(
        self,
        folder: str | os.PathLike[str] | Artifact,
        precision: str | None = None,
        *,
        cuda_graph: bool = False,
        engine: str | None = None,
    ) -> None:
        self.artifact = folder if isinstance(folder, Artifact) else Artifact.load(folder)
        self.engine_name, self.flavour = self._image_engine(precision, engine)
        self.lib = load(self.flavour)
        self.version = str(self.lib.__version__)
        self.trt_version = self.version  # the name reports used before flavours
        # the file first (record, size, header, sha256): a damaged engine is named even without a GPU
        image = read_engine(self.artifact, self.engine_name, self.version, None)
        self.gpu_name, self.compute_capability = cuda_device()
        import torch

        self.device = torch.device("cuda", torch.cuda.current_device())
        self.stream = torch.cuda.Stream(self.device)
        if self.flavour is RTX:
            self.name = f"{TENSORRT.report}-{RTX.name}"
        self._image = self._load(self.engine_name, cuda_graph, image)
        self._image.check_io({IMAGE, TEXT_EMBEDDINGS}, {LOGITS})
        self._text: EngineRunner | None = None
        self.text_engine = self.flavour.text_engine
        # the text engine and its own sha256 (its precision may differ from text.onnx's)
        self._text_key = f"{self.text_engine}:{self.artifact.sha256(self.text_engine)}"
        self._graph_file = self.engine_name

    def _image_engine(self, precision: str | None, engine: str | None) -> tuple[str, Flavour]:
        root = self.artifact.root
        flavours = [FLAVOUR_OF[engine]] if engine else [f for f in (TRT, RTX) if _importable(f)] or [TRT, RTX]
        for flavour in flavours:
            built = image_engines(self.artifact, flavour)
            if precision is not None and precision in built:
                return built[precision], flavour
            if precision is None and len(built) == 1:
                return next(iter(built.values())), flavour
            if precision is None and built:
                raise FSAError(f"{root}: several image engines ({', '.join(sorted(built.values()))}); "
                               "choose a precision")
        if precision is not None:  # read_engine names what is missing
            return flavours[0].engine_name(precision), flavours[0]
        everything = image_engines(self.artifact)
        if everything:
            other = flavour_of_record(self.artifact.file(next(iter(everything.values()))).engine)
            load(other)  # one line naming the install
        raise FSAError(f"{root}: no TensorRT engine recorded in meta.json; run `fsa build {root}`")

    def _load(self, name: str, cuda_graph: bool = False, data: bytes | None = None) -> EngineRunner:
        if data is None:
            data = read_engine(self.artifact, name, self.version, self.compute_capability)
        record = self.artifact.file(name)
        check_engine_record(record, self.version, self.compute_capability, name)
        info = record.engine or EngineRecord()
        runtime, engine = deserialize_engine(self.lib, self.flavour, data, info, name)
        sha = record.sha256
        cache = RuntimeCache(sha, self.compute_capability) if self.flavour is RTX else None
        return EngineRunner(self.lib, self.flavour, runtime, engine, name, self.stream, cuda_graph, cache)

    def run(self, image: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
        """image float32 [B, 3, S, S], text_embeddings float32 [K, D] -> logits float32 [B, K, H', W'].

        Crops run in chunks of the engine's max batch (crops are independent); K must fit the profile.
        """
        import torch

        if np.ndim(image) != 4 or np.ndim(text_embeddings) != 2:
            raise FSAError(
                f"{TENSORRT.report}: expected image [B, 3, S, S] and text_embeddings [K, D], "
                f"got {list(np.shape(image))} and {list(np.shape(text_embeddings))}"
            )
        with torch.cuda.device(self.device):
            text = _tensor(text_embeddings).to(self.device)
            step = self._image.max_leading(IMAGE)
            logits = [self._image({IMAGE: _tensor(image[i:i + step]), TEXT_EMBEDDINGS: text})[LOGITS]
                      .float().cpu().numpy() for i in range(0, len(image), step)]
        return _cat(logits)

    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        """tokens int [T, L] -> embeddings float32 [T, D], in chunks of the text engine's max prompt batch."""
        import torch

        if self._text is None:
            if self.text_engine not in self.artifact.files():
                root = self.artifact.root
                raise FSAError(f"{root}: no {self.text_engine} (built with --no-text); run `fsa build {root}`")
            self._text = self._load(self.text_engine)
            self._text.check_io({TOKENS}, {EMBEDDINGS})
        text = self._text

        tokens = padded(tokens, text.ranges[TOKENS][0][1])  # an engine with a static length (77) or a longer minimum
        with torch.cuda.device(self.device):
            step = text.max_leading(TOKENS)
            out = [text({TOKENS: _tensor(tokens[i:i + step])})[EMBEDDINGS].float().cpu().numpy()
                   for i in range(0, len(tokens), step)]
        return _cat(out)


def _tensor(x: Any) -> torch.Tensor:
    """A host array as a torch tensor without a copy where possible (a torch tensor passes through)."""
    import torch

    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))


def _importable(flavour: Flavour) -> bool:
    try:
        load(flavour)
    except FSAError:
        return False
    return True


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


__all__ = ["TEXT_ENGINE", "TensorRTBackend", "check_engine_record", "image_engine_name", "image_engines",
           "read_engine", "require_tensorrt", "torch_dtype"]

"""TensorRT backend: engines from `fsa build`, torch CUDA tensors as the I/O buffers.

Why torch buffers: stitching and post-processing run in torch on the same GPU, so
outputs never leave the device and no pycuda / cuda-python is needed. The
name-based tensor API used here (num_io_tensors, get_tensor_name/mode/dtype,
set_input_shape, set_tensor_address, execute_async_v3) is the same on TensorRT 10
and 11.

The engine's record in meta.json is checked before deserializing: a TensorRT or
GPU mismatch or a truncated file is one line naming the fix, not a failure deep
inside TensorRT.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from fsa_deploy.runtime.artifact import EMBEDDINGS, IMAGE, LOGITS, TEXT_EMBEDDINGS, TOKENS, Artifact
from fsa_deploy.runtime.backends.trt_lib import (
    TEXT_ENGINE,
    cuda_device,
    image_engine_name,
    require_tensorrt,
    trt_logger,
    version_tuple,
)

from fsa_deploy.errors import FSAError

if TYPE_CHECKING:
    import tensorrt as trt

# TensorRT DataType name -> torch dtype. Keyed by name so that reading (and testing)
# the table needs no TensorRT, and a type added by a later TensorRT is a clear error.
TRT_TO_TORCH: dict[str, torch.dtype] = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "FP8": torch.float8_e4m3fn,
    "INT8": torch.int8,
    "UINT8": torch.uint8,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "BOOL": torch.bool,
}


def torch_dtype(trt_name: str) -> torch.dtype:
    if trt_name not in TRT_TO_TORCH:
        raise FSAError(f"engine I/O type {trt_name} has no torch buffer type ({', '.join(TRT_TO_TORCH)})")
    return TRT_TO_TORCH[trt_name]


# ---------------------------------------------------------------- checks before deserializing


def check_engine_record(
    record: Mapping[str, Any], trt_version: str, compute_capability: str, name: str = "engine"
) -> None:
    """Refuse an engine this machine cannot run, from its meta.json record alone.

    Without --version-compatible an engine runs only on the TensorRT that built it;
    with it, on that version or a later one. Without --hardware-compatible it runs
    only on the compute capability it was built on; with it (AMPERE_PLUS), on SM 8.0+.
    """
    info = record.get("engine")
    if record.get("role") != "engine" or not isinstance(info, Mapping):
        raise FSAError(f"{name}: meta.json has no engine record for it; rebuild it with `fsa build`")
    built = str(info.get("trt_version"))
    if info.get("version_compatible"):
        if version_tuple(trt_version) < version_tuple(built):
            raise FSAError(
                f"{name}: built with TensorRT {built}, newer than this machine's {trt_version}; "
                "rebuild it here with `fsa build` or upgrade TensorRT"
            )
    elif version_tuple(built) != version_tuple(trt_version):
        raise FSAError(
            f"{name}: built with TensorRT {built}, this machine has {trt_version}; "
            "rebuild it here with `fsa build` (or build with --version-compatible)"
        )
    cc = str(info.get("compute_capability"))
    if info.get("hardware_compatible"):
        if version_tuple(compute_capability) < (8, 0):
            raise FSAError(
                f"{name}: hardware-compatible engines run on Ampere or newer (SM 8.0+), "
                f"this GPU is SM {compute_capability}; rebuild it here with `fsa build`"
            )
    elif version_tuple(cc) != version_tuple(compute_capability):
        raise FSAError(
            f"{name}: built for SM {cc} ({info.get('gpu_name')}), this GPU is SM {compute_capability}; "
            "rebuild it here with `fsa build` (or build with --hardware-compatible)"
        )


def read_engine(art: Artifact, name: str, trt_version: str, compute_capability: str) -> bytes:
    """The engine's bytes once its record, size and sha256 agree with meta.json."""
    record = art.files().get(name)
    if record is None:
        raise FSAError(f"{art.root}: no {name} recorded in meta.json; build it with `fsa build {art.root}`")
    check_engine_record(record, trt_version, compute_capability, name)
    path = art.path(name, verify=False)
    size = path.stat().st_size
    if size != record.get("bytes"):
        raise FSAError(
            f"{path}: {size} bytes, meta.json records {record.get('bytes')} (truncated or replaced); "
            "rebuild it with `fsa build`"
        )
    return art.path(name).read_bytes()  # sha256 checked against meta.json


def deserialize_engine(
    data: bytes, info: Mapping[str, Any], name: str
) -> tuple[trt.Runtime, trt.ICudaEngine]:
    """Runtime and engine; the runtime is returned because it must outlive the engine."""
    import tensorrt as trt

    runtime = trt.Runtime(trt_logger())
    if info.get("version_compatible"):
        # The plan carries its own lean runtime (host code). Allowed because its sha256
        # matched meta.json, i.e. it is the file `fsa build` wrote.
        runtime.engine_host_code_allowed = True
    if info.get("dla_core") is not None:
        runtime.DLA_core = int(info["dla_core"])
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise FSAError(
            f"{name}: TensorRT could not deserialize it (its log above says why); rebuild with `fsa build`"
        )
    return runtime, engine


# ---------------------------------------------------------------- one engine


def dims(d: trt.Dims) -> tuple[int, ...]:
    return tuple(d[i] for i in range(len(d)))


class EngineRunner:
    """One engine, one execution context, run on one CUDA stream, optionally as a CUDA graph.

    CUDA graphs: the first call at a set of input shapes runs normally on static
    buffers (TensorRT wants one plain run after a shape change before a capture); a
    second call at the same shapes captures that run, and later calls replay it. A
    call at other shapes drops the graph: a graph is bound to one context's shapes.
    """

    def __init__(
        self,
        runtime: trt.Runtime,
        engine: trt.ICudaEngine,
        name: str,
        stream: torch.cuda.Stream,
        cuda_graph: bool = False,
    ) -> None:
        import tensorrt as trt

        self._runtime = runtime  # keep alive: freeing it before the engine is undefined
        self.engine, self.name, self.stream, self.cuda_graph = engine, name, stream, cuda_graph
        self.device = stream.device
        self.context = engine.create_execution_context()
        if self.context is None:
            raise FSAError(f"{name}: TensorRT could not create an execution context (out of GPU memory?)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
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

    def check_io(self, inputs: set[str], outputs: set[str]) -> None:
        if set(self.inputs) != inputs or not outputs <= set(self.outputs):
            raise FSAError(
                f"{self.name}: engine inputs {self.inputs} and outputs {self.outputs}, expected "
                f"inputs {sorted(inputs)} and outputs {sorted(outputs)}; rebuild it with `fsa build`"
            )

    def max_leading(self, name: str) -> int:
        """Largest first dimension of an input that the profile allows (callers chunk by it)."""
        return self.ranges[name][1][0]

    def _prepare(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for n in self.inputs:
            x = feeds[n].detach().to(device=self.device, dtype=self.dtypes[n]).contiguous()
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
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        if self._graph is not None:
            with torch.cuda.stream(self.stream):
                self._graph.replay()
        elif not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError(f"{self.name}: TensorRT execute_async_v3 failed (its log above says why)")
        current.wait_stream(self.stream)

    def _capture(self) -> None:
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

    def __call__(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = self._prepare(feeds)
        if not self.cuda_graph:
            outputs = self._bind(x)
            self._enqueue()
            return outputs
        key = tuple(tuple(x[n].shape) for n in self.inputs)
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


def image_engines(art: Artifact) -> dict[str, str]:
    """precision -> engine file name of the image engines recorded in meta.json."""
    return {
        str(info.get("precision")): name
        for name, info in art.files().items()
        if info.get("role") == "engine" and name == image_engine_name(str(info.get("precision")))
    }


class TensorRTBackend:
    """Backend (runtime/backends/base.py) on the engines `fsa build` wrote into an artefact folder.

    `precision` picks `image.<precision>.engine` (default: the only one built);
    `cuda_graph` replays a CUDA graph when the batch and class count repeat.
    text.engine is loaded on the first `encode_text`.
    """

    name = "tensorrt"

    def __init__(
        self,
        folder: str | os.PathLike[str] | Artifact,
        precision: str | None = None,
        *,
        cuda_graph: bool = False,
    ) -> None:
        self.trt_version = require_tensorrt()
        self.gpu_name, self.compute_capability = cuda_device()
        self.artifact = folder if isinstance(folder, Artifact) else Artifact.load(folder)
        self.device = torch.device("cuda", torch.cuda.current_device())
        self.stream = torch.cuda.Stream(self.device)
        self.engine_name = self._image_engine(precision)
        self._image = self._load(self.engine_name, cuda_graph)
        self._image.check_io({IMAGE, TEXT_EMBEDDINGS}, {LOGITS})
        self._text: EngineRunner | None = None
        # the text engine's own hash keys the class-embedding cache (its precision may differ from ORT's)
        self.text_key = f"{TEXT_ENGINE}:{self.artifact.files().get(TEXT_ENGINE, {}).get('sha256')}"

    def _image_engine(self, precision: str | None) -> str:
        built = image_engines(self.artifact)
        if precision is not None:
            return image_engine_name(precision)  # read_engine names what is missing
        if len(built) == 1:
            return next(iter(built.values()))
        root = self.artifact.root
        if not built:
            raise FSAError(f"{root}: no TensorRT engine recorded in meta.json; run `fsa build {root}`")
        raise FSAError(f"{root}: several image engines ({', '.join(sorted(built))}); choose a precision")

    def _load(self, name: str, cuda_graph: bool = False) -> EngineRunner:
        data = read_engine(self.artifact, name, self.trt_version, self.compute_capability)
        runtime, engine = deserialize_engine(data, self.artifact.files()[name]["engine"], name)
        return EngineRunner(runtime, engine, name, self.stream, cuda_graph)

    def run(self, image: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """Crops in chunks of the engine's max batch (crops are independent); K must fit the profile."""
        if image.dim() != 4 or text_embeddings.dim() != 2:
            raise FSAError(
                f"tensorrt: expected image [B, 3, S, S] and text_embeddings [K, D], "
                f"got {list(image.shape)} and {list(text_embeddings.shape)}"
            )
        with torch.cuda.device(self.device):
            chunks = image.split(self._image.max_leading(IMAGE))
            logits = [self._image({IMAGE: c, TEXT_EMBEDDINGS: text_embeddings})[LOGITS] for c in chunks]
        return _cat(logits).float()

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Prompts in chunks of text.engine's max prompt batch."""
        if self._text is None:
            if TEXT_ENGINE not in self.artifact.files():
                root = self.artifact.root
                raise FSAError(f"{root}: no {TEXT_ENGINE} (built with --no-text); run `fsa build {root}`")
            self._text = self._load(TEXT_ENGINE)
            self._text.check_io({TOKENS}, {EMBEDDINGS})
        text = self._text
        with torch.cuda.device(self.device):
            chunks = tokens.split(text.max_leading(TOKENS))
            embeddings = [text({TOKENS: c})[EMBEDDINGS] for c in chunks]
        return _cat(embeddings).float()


def _cat(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(list(parts))

"""ONNX Runtime backend: image.onnx (and text.onnx on demand) of an artefact folder.

Host numpy arrays in and out on every provider: `session.run` copies a crop batch to the
GPU and its logits back when the CUDA provider runs it (the pipeline around it is numpy on
the host). onnxruntime is imported on first use: importing this module costs nothing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from fsa_deploy.contract import (
    EMBEDDINGS,
    IMAGE,
    IMAGE_ONNX,
    LOGITS,
    ONNXRUNTIME,
    TEXT_EMBEDDINGS,
    TEXT_ONNX,
    TOKENS,
    Role,
)
from fsa_deploy.errors import FSAError
from fsa_deploy.runtime.artifact import Artifact, with_stage_outputs
from fsa_deploy.runtime.backends.base import Backend
from fsa_deploy.runtime.text import padded

CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
TRT_EP = "TensorrtExecutionProvider"
EP_NAMES = {CUDA_EP: "cuda", CPU_EP: "cpu", TRT_EP: "trt-ep"}
ORT_HINT = "pip install onnxruntime (CPU) or onnxruntime-gpu (CUDA)"
EXTERNAL_DATA_FOLDER = "session.model_external_initializers_file_folder_path"  # where ORT finds a .data file


def require_onnxruntime() -> Any:
    """The onnxruntime module, or one line naming the install command."""
    try:
        import onnxruntime
    except (ImportError, OSError) as e:  # OSError: the GPU wheel without its CUDA libraries
        raise FSAError(f"onnxruntime is not installed ({e}): {ORT_HINT}") from e
    return onnxruntime


def default_providers() -> list[str]:
    """CUDA when this onnxruntime has it, CPU always (also the fallback for unsupported nodes)."""
    available = require_onnxruntime().get_available_providers()
    return [CUDA_EP, CPU_EP] if CUDA_EP in available else [CPU_EP]


def session_options(threads: int | None) -> Any:
    ort = require_onnxruntime()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: ORT's warnings about unused initialisers are noise here
    # Idle intra-op threads block instead of spinning: their spinning took the cores from the numpy
    # post-processing after each run (tiny export, 5 photos: 0.84 -> 0.74 s; ViT-B-16 + DINO: equal)
    # and, under `fsa serve`, from the other model processes. docs/BENCHMARKS.md.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return opts


def check_image_input(session: Any, art: Artifact, name: str) -> None:
    """The graph's image input must be [B, 3, crop, crop] with meta.json's crop: checked before any run."""
    crop = art.info.crop
    names = [inp.name for inp in session.get_inputs()]
    if IMAGE in names and TEXT_EMBEDDINGS not in names:
        raise FSAError(f"{art.root / name}: no input named {TEXT_EMBEDDINGS!r} (has {', '.join(names)}); "
                       "not an image graph of `fsa export`")
    for inp in session.get_inputs():
        if inp.name == IMAGE:
            dims = list(inp.shape)[1:]
            if len(dims) != 3 or any(isinstance(d, int) and d != want for d, want in zip(dims, (3, crop, crop))):
                got = ", ".join(map(str, dims))
                raise FSAError(f"{art.root / name}: its {IMAGE} input is [B, {got}] but meta.json says crop {crop} "
                               f"(expected [B, 3, {crop}, {crop}]); the folder mixes files of two exports: re-export")
            return
    raise FSAError(f"{art.root / name}: no input named {IMAGE!r}; not an image graph of `fsa export`")


class OnnxRuntimeBackend(Backend):
    """Backend on ONNX Runtime.

    `image_file` picks the graph (image.onnx, or a Q/DQ graph calibration recorded; None: the
    text graph only, for encoding a vocabulary);
    `providers` overrides the CUDA-then-CPU default; `threads` caps intra-op threads;
    `stages` (meta.json stage names) makes those tensors extra outputs, read with `run_stages`
    (the validator's view; needs the `onnx` package); `optimized_to` saves ORT's optimised image
    graph there (bench reads which Casts ORT inserted).
    The name says where it really runs: ORT silently drops a CUDA provider it cannot load.
    GPU path: host arrays in and out, so each crop batch crosses PCIe twice.
    """

    def __init__(self, art: Artifact | str | os.PathLike[str], image_file: str | None = IMAGE_ONNX,
                 providers: Sequence[str] | None = None, threads: int | None = None,
                 stages: Sequence[str] = (), optimized_to: str | os.PathLike[str] | None = None) -> None:
        if threads is not None and threads < 0:
            raise FSAError(f"--threads {threads}: must be >= 0 (0: onnxruntime's default)")
        self.artifact = art if isinstance(art, Artifact) else Artifact.load(art)
        self.providers = list(providers) if providers is not None else default_providers()
        self.threads = threads
        self.image_file = image_file
        self.stage_names = list(stages)
        self._text: Any = None
        if image_file is None:
            self._image, self._text = None, self._session(TEXT_ONNX)
        else:
            self._image = self._session(image_file, self.stage_names, optimized_to)
            check_image_input(self._image, self.artifact, image_file)
        first = (self._image or self._text).get_providers()[0]
        self.name = f"{ONNXRUNTIME.report}-{EP_NAMES.get(first, first.removesuffix('ExecutionProvider').lower())}"
        self.grid = self.artifact.info.grid
        self.embed_dim = self.artifact.info.embed_dim
        # text.onnx and its sha256 when opened: the text graph it encodes with
        self._text_key = f"{TEXT_ONNX}:{self.artifact.sha256(TEXT_ONNX)}"
        self._graph_file = image_file

    def _session(self, name: str, stages: Sequence[str] = (), optimized_to: Any = None) -> Any:
        """A session on a file of the folder, its sha256 (and that of its external data) checked;
        with `stages`, on the graph with those stage tensors as extra outputs."""
        ort = require_onnxruntime()
        path = self.artifact.path(name)
        for n, info in self.artifact.file_records().items():
            if n.startswith(name) and (n == f"{name}.data" or info.role == Role.EXTERNAL_DATA):
                self.artifact.path(n)
        opts = session_options(self.threads)
        if optimized_to is not None:
            opts.optimized_model_filepath = str(optimized_to)
        model: Any = str(path)
        if stages:
            model = graph_with_outputs(self.artifact, name, stages)
            opts.add_session_config_entry(EXTERNAL_DATA_FOLDER, str(self.artifact.root))
        # ONNX Runtime 1.32's CPU MatmulTransposeFusion segfaults at session creation on some mixed
        # fp16 / fp32 graphs (AutoCast's, with fp32 islands: the tiny --real-stats export); the fusion
        # only folds a Transpose into a MatMul, so fp16 graphs go without it
        record = self.artifact.file_records().get(name)
        off = ["MatmulTransposeFusion"] if record is not None and record.precision == "fp16" else []
        try:
            return ort.InferenceSession(model, opts, providers=self.providers, disabled_optimizers=off)
        except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
            raise FSAError(f"{path}: onnxruntime could not load it ({str(e).splitlines()[0][:200]})") from e

    def run(self, image: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
        """image float32 [B, 3, S, S] RGB 0-255, text [K, D] -> logits float32 [B, K, H', W']."""
        if image.ndim != 4 or text_embeddings.ndim != 2:
            raise FSAError(f"{self.name}: expected image [B, 3, S, S] and text_embeddings [K, D], "
                           f"got {list(image.shape)} and {list(text_embeddings.shape)}")
        feeds = {IMAGE: _f32(image), TEXT_EMBEDDINGS: _f32(text_embeddings)}
        assert self._image is not None, "opened for text only"
        (out,) = self._image.run([LOGITS], feeds)
        return np.asarray(out)

    def run_stages(self, image: np.ndarray, text_embeddings: np.ndarray) -> dict[str, np.ndarray]:
        """`logits` and the stage tensors asked for at construction, by stage name."""
        stages = self.artifact.info.stages
        assert self._image is not None, "opened for text only"
        outs = self._image.run([LOGITS, *(stages[n] for n in self.stage_names)],
                               {IMAGE: _f32(image), TEXT_EMBEDDINGS: _f32(text_embeddings)})
        return dict(zip(["logits", *self.stage_names], outs))

    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        """tokens [T, L] -> embeddings float32 [T, D]; text.onnx is loaded on the first call. A text.onnx
        exported with a static length (77: before the length became dynamic) gets the tokens padded."""
        if self._text is None:
            self._text = self._session(TEXT_ONNX)
        length = self._text.get_inputs()[0].shape[1]
        if isinstance(length, int):
            tokens = padded(tokens, length)
        (out,) = self._text.run([EMBEDDINGS], {TOKENS: np.ascontiguousarray(tokens, dtype=np.int32)})
        return np.asarray(out)


def graph_with_outputs(art: Artifact, name: str, stage_names: Sequence[str]) -> bytes:
    """The graph `name` with the stage tensors as extra outputs, serialised without its weights when
    they are external (they stay in their .data file and ONNX Runtime reads them from the folder):
    one protobuf message cannot exceed 2 GB, and ViT-H's weights do."""
    import onnx


    graph = onnx.load(str(art.path(name)), load_external_data=False)
    data: bytes = with_stage_outputs(graph, art.info.stages, list(stage_names)).SerializeToString()
    return data


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)

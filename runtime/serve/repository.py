"""Write a Triton model repository for an artefact folder (`fsa triton`, and `fsa serve`'s local one).

Three models, the same names and tensors in both targets:

- `fsa_text`: tokens int32 [T, 77] -> embeddings [T, D] (text.onnx);
- `fsa_image`: crops + class embeddings -> crop logits (image.onnx or a TensorRT engine);
- `fsa_segment` (python backend): IMAGE (one encoded image file) + CLASSES (the --classes text)
  -> LABELS uint16 [H, W] + SUMMARY (fsa segment's NAME.json), running this runtime's Segmenter
  whose backend calls the other two through BLS (runtime/serve/bls.py).

`container` (for NVIDIA's tritonserver image, no machine paths): the text and image models run on
Triton's native onnxruntime / tensorrt_plan backends. Their image graph takes text_embeddings
[K, D] without a batch dim and FSA's feedback uses the text inside the attention, so Triton
cannot batch crops of different requests there (it batches every input, and merges only equal
non-batch shapes, not equal values): max_batch_size 0, all of an image's crops (up to the
engine's batch) in one request, concurrency from model instances.
`local` (`fsa serve`; the PyTriton wheel has only the python backend): the text and image models
are python models running this runtime's backends; the image model batches crops across requests
(dynamic batching) and runs each group of requests with the same class embeddings in one call.

The runtime itself (fsa_deploy's top-level modules and runtime/) is copied into each python model's
version folder, so a repository carries the code that wrote it; fsa_segment's copy of the
artefact is meta.json and the tokenizer's vocabulary only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsa_deploy.errors
import fsa_deploy.runtime
from fsa_deploy.contract import (
    CONTEXT_LENGTH,
    EMBEDDINGS,
    IMAGE,
    IMAGE_MODEL,
    IMAGE_ONNX,
    IN_CLASSES,
    IN_IMAGE,
    IN_PROB_THD,
    IN_SHORT_SIDE,
    IN_STRIDE,
    LOGITS,
    META,
    ONNXRUNTIME,
    OUT_LABELS,
    OUT_SUMMARY,
    OUTPUTS_MANIFEST,
    REPOSITORY_TARGETS,
    SEGMENT_MODEL,
    TENSORRT,
    TEXT_EMBEDDINGS,
    TEXT_MODEL,
    TEXT_ONNX,
    TOKENS,
    TRITON_BACKENDS,
    Role,
)
from fsa_deploy.errors import FSAError
from fsa_deploy.ranges import CROPS_PER_REQUEST
from fsa_deploy.runtime import gate
from fsa_deploy.runtime.artifact import Artifact
from fsa_deploy.runtime.gate import staging_folder
from fsa_deploy.runtime.schema import FileRecord
from fsa_deploy.runtime.serve.bls import SegmentParams
from fsa_deploy.runtime.serve.model_config import model_config_pb2

MODEL_FILES = Path(__file__).parent / "models"
ARTIFACT_COPY = "artifact"  # fsa_segment/1/artifact: meta.json + tokenizer vocabulary


def tensor(name: str, dtype: str, dims: list[int]) -> dict[str, Any]:
    return {"name": name, "data_type": dtype, "dims": dims}


def config_text(cfg: dict[str, Any]) -> str:
    """A model's config.pbtxt: `cfg` (ModelConfig's fields, enums by name, `parameters` as a map)
    parsed into Triton's ModelConfig message, so a misspelled field or enum fails here, and printed
    by protobuf's text format (fields left at their default, such as max_batch_size 0, are omitted)."""
    from google.protobuf import json_format, text_format

    message = json_format.ParseDict(cfg, model_config_pb2("fsa triton / fsa serve").ModelConfig())
    return text_format.MessageToString(message, use_short_repeated_primitives=True)


# fsa_segment's optional inputs: the evaluation protocol of `fsa eval --server` (absent: the defaults)
SEGMENT_OPTIONAL_INPUTS = [{**tensor(name, dtype, [1]), "optional": True}
                           for name, dtype in ((IN_SHORT_SIDE, "TYPE_INT32"), (IN_STRIDE, "TYPE_INT32"),
                                               (IN_PROB_THD, "TYPE_FP32"))]


def parameters(params: dict[str, str]) -> dict[str, Any]:
    return {k: {"string_value": v} for k, v in params.items()}


@dataclass(frozen=True)
class RepoOptions:
    """What `fsa triton` / `fsa serve` choose. `backend` is the runtime backend the local python
    models open (auto, onnx, trt); `image_backend` the container's native backend."""

    target: str = "container"  # REPOSITORY_TARGETS: who runs the models (Triton's container, or fsa serve)
    image_backend: str = ONNXRUNTIME.triton
    backend: str = "auto"
    batch: int = 16  # crops per image-model request (CROPS_PER_REQUEST), capped by the engine's profile
    max_classes: int = 1024
    segment_instances: int = 4
    image_instances: int = 1
    queue_delay_us: int = 2000
    threads: int = 0  # local ORT intra-op threads; 0: onnxruntime's default (as `fsa segment`)
    precision: str | None = None  # which TensorRT engine, when several were built
    cache_dir: str = ""  # fsa_segment's class-embedding cache ("": the server's temp dir)


def vendor_runtime(dest: Path) -> None:
    """Copy the base package (fsa_deploy's own modules: errors, contract, interrupts, ...; runtime/)
    to dest/fsa_deploy. The version folder is on the stub's sys.path, so this copy is what the model
    imports. Every top-level module goes: they are small, stdlib-only, and whichever the runtime
    imports next is then already there."""
    top, runtime = Path(fsa_deploy.errors.__file__).parent, Path(fsa_deploy.runtime.__file__).parent
    pkg = gate.mkdir(dest / "fsa_deploy")
    for module in sorted(top.glob("*.py")):
        gate.copy(module, pkg / module.name, keep=False)
    gate.copytree(runtime, pkg / "runtime", ignore=("__pycache__", "*.pyc"))


def engine_of(art: Artifact, precision: str | None) -> tuple[str, FileRecord]:
    """The TensorRT engine recorded in meta.json (by precision when several) and its build record."""
    engines = {n: i for n, i in art.file_records().items() if i.role == Role.ENGINE}
    if precision:
        engines = {n: i for n, i in engines.items() if i.precision == precision}
    if not engines:
        what = f" of precision {precision}" if precision else ""
        raise FSAError(f"{art.root}: no TensorRT engine{what} recorded in {META} (build one: fsa build)")
    if len(engines) > 1:
        raise FSAError(f"{art.root}: several engines ({', '.join(sorted(engines))}): pick one with --precision")
    name = next(iter(engines))
    return name, engines[name]


def _copy_graph(art: Artifact, name: str, folder: Path, as_name: str) -> None:
    """A graph (sha256 checked) and its external-data file, which keeps its recorded name."""
    gate.mkdir(folder)
    gate.copy(art.path(name), folder / as_name, keep=False)
    if f"{name}.data" in art.files():
        gate.copy(art.path(f"{name}.data"), folder / f"{name}.data", keep=False)


def _python_model(folder: Path, model_file: str) -> None:
    version = gate.mkdir(folder / "1")
    gate.copy(MODEL_FILES / model_file, version / "model.py", keep=False)
    vendor_runtime(version)


def check_repository_target(out: Path, overwrite: bool = False) -> None:
    """`out` may be absent or an empty folder, never inside an artefact folder (at any depth); a
    repository of ours is replaced with `overwrite`, and only when every file in it is one its
    manifest lists (a file a user added is named and refused); anything else is refused."""
    art = gate.artifact_holding(out / "x")
    if art is not None:
        raise FSAError(f"--out {out}: inside the artefact folder {art}; a repository needs a folder of its own")
    if not (out.is_symlink() or out.exists()):
        return
    if out.is_symlink() or not out.is_dir():
        raise FSAError(f"--out {out}: exists and is not a folder")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    if not (out / OUTPUTS_MANIFEST).is_file():
        raise FSAError(f"--out {out}: holds files fsa triton did not write ({', '.join(entries[:3])}); --overwrite "
                       "replaces only a repository written by fsa triton: give an empty or new folder")
    if not overwrite:
        raise FSAError(f"--out {out}: a model repository exists; pass --overwrite to replace it")
    gate.refuse_foreign(out, "--out")


def write_repository(art: Artifact | str | os.PathLike[str], out: str | os.PathLike[str],
                     opts: RepoOptions = RepoOptions(), overwrite: bool = False) -> Path:
    """Write the three models under `out`, built beside it and moved into place (see
    check_repository_target for what `out` may be). Returns `out`."""
    model_config_pb2("fsa triton / fsa serve")  # the serve extra: refused before any work
    art = art if isinstance(art, Artifact) else Artifact.load(art)
    check_repository_target(Path(out), overwrite)  # before any work
    with staging_folder(out, overwrite, check=check_repository_target) as tmp:
        _write_models(art, tmp, opts)
        gate.record_tree(tmp)  # the manifest: what a later --overwrite may remove
    return Path(out)


def _write_models(art: Artifact, out: Path, opts: RepoOptions) -> None:
    if opts.target not in REPOSITORY_TARGETS:
        raise FSAError(f"target {opts.target!r}: choose from {', '.join(REPOSITORY_TARGETS)}")
    if opts.image_backend not in TRITON_BACKENDS:
        raise FSAError(f"--image-backend {opts.image_backend!r}: choose from {', '.join(TRITON_BACKENDS)}")
    CROPS_PER_REQUEST.check(opts.batch)
    info = art.info
    crop, dim, grid = info.crop, info.embed_dim, list(info.grid)
    batch, max_classes = opts.batch, opts.max_classes
    local = opts.target == "local"
    trt = not local and opts.image_backend == TENSORRT.triton
    if trt:
        engine, record = engine_of(art, opts.precision)
        profiles = (record.engine.profiles if record.engine else None) or {}
        batch = min(batch, int(profiles.get(IMAGE, {}).get("max", [batch])[0]))
        max_classes = min(max_classes, int(profiles.get(TEXT_EMBEDDINGS, {}).get("max", [max_classes])[0]))

    # ---- fsa_text
    text_cfg: dict[str, Any] = {"name": TEXT_MODEL, "max_batch_size": 0,
                                "input": [tensor(TOKENS, "TYPE_INT32", [-1, CONTEXT_LENGTH])],
                                "output": [tensor(EMBEDDINGS, "TYPE_FP32", [-1, dim])]}
    # ---- fsa_image: batch dim added by Triton when max_batch_size > 0
    if local:
        image_cfg: dict[str, Any] = {
            "name": IMAGE_MODEL, "backend": "python", "max_batch_size": batch,
            "input": [tensor(IMAGE, "TYPE_FP32", [3, crop, crop]), tensor(TEXT_EMBEDDINGS, "TYPE_FP32", [-1, dim])],
            "output": [tensor(LOGITS, "TYPE_FP32", [-1, *grid])],
            "dynamic_batching": {"max_queue_delay_microseconds": opts.queue_delay_us},
            "instance_group": [{"count": opts.image_instances, "kind": "KIND_CPU"}]}
        for name in (IMAGE_ONNX, TEXT_ONNX):  # the graphs the server will open: hashes and external data now
            if name in art.files():
                art.path(name)
        local_params = {"artifact": str(art.root.resolve()), "backend": opts.backend, "threads": str(opts.threads)}
        text_cfg.update(backend="python", instance_group=[{"count": 1, "kind": "KIND_CPU"}],
                        parameters=parameters(local_params))
        image_cfg["parameters"] = parameters(local_params)
        _python_model(out / TEXT_MODEL, "text_model.py")
        _python_model(out / IMAGE_MODEL, "image_model.py")
        backend_name = f"triton-{opts.backend}"
    else:
        image_cfg = {
            "name": IMAGE_MODEL, "max_batch_size": 0,
            "input": [tensor(IMAGE, "TYPE_FP32", [-1, 3, crop, crop]), tensor(TEXT_EMBEDDINGS, "TYPE_FP32", [-1, dim])],
            "output": [tensor(LOGITS, "TYPE_FP32", [-1, -1, *grid])],
            "instance_group": [{"count": opts.image_instances, "kind": "KIND_GPU"}]}
        text_cfg["backend"] = ONNXRUNTIME.triton
        _copy_graph(art, TEXT_ONNX, out / TEXT_MODEL / "1", "model.onnx")
        if trt:
            image_cfg["platform"] = TENSORRT.triton_platform
            gate.mkdir(out / IMAGE_MODEL / "1")
            gate.copy(art.path(engine), out / IMAGE_MODEL / "1" / "model.plan", keep=False)
        else:
            image_cfg["backend"] = ONNXRUNTIME.triton
            _copy_graph(art, IMAGE_ONNX, out / IMAGE_MODEL / "1", "model.onnx")
        backend_name = f"triton-{opts.image_backend}"
    # ---- fsa_segment
    params = SegmentParams(text_per_crop=local, max_batch=batch, max_classes=max_classes,
                           backend_name=backend_name, cache_dir=opts.cache_dir)
    segment_cfg = {
        "name": SEGMENT_MODEL, "backend": "python", "max_batch_size": 0,
        "input": [tensor(IN_IMAGE, "TYPE_STRING", [1]), tensor(IN_CLASSES, "TYPE_STRING", [1]),
                  *SEGMENT_OPTIONAL_INPUTS],
        "output": [tensor(OUT_LABELS, "TYPE_UINT16", [-1, -1]), tensor(OUT_SUMMARY, "TYPE_STRING", [1])],
        "instance_group": [{"count": opts.segment_instances, "kind": "KIND_CPU"}],
        "parameters": parameters(params.to_config())}
    _python_model(out / SEGMENT_MODEL, "segment_model.py")
    copy = out / SEGMENT_MODEL / "1" / ARTIFACT_COPY
    gate.mkdir(copy)
    kept = {n: i for n, i in art.file_records().items() if i.role == Role.TOKENIZER}
    for name in kept:
        gate.copy(art.path(name), copy / name, keep=False)
    # meta.json as recorded: the image graph's hash keys the summary; absent files are never opened
    gate.write_json(copy / META, art.meta, keep=False)
    for name, cfg in ((TEXT_MODEL, text_cfg), (IMAGE_MODEL, image_cfg), (SEGMENT_MODEL, segment_cfg)):
        gate.write_text(out / name / "config.pbtxt", config_text(cfg), keep=False)  # inside the staging folder

"""Offline check of a model repository: every config.pbtxt parsed into Triton's own ModelConfig
(protobuf text format: misspelled fields, bad enums, wrong types fail with line:column), then the
wiring: each BLS call fsa_segment makes (names, dtypes, shapes: runtime/serve/bls.py `calls`)
against the called model's config. It reads the files from disk, whatever wrote them (the writer's
own message objects are never consulted). Needs the `serve` extra (tritonclient's model_config_pb2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fsa_deploy.contract import IN_PROB_THD, IN_SHORT_SIDE, IN_STRIDE, META, ONNXRUNTIME, SEGMENT_MODEL, TENSORRT
from fsa_deploy.errors import FSAError
from fsa_deploy.runtime.schema import MetaRecord, parse
from fsa_deploy.runtime.serve.bls import SegmentParams, calls
from fsa_deploy.runtime.serve.model_config import model_config_pb2
from fsa_deploy.runtime.serve.repository import ARTIFACT_COPY


def parse_configs(repo: Path) -> dict[str, Any]:
    """model name -> ModelConfig message, for every */config.pbtxt."""
    pb = model_config_pb2("checking a model repository")
    from google.protobuf import text_format

    out = {}
    for path in sorted(Path(repo).glob("*/config.pbtxt")):
        cfg = pb.ModelConfig()
        try:
            text_format.Parse(path.read_text(), cfg)
        except text_format.ParseError as e:
            raise FSAError(f"{path}: {e}") from e
        out[path.parent.name] = cfg
    if not out:
        raise FSAError(f"{repo}: no */config.pbtxt (not a model repository)")
    return out


def _dims_fit(dims: list[int], shape: tuple[int, ...]) -> bool:
    return len(dims) == len(shape) and all(d == -1 or d == s for d, s in zip(dims, shape))


# fsa_segment's optional inputs (`fsa eval --server`, `fsa app`): name -> Triton data type
PROTOCOL_INPUTS = {IN_SHORT_SIDE: "TYPE_INT32", IN_STRIDE: "TYPE_INT32", IN_PROB_THD: "TYPE_FP32"}


def protocol_input_problems(seg: Any, dtype_name: Any) -> list[str]:
    """fsa_segment must take SHORT_SIDE / STRIDE / PROB_THD as optional one-element inputs."""
    inputs = {t.name: t for t in seg.input}
    out = []
    for name, dtype in PROTOCOL_INPUTS.items():
        t = inputs.get(name)
        if t is None:
            out.append(f"{SEGMENT_MODEL}: no optional input {name!r} ({dtype})")
        elif dtype_name(t.data_type) != dtype or list(t.dims) != [1] or not t.optional:
            out.append(f"{SEGMENT_MODEL}.{name}: {dtype_name(t.data_type)} {list(t.dims)}"
                       f"{' optional' if t.optional else ''}, expected {dtype} [1] optional")
    return out


def check_repository(repo: str | Path, portable: bool = True) -> list[str]:
    """Problems found (empty: the repository is consistent). `portable`: no absolute path in any
    parameter (what NVIDIA's container needs; `fsa serve`'s local repository names the artefact)."""
    repo = Path(repo)
    configs = parse_configs(repo)
    dtype_name = model_config_pb2().DataType.Name
    problems = []
    for name, cfg in configs.items():
        folder = repo / name
        if cfg.name != name:
            problems.append(f"{name}: config name {cfg.name!r} differs from its folder")
        if cfg.backend == "python" and not (folder / "1" / "model.py").is_file():
            problems.append(f"{name}: python backend but no 1/model.py")
        files = {"onnxruntime": "model.onnx"} if cfg.backend == ONNXRUNTIME.triton else {}
        if cfg.platform == TENSORRT.triton_platform:
            files = {"tensorrt_plan": "model.plan"}
        problems += [f"{name}: no 1/{f}" for f in files.values() if not (folder / "1" / f).is_file()]
        if cfg.HasField("dynamic_batching") and cfg.max_batch_size <= 0:
            problems.append(f"{name}: dynamic_batching needs max_batch_size > 0")
        if portable:
            problems += [f"{name}: parameter {k} is a path of this machine ({v.string_value})"
                         for k, v in cfg.parameters.items() if Path(v.string_value).is_absolute()]
    seg = configs.get(SEGMENT_MODEL)
    if seg is None:
        return [*problems, f"no {SEGMENT_MODEL} model"]
    problems += protocol_input_problems(seg, dtype_name)
    meta_path = repo / SEGMENT_MODEL / "1" / ARTIFACT_COPY / META
    if not meta_path.is_file():
        return [*problems, f"{SEGMENT_MODEL}: no 1/{ARTIFACT_COPY}/{META}"]
    info = MetaRecord.of(parse(meta_path.read_text(encoding="utf-8"), str(meta_path)), str(meta_path))
    params = SegmentParams.from_config({k: {"string_value": v.string_value} for k, v in seg.parameters.items()})
    for call in calls(params, info.crop, info.embed_dim):
        callee = configs.get(call.model)
        if callee is None:
            problems.append(f"{SEGMENT_MODEL} calls {call.model!r}: no such model")
            continue
        batch = callee.max_batch_size
        inputs = {t.name: t for t in callee.input}
        for tname, (dtype, shape) in call.inputs.items():
            t = inputs.get(tname)
            if t is None:
                problems.append(f"{SEGMENT_MODEL} -> {call.model}: no input {tname!r} (has {sorted(inputs)})")
                continue
            if dtype_name(t.data_type) != dtype:
                problems.append(f"{SEGMENT_MODEL} -> {call.model}.{tname}: sends {dtype}, "
                                f"model takes {dtype_name(t.data_type)}")
            dims = ([-1] if batch > 0 else []) + list(t.dims)
            if not _dims_fit(dims, shape):
                problems.append(f"{SEGMENT_MODEL} -> {call.model}.{tname}: sends shape {list(shape)}, "
                                f"model takes {dims}")
            if batch > 0 and shape[0] > batch:
                problems.append(f"{SEGMENT_MODEL} -> {call.model}: batch {shape[0]} > max_batch_size {batch}")
        missing = set(call.inputs) ^ set(inputs)
        if missing - set(call.inputs):
            problems.append(f"{SEGMENT_MODEL} -> {call.model}: inputs not sent: {sorted(missing - set(call.inputs))}")
        outputs = {t.name: t for t in callee.output}
        for oname, dtype in call.outputs.items():
            if oname not in outputs:
                problems.append(f"{SEGMENT_MODEL} -> {call.model}: no output {oname!r}")
            elif dtype_name(outputs[oname].data_type) != dtype:
                problems.append(f"{SEGMENT_MODEL} -> {call.model}.{oname}: gives "
                                f"{dtype_name(outputs[oname].data_type)}, expected {dtype}")
    return problems

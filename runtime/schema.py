"""meta.json's schema and records: the one module that knows its keys, for every reader and writer.

The typed records below (ExportMeta written by export, MetaRecord / MetaFields read through
Artifact.info, FileRecord / EngineRecord / CalibrationRun for the `files` entries) carry the keys
as field names; the JSON on disk keeps the keys docs/CONTRACT.md lists.

Each field has a kind and a valid range. Load checks every field present (a wrong type or
range is one line naming the field) and requires FORMAT's core fields; the other fields are
required by the reader that uses them: `meta["crop"]` on a meta.json without `crop` raises a
one-line FSAError naming the field (Meta.__missing__), never a KeyError. The file itself is
strict JSON: NaN and Infinity are refused when read (and never written: runtime.gate.write_json).

The same module guards what meta.json records: no verb writes over meta.json or a file it
lists (`refuse_artifact_file`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fsa_deploy.contract import CLIP_MODELS, CONTEXT_LENGTH, FIXED_ROLES, FORMAT, FORMAT_VERSION, GRAPH_PRECISIONS, META
from fsa_deploy.errors import FSAError, escape
from fsa_deploy.ranges import CROP, FILE_BYTES, Range
from fsa_deploy.runtime.trust import name_problem

Check = Callable[[Any], str | None]  # a value -> None if valid, else what is wrong with it


def _number(lo: float | None = None, hi: float | None = None, lo_open: bool = False, integer: bool = False) -> Check:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)):
            return f"{v!r} is not {'an integer' if integer else 'a number'}"
        if not math.isfinite(v):
            return f"{v!r} is not finite"
        if lo is not None and (v <= lo if lo_open else v < lo):
            return f"{v!r} is {'not above' if lo_open else 'below'} {lo:g}"
        if hi is not None and v > hi:
            return f"{v!r} is above {hi:g}"
        return None
    return check


def _of(kind: type[Any], what: str, item: Check | None = None, length: int | None = None,
        nonempty: bool = False) -> Check:
    def check(v: Any) -> str | None:
        if not isinstance(v, kind):
            return f"{type(v).__name__} where {what} is expected"
        if length is not None and len(v) != length:
            return f"{len(v)} entries where {length} are expected"
        if nonempty and not v:
            return f"empty where {what} is expected"
        if item is not None:
            for x in v.values() if isinstance(v, dict) else v:
                bad = item(x)
                if bad:
                    return bad
        return None
    return check


def _text(v: Any) -> str | None:
    return None if isinstance(v, str) and v else f"{v!r} is not a non-empty string"


def _one_of(allowed: tuple[str, ...]) -> Check:
    def check(v: Any) -> str | None:
        return None if isinstance(v, str) and v in allowed else f"{v!r} is not one of {', '.join(allowed)}"
    return check


def _ranged(bound: Range) -> Check:
    """The field's bounds from ranges.py (the same the option that sets it is held to)."""
    def check(v: Any) -> str | None:
        bad = _number(integer=bound.integer)(v)  # the type first: "'112' is not an integer"
        if bad:
            return bad
        bad = bound.problem(v)
        return None if bad is None else f"{v!r} is {bad}"
    return check


def _template(v: Any) -> str | None:
    return None if isinstance(v, str) and "{}" in v else f"{v!r} is not a prompt template with {{}}"


def _file_record(v: Any, name: str = "") -> str | None:
    if not isinstance(v, dict):
        return f"{type(v).__name__} where a file record is expected"
    role = v.get("role")
    if role is not None and not (isinstance(role, str) and role):
        return f"role {role!r} is not a non-empty string"
    if name in FIXED_ROLES and role is not None and role != FIXED_ROLES[name]:
        return f"role {role!r}: {name} is the {FIXED_ROLES[name]!r} graph"
    if "precision" in v and (bad := _one_of(GRAPH_PRECISIONS)(v["precision"])):
        return f"precision {bad}"
    for where, src in (("source", v.get("source")), ("engine.source", (v.get("engine") or {}).get("source")
                                                      if isinstance(v.get("engine"), dict) else None)):
        if src is not None and (bad := name_problem(src)):  # a name read from a record: plain, in the folder
            return f"{where}: {bad}; refused, a name must stay inside its folder"
    sha = v.get("sha256")
    if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        return f"sha256 {sha!r} is not 64 hex digits"
    if "bytes" in v and (bad := FILE_BYTES.problem(v["bytes"])):
        return f"bytes {v['bytes']!r} is {bad}"
    try:  # every known key of the record and its engine entry: the type its reader expects
        FileRecord.of(v)
    except ValueError as e:
        return str(e)
    return None


def _files(v: Any) -> str | None:
    """File records, keyed by plain file names of the folder (no separators, `..`, absolute paths)."""
    if not isinstance(v, dict):
        return f"{type(v).__name__} where an object of file records is expected"
    for name, record in v.items():
        if bad := name_problem(name):
            return f"{bad}; refused, a name must stay inside its folder"
        if bad := _file_record(record, name):
            return f"{escape(name)}: {bad}"
    return None


POSITIVE_INT = _number(0, lo_open=True, integer=True)
FINITE = _number()


@dataclass(frozen=True)
class Field:
    check: Check
    what: str  # for the error line and the docs
    required: bool = False  # at load; the others are required by the reader that uses them


FIELDS: dict[str, Field] = {
    "format": Field(_text, "the format name", required=True),
    "format_version": Field(_number(integer=True), "the format version", required=True),
    "files": Field(_files, "plain file name -> {sha256, bytes, ...}", required=True),
    "model": Field(_one_of(CLIP_MODELS), "the CLIP model name"),
    "weights": Field(_of(dict, "an object"), "where the weights came from"),
    "attention": Field(_text, "the attention type"),
    "crop": Field(_ranged(CROP), "the crop size in pixels"),
    "fsa": Field(_of(bool, "true or false"), "FSA on or off"),
    "hyper_parameters": Field(_of(dict, "an object of numbers", FINITE), "finite numbers"),
    "precision": Field(_one_of(GRAPH_PRECISIONS), "the graph precision"),
    "opset": Field(POSITIVE_INT, "the ONNX opset"),
    "clip_grid": Field(_of(list, "a list", POSITIVE_INT, 2), "[h, w] > 0"),
    "grid": Field(_of(list, "a list", POSITIVE_INT, 2), "[h, w] > 0"),
    "patch": Field(POSITIVE_INT, "the patch size (> 0)"),
    "width": Field(POSITIVE_INT, "the transformer width (> 0)"),
    "heads": Field(POSITIVE_INT, "the head count (> 0)"),
    "embed_dim": Field(POSITIVE_INT, "the embedding size (> 0)"),
    "logit_scale": Field(_number(0, lo_open=True), "a finite number > 0"),
    "prob_thd": Field(_number(0, 1), "a number in [0, 1]"),
    "templates": Field(_of(list, "a list", _template, nonempty=True), "one or more prompt templates with {}"),
    "context_length": Field(_number(0, CONTEXT_LENGTH, lo_open=True, integer=True),
                            f"the token count (1 to {CONTEXT_LENGTH})"),
    "stages": Field(_of(dict, "an object of tensor names", _text), "stage -> tensor name"),
    "feedback_scope": Field(_text, "the feedback node prefix"),
}


class Meta(dict[str, Any]):
    """meta.json as a dict whose missing field is a one-line FSAError naming it."""

    source: str = META

    def __missing__(self, key: str) -> Any:
        what = FIELDS[key].what if key in FIELDS else "a field this reader needs"
        raise FSAError(f"{self.source}: field {key!r} ({what}) is missing; re-export with `fsa export`")


@dataclass(frozen=True)
class MetaRecord:
    """meta.json's model fields as typed values, over the validated data (`Artifact.info`).

    The data stays the dict that is written back (meta.json's bytes and keys do not change); a
    field a reader needs and the file lacks is the one-line error of `Meta.__missing__`, naming
    the file. The `files` entries are FileRecords (`Artifact.file`): they change as build and
    calibrate add files. `recorded` holds every field as the file has it (None where absent).
    """

    data: Meta

    @functools.cached_property
    def recorded(self) -> MetaFields:
        """Every field as the file holds it, None where absent: for readers that fall back to a
        default of their own (the properties below are what a reader needs, or one line)."""
        try:
            return load_record(MetaFields, {k: v for k, v in self.data.items() if k != "files"})
        except ValueError as e:
            raise FSAError(f"{self.source}: field {e}; re-export with `fsa export`") from None

    @classmethod
    def of(cls, meta: dict[str, Any], source: str = META) -> MetaRecord:
        """The record of already validated data (Artifact.meta) or of raw data (validated here)."""
        return cls(meta if isinstance(meta, Meta) else validate(meta, source))

    @property
    def source(self) -> str:
        return self.data.source

    @property
    def crop(self) -> int:
        return int(self.data["crop"])

    @property
    def grid(self) -> tuple[int, int]:
        h, w = (int(g) for g in self.data["grid"])
        return h, w

    @property
    def embed_dim(self) -> int:
        return int(self.data["embed_dim"])

    @property
    def logit_scale(self) -> float:
        return float(self.data["logit_scale"])

    @property
    def templates(self) -> list[str]:
        return [str(t) for t in self.data["templates"]]

    @property
    def stages(self) -> dict[str, str]:
        """stage name -> tensor name; {} when the export recorded none."""
        return {str(k): str(v) for k, v in (self.data.get("stages") or {}).items()}

    @property
    def precision(self) -> str:
        """The image graph's precision (fp32 when an older export did not record it)."""
        return str(self.data.get("precision", "fp32"))

    @property
    def attention(self) -> str | None:
        v = self.data.get("attention")
        return None if v is None else str(v)

    @property
    def proxy(self) -> str | None:
        """The proxy model's name; None (or absent) when the attention has no proxy."""
        v = self.data.get("proxy")
        return None if v is None else str(v)

    @property
    def feedback_scope(self) -> str:
        """The name prefix of the feedback nodes; "" when the export recorded none."""
        return str(self.data.get("feedback_scope") or "")

    @property
    def model(self) -> str | None:
        v = self.data.get("model")
        return None if v is None else str(v)

    @property
    def weights(self) -> dict[str, Any] | None:
        v = self.data.get("weights")
        return dict(v) if isinstance(v, dict) else None

    @property
    def proxy_weights(self) -> dict[str, Any] | None:
        v = self.data.get("proxy_weights")
        return dict(v) if isinstance(v, dict) else None

    @property
    def fsa(self) -> bool:
        return bool(self.data["fsa"])

    @property
    def hyper_parameters(self) -> dict[str, float]:
        """The method's hyper-parameters (every export records them)."""
        return {str(k): float(v) for k, v in self.data["hyper_parameters"].items()}

    @property
    def prob_thd(self) -> float:
        """The probability threshold below which a pixel is background (0 when not recorded)."""
        return float(self.data.get("prob_thd", 0.0))

    @property
    def context_length(self) -> int:
        return int(self.data["context_length"])


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (NaN and Infinity are refused)")


def parse(text: str, source: str) -> dict[str, Any]:
    """meta.json's text -> a JSON object (strict: NaN and Infinity refused); then `validate` it."""
    try:
        raw = json.loads(text.removeprefix("\ufeff"), parse_constant=_reject_constant)
    except ValueError as e:
        raise FSAError(f"{source}: unreadable meta.json ({e})") from e
    except RecursionError:  # a hostile file: thousands of nested arrays
        raise FSAError(f"{source}: unreadable meta.json (nested too deeply)") from None
    if not isinstance(raw, dict):
        raise FSAError(f"{source}: not an fsa-deploy meta.json (a JSON object is expected)")
    return raw


def is_format(meta: dict[str, Any]) -> bool:
    """True if the object names this format (its name and an integer version, whichever)."""
    version = meta.get("format_version")
    return meta.get("format") == FORMAT and isinstance(version, int) and not isinstance(version, bool)


def check_format(meta: dict[str, Any], source: str) -> None:
    """One line naming the file unless it is this format at the version this fsa-deploy reads."""
    if meta.get("format") != FORMAT:
        raise FSAError(f"{source}: not an fsa-deploy meta.json (format field missing or wrong)")
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise FSAError(f"{source}: field 'format_version': {version!r} is not an integer "
                       f"(this fsa-deploy reads {FORMAT_VERSION}); re-export")
    if version != FORMAT_VERSION:
        raise FSAError(f"{source}: format_version {meta.get('format_version')} is not supported "
                       f"(this fsa-deploy reads {FORMAT_VERSION}); re-export")


def validate(meta: dict[str, Any], source: str = META) -> Meta:
    """Check every known field present and the required ones; returns the same data as a Meta."""
    for name, f in FIELDS.items():
        if name not in meta:
            if f.required:
                raise FSAError(f"{source}: field {name!r} ({f.what}) is missing; not an fsa-deploy meta.json")
            continue
        bad = f.check(meta[name])
        if bad:
            raise FSAError(f"{source}: field {name!r}: {bad} (expected {f.what}); re-export with `fsa export`")
    try:  # the fields outside the table (proxy, proxy_weights, versions...): the types their readers expect
        load_record(MetaFields, {k: v for k, v in meta.items() if k != "files"})
    except ValueError as e:
        raise FSAError(f"{source}: field {e}; re-export with `fsa export`") from None
    out = meta if isinstance(meta, Meta) else Meta(meta)
    out.source = source
    return out


# ---------------------------------------------------------------- typed records: the one reader and writer of the keys
#
# Each record is a dataclass whose field names are meta.json's keys. `load_record` reads a JSON
# object into one (a value of the wrong type is a ValueError naming the key; keys this version does
# not know stay in `extra`, so an older or newer record is written back whole); `dump_record` writes
# one back (a None field is left out unless its metadata says NULL: written as null, or TRT_FIELD).

NULL = {"null": True}  # field metadata: written as null when None (the key is always present)
TRT_FIELD = {"with": "trt_version"}  # written (null when None) wherever the TensorRT 10/11 fields are


def _is_record(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _load_value(tp: Any, v: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        if v is None and type(None) in args:
            return None
        problem = ValueError(f"{where}: null is not allowed")
        for a in (a for a in args if a is not type(None)):
            try:
                return _load_value(a, v, where)
            except ValueError as e:
                problem = e
        raise problem
    if tp is Any:
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"{where}: {v!r} is not finite")
        return v
    if _is_record(tp):
        if not isinstance(v, dict):
            raise ValueError(f"{where}: {type(v).__name__} where an object is expected")
        return load_record(tp, v, where)
    if origin in (tuple, list):
        if not isinstance(v, list):
            raise ValueError(f"{where}: {type(v).__name__} where a list is expected")
        items = [_load_value(args[0], x, f"{where}[{i}]") for i, x in enumerate(v)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(v, dict):
            raise ValueError(f"{where}: {type(v).__name__} where an object is expected")
        return {str(k): _load_value(args[1], x, f"{where}.{k}") for k, x in v.items()}
    if tp is float:
        bad = FINITE(v)
        if bad:
            raise ValueError(f"{where}: {bad}")
        return float(v)
    if tp is int:
        bad = _number(integer=True)(v)
        if bad:
            raise ValueError(f"{where}: {bad}")
        return v
    if not isinstance(v, tp) or (tp is not bool and isinstance(v, bool)):
        raise ValueError(f"{where}: {v!r} is not {tp.__name__}")
    return v


R = typing.TypeVar("R")


def load_record(cls: type[R], data: dict[str, Any], where: str = "") -> R:
    """A typed record of a JSON object; ValueError naming the key of a value of the wrong type."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)} - {"extra"}  # type: ignore[arg-type]
    values = {k: _load_value(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items() if k in known}
    extra = {k: _load_value(Any, v, k) for k, v in data.items() if k not in known}
    return typing.cast(R, typing.cast(Any, cls)(**values, extra=extra))


def _dump_value(v: Any) -> Any:
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return dump_record(v)
    if isinstance(v, tuple):
        return [_dump_value(x) for x in v]
    if isinstance(v, dict):
        return {k: _dump_value(x) for k, x in v.items()}
    return v


def dump_record(record: Any) -> dict[str, Any]:
    """The JSON object of a record: its fields in declaration order, then the keys it kept in `extra`."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(record):
        v = getattr(record, f.name)
        if f.name == "extra":
            out.update(v)
        elif v is not None or f.metadata.get("null") or (
                "with" in f.metadata and getattr(record, f.metadata["with"]) is not None):
            out[f.name] = _dump_value(v)
    return out


@dataclass(frozen=True)
class GpuRecord:
    """The GPU a TensorRT engine was built on."""

    name: str | None = None
    compute_capability: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EngineRecord:
    """A built engine's `engine` entry: what the runtime checks before deserialising it.

    Records written before flavours existed have no `flavour` (TensorRT's) and keep the TensorRT
    10/11 fields (`trt_version`, `compute_capability`, `gpu_name`...), which newer TensorRT builds
    still write beside the common ones.
    """

    flavour: str | None = None
    library: str | None = None
    version: str | None = None
    targets: tuple[str, ...] | None = None  # RTX: compiled-for SMs; TensorRT 10/11: the build GPU's
    targets_requested: tuple[str, ...] | None = field(default=None, metadata=NULL)
    gpu: GpuRecord | None = field(default=None, metadata=NULL)
    source: str | None = None
    source_sha256: str | None = None
    profiles: dict[str, dict[str, list[int]]] | None = None  # input -> min/opt/max shape
    io: dict[str, Any] | None = None
    tf32: bool | None = None
    workspace_mib: int | None = None
    trt_version: str | None = None
    compute_capability: str | None = None
    gpu_name: str | None = None
    version_compatible: bool | None = None
    hardware_compatible: bool | None = None
    dla_core: int | None = field(default=None, metadata=TRT_FIELD)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def built_version(self) -> str:
        """The library version that built it (`trt_version` in the oldest records)."""
        return str(self.version or self.trt_version)

    @property
    def built_cc(self) -> str:
        """The compute capability it was built on (`gpu.compute_capability` in newer records)."""
        return str(self.compute_capability or (self.gpu.compute_capability if self.gpu else None))

    @property
    def built_gpu(self) -> str | None:
        """The build GPU's name (`gpu_name` in the oldest records)."""
        return self.gpu_name or (self.gpu.name if self.gpu else None)


@dataclass(frozen=True)
class CalibrationRun:
    """How an int8/fp8 graph was calibrated (a `image-qdq` file's `calibration` entry)."""

    method: str | None = None
    region: str | None = None
    count: int | None = None
    batch: int | None = None
    op_types: tuple[str, ...] | str | None = None  # the op types quantized, or "modelopt" (its default)
    images: Any = None
    classes: int | None = None
    cache: str | None = None
    seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FileRecord:
    """One `files` entry: a file of the folder, its hash and size, and what it is.

    `role` names what the file is (contract: image, text, tokenizer, external-data, engine,
    image-qdq, timing-cache, calibration cache); the other fields belong to some roles only.
    """

    role: str | None = None
    precision: str | None = None
    source: str | None = None  # the file it was made from (engines, calibrated graphs)
    source_sha256: str | None = None
    nodes: int | None = None
    fp16_audit: dict[str, Any] | None = None  # export.fp16_audit's record of an fp16 export
    engine: EngineRecord | None = None
    calibration: CalibrationRun | None = None
    qdq_pairs: int | None = None
    quantized_ops: dict[str, int] | None = None
    fp32_nodes: dict[str, Any] | None = None
    modelopt: str | None = None
    crops: int | None = None  # a calibration cache: its crop count and the images they came from
    images: Any = None
    extra: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""  # filled by Artifact.record
    bytes: int | None = None

    @classmethod
    def of(cls, data: FileRecord | Mapping[str, Any], where: str = "") -> FileRecord:
        """The record of a `files` entry (already typed, or its JSON object)."""
        return data if isinstance(data, FileRecord) else load_record(cls, dict(data), where)


@dataclass(frozen=True)
class MetaFields:
    """meta.json's fields (but `files`) as read: None where the file has none (older exports)."""

    format: str | None = None
    format_version: int | None = None
    model: str | None = None
    weights: dict[str, Any] | None = None
    attention: str | None = None
    proxy: str | None = None
    proxy_weights: dict[str, Any] | None = None
    crop: int | None = None
    fsa: bool | None = None
    hyper_parameters: dict[str, float] | None = None
    precision: str | None = None
    feedback_precision: str | None = None
    opset: int | None = None
    clip_grid: tuple[int, ...] | None = None
    grid: tuple[int, ...] | None = None
    patch: int | None = None
    width: int | None = None
    heads: int | None = None
    embed_dim: int | None = None
    logit_scale: float | None = None
    prob_thd: float | None = None
    templates: tuple[str, ...] | None = None
    context_length: int | None = None
    stages: dict[str, str] | None = None
    feedback_scope: str | None = None
    versions: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExportMeta:
    """What `fsa export` writes: every field of a fresh meta.json, in the order written."""

    model: str
    weights: dict[str, Any]
    attention: str
    proxy: str | None = field(metadata=NULL)
    proxy_weights: dict[str, Any] | None = field(metadata=NULL)
    crop: int
    fsa: bool
    hyper_parameters: dict[str, float]
    precision: str
    feedback_precision: str
    opset: int
    clip_grid: tuple[int, int]
    grid: tuple[int, int]
    patch: int
    width: int
    heads: int
    embed_dim: int
    logit_scale: float
    templates: tuple[str, ...]
    context_length: int
    stages: dict[str, str]
    feedback_scope: str
    versions: dict[str, str]
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """meta.json's object (no files yet: Artifact.record adds them)."""
        body = dump_record(self)
        head = {"format": FORMAT, "format_version": FORMAT_VERSION}
        return {**head, **body, "files": {}}


# ---------------------------------------------------------------- what meta.json records is never overwritten


def recorded_files(folder: str | os.PathLike[str]) -> set[str]:
    """meta.json and the files it lists, if `folder` is an artefact folder; else nothing."""
    path = Path(folder) / META
    if not path.is_file():
        return set()
    try:
        files = json.loads(path.read_text()).get("files", {})
    except (OSError, ValueError, AttributeError):
        files = {}
    return {META, *(files if isinstance(files, dict) else ())}


def refuse_artifact_file(path: str | os.PathLike[str], option: str) -> None:
    """FSAError if writing `path` would replace meta.json or a file it records."""
    p = Path(path).resolve() if Path(path).parent.exists() else Path(os.path.abspath(path))
    if p.name in recorded_files(p.parent):
        raise FSAError(f"{option} {path}: would overwrite {p.name} of the artefact folder {p.parent}; "
                       "choose another output")

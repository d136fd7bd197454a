"""meta.json's schema: one table, checked by Artifact.load for every reader.

Each field has a kind and a valid range. Load checks every field present (a wrong type or
range is one line naming the field) and requires FORMAT's core fields; the other fields are
required by the reader that uses them: `meta["crop"]` on a meta.json without `crop` raises a
one-line FSAError naming the field (Meta.__missing__), never a KeyError. The file itself is
strict JSON: NaN and Infinity are refused when read (and never written: runtime.gate.write_json).

The same module guards what meta.json records: no verb writes over meta.json or a file it
lists (`refuse_artifact_file`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsa_deploy.contract import META
from fsa_deploy.errors import FSAError, escape
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


def _of(kind: type[Any], what: str, item: Check | None = None, length: int | None = None) -> Check:
    def check(v: Any) -> str | None:
        if not isinstance(v, kind):
            return f"{type(v).__name__} where {what} is expected"
        if length is not None and len(v) != length:
            return f"{len(v)} entries where {length} are expected"
        if item is not None:
            for x in v.values() if isinstance(v, dict) else v:
                bad = item(x)
                if bad:
                    return bad
        return None
    return check


def _text(v: Any) -> str | None:
    return None if isinstance(v, str) and v else f"{v!r} is not a non-empty string"


def _template(v: Any) -> str | None:
    return None if isinstance(v, str) and "{}" in v else f"{v!r} is not a prompt template with {{}}"


def _file_record(v: Any) -> str | None:
    if not isinstance(v, dict):
        return f"{type(v).__name__} where a file record is expected"
    for where, src in (("source", v.get("source")), ("engine.source", (v.get("engine") or {}).get("source")
                                                      if isinstance(v.get("engine"), dict) else None)):
        if src is not None and (bad := name_problem(src)):  # a name read from a record: plain, in the folder
            return f"{where}: {bad}; refused, a name must stay inside its folder"
    sha = v.get("sha256")
    if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        return f"sha256 {sha!r} is not 64 hex digits"
    if "bytes" in v:
        return _number(0, integer=True)(v["bytes"])
    return None


def _files(v: Any) -> str | None:
    """File records, keyed by plain file names of the folder (no separators, `..`, absolute paths)."""
    if not isinstance(v, dict):
        return f"{type(v).__name__} where an object of file records is expected"
    for name, record in v.items():
        if bad := name_problem(name):
            return f"{bad}; refused, a name must stay inside its folder"
        if bad := _file_record(record):
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
    "model": Field(_text, "the CLIP model name"),
    "weights": Field(_of(dict, "an object"), "where the weights came from"),
    "attention": Field(_text, "the attention type"),
    "crop": Field(POSITIVE_INT, "the crop size in pixels (> 0)"),
    "fsa": Field(_of(bool, "true or false"), "FSA on or off"),
    "hyper_parameters": Field(_of(dict, "an object of numbers", FINITE), "finite numbers"),
    "precision": Field(_text, "the graph precision"),
    "opset": Field(POSITIVE_INT, "the ONNX opset"),
    "clip_grid": Field(_of(list, "a list", POSITIVE_INT, 2), "[h, w] > 0"),
    "grid": Field(_of(list, "a list", POSITIVE_INT, 2), "[h, w] > 0"),
    "patch": Field(POSITIVE_INT, "the patch size (> 0)"),
    "width": Field(POSITIVE_INT, "the transformer width (> 0)"),
    "heads": Field(POSITIVE_INT, "the head count (> 0)"),
    "embed_dim": Field(POSITIVE_INT, "the embedding size (> 0)"),
    "logit_scale": Field(_number(0, lo_open=True), "a finite number > 0"),
    "prob_thd": Field(_number(0, 1), "a number in [0, 1]"),
    "templates": Field(_of(list, "a list", _template), "prompt templates with {}"),
    "context_length": Field(POSITIVE_INT, "the token count (> 0)"),
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
    the file. `files` stay `Artifact.files()` (records change as build and calibrate add files).
    """

    data: Meta

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
    out = meta if isinstance(meta, Meta) else Meta(meta)
    out.source = source
    return out


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

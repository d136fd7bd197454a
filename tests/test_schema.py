"""meta.json's typed records (runtime/schema.py): the keys written are the contract's, a record
read and written back keeps every key, and a wrong type in a file or engine record refuses the
folder with one line naming meta.json. Pure Python on hand-written folders: well under a second."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from fsa_deploy.contract import FORMAT, FORMAT_VERSION, META
from fsa_deploy.errors import FSAError
from fsa_deploy.runtime.artifact import Artifact
from fsa_deploy.runtime.schema import CalibrationRun, EngineRecord, ExportMeta, FileRecord, GpuRecord, dump_record

# an engine record as `fsa build` wrote it before the records were typed (TensorRT 10/11 on a GPU)
ENGINE_FILE = {
    "role": "engine", "precision": "fp16",
    "engine": {"flavour": "trt", "library": "tensorrt", "version": "10.13.0.35", "targets": ["sm89"],
               "targets_requested": None, "gpu": {"name": "L4", "compute_capability": "8.9"},
               "source": "image.onnx", "source_sha256": "a" * 64,
               "profiles": {"image": {"min": [1, 3, 336, 336], "opt": [1, 3, 336, 336], "max": [8, 3, 336, 336]}},
               "io": {"image": {"shape": [-1, 3, 336, 336], "dtype": "FLOAT"}}, "tf32": True, "workspace_mib": 4096,
               "trt_version": "10.13.0.35", "compute_capability": "8.9", "gpu_name": "L4",
               "version_compatible": False, "hardware_compatible": False, "dla_core": None},
    "sha256": "b" * 64, "bytes": 1234,
}


def test_records_read_and_written_keep_every_key() -> None:
    rec = FileRecord.of(ENGINE_FILE)
    assert rec.engine is not None and rec.engine.built_cc == "8.9" and rec.engine.targets == ("sm89",)
    assert rec.engine.gpu == GpuRecord("L4", "8.9") and rec.engine.built_gpu == "L4"
    assert json.dumps(dump_record(rec)) == json.dumps(ENGINE_FILE)  # keys, order and values
    unknown = {**ENGINE_FILE, "added_later": [1, 2]}  # a newer writer's key: kept, not dropped
    assert dump_record(FileRecord.of(unknown))["added_later"] == [1, 2]


def test_a_fresh_engine_record_writes_the_keys_build_always_wrote() -> None:
    """engine_info's record without a GPU (TensorRT-RTX): targets_requested and gpu written as null."""
    rtx = EngineRecord(flavour="rtx", library="tensorrt_rtx", version="1.2.0.54", targets=("sm89",),
                       source="image.onnx", source_sha256="a" * 64, profiles={}, io={}, tf32=True, workspace_mib=4096)
    assert list(dump_record(rtx)) == ["flavour", "library", "version", "targets", "targets_requested", "gpu",
                                      "source", "source_sha256", "profiles", "io", "tf32", "workspace_mib"]
    calibrated = FileRecord(role="image-qdq", precision="int8", calibration=CalibrationRun(op_types="modelopt"))
    assert dump_record(calibrated) == {"role": "image-qdq", "precision": "int8",
                                       "calibration": {"op_types": "modelopt"}, "sha256": ""}


def test_export_meta_writes_the_contract_keys() -> None:
    meta = ExportMeta(model="ViT-B-16", weights={"source": "random-init", "seed": 0}, attention="proxy",
                      proxy="dino", proxy_weights=None, crop=224, fsa=True, hyper_parameters={"lamda": 3.0},
                      precision="fp32", feedback_precision="fp32", opset=18, clip_grid=(14, 14), grid=(14, 14),
                      patch=16, width=768, heads=12, embed_dim=512, logit_scale=40.0, templates=("a {}.",),
                      context_length=77, stages={"logits": "stage.logits"}, feedback_scope="feedback/",
                      versions={"python": "3.11"})
    out = meta.to_json()
    assert list(out) == ["format", "format_version", "model", "weights", "attention", "proxy", "proxy_weights",
                         "crop", "fsa", "hyper_parameters", "precision", "feedback_precision", "opset", "clip_grid",
                         "grid", "patch", "width", "heads", "embed_dim", "logit_scale", "templates",
                         "context_length", "stages", "feedback_scope", "versions", "files"]
    assert (out["format"], out["format_version"], out["proxy_weights"], out["grid"]) == (FORMAT, FORMAT_VERSION,
                                                                                       None, [14, 14])


def _folder(tmp_path: Path, record: dict) -> Path:
    (tmp_path / "x.engine").write_bytes(b"plan")
    files = {"x.engine": {**record, "sha256": hashlib.sha256(b"plan").hexdigest(), "bytes": 4}}
    (tmp_path / META).write_text(json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, "files": files}))
    return tmp_path


@pytest.mark.parametrize(("engine", "pattern"), [
    ({"targets": "sm89"}, r"engine\.targets: str where a list is expected"),
    ({"dla_core": 1.5}, r"engine\.dla_core: 1\.5 is not an integer"),
    ({"version_compatible": "yes"}, r"engine\.version_compatible: 'yes' is not bool"),
    ({"gpu": {"compute_capability": 8.9}}, r"engine\.gpu\.compute_capability: 8\.9 is not str"),
])
def test_wrong_types_in_an_engine_record_refuse_the_folder(tmp_path: Path, engine: dict, pattern: str) -> None:
    folder = _folder(tmp_path, {"role": "engine", "engine": engine})
    with pytest.raises(FSAError, match=pattern) as e:
        Artifact.load(folder)
    assert str(folder / META) in str(e.value) and "\n" not in str(e.value)


def test_an_older_engine_record_still_reads(tmp_path: Path) -> None:
    """Before flavours: no `flavour`, the TensorRT 10/11 fields only."""
    art = Artifact.load(_folder(tmp_path, {"role": "engine", "precision": "fp16",
                                           "engine": {"trt_version": "10.3.0", "compute_capability": "8.7"}}))
    engine = art.file("x.engine").engine
    assert engine is not None and (engine.flavour, engine.built_version, engine.built_cc) == (None, "10.3.0", "8.7")


@pytest.mark.parametrize(("field", "value", "pattern"), [
    ("proxy", 5, r"field proxy: 5 is not str"),
    ("proxy_weights", "dino", r"field proxy_weights: str where an object is expected"),
    ("feedback_precision", ["fp32"], r"field feedback_precision: \['fp32'\] is not str"),
])
def test_wrong_types_outside_the_field_table_refuse_the_folder(tmp_path: Path, field: str, value: object,
                                                               pattern: str) -> None:
    folder = _folder(tmp_path, {"role": "note"})
    meta = json.loads((folder / META).read_text())
    (folder / META).write_text(json.dumps({**meta, field: value}))
    with pytest.raises(FSAError, match=pattern) as e:
        Artifact.load(folder)
    assert str(e.value).startswith(str(folder / META)) and "\n" not in str(e.value)

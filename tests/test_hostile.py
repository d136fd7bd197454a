"""Regression tests for defects an outside (hostile) checker found: each the cheapest check that fails on
the defect. All in-process; no export of their own (meta.json cases use a folder holding only meta.json).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fsa_deploy.contract import FORMAT, FORMAT_VERSION, IMAGE_ONNX, META, TEXT_ONNX
from fsa_deploy.errors import FSAError
from fsa_deploy.runtime.artifact import Artifact

SHA = "0" * 64


def _meta_folder(tmp_path: Path, **fields: Any) -> Path:
    """A folder with only a meta.json: the format fields, two file records and `fields` on top."""
    meta: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "files": {IMAGE_ONNX: {"sha256": SHA, "bytes": 10, "role": "image", "precision": "fp32"},
                  TEXT_ONNX: {"sha256": SHA, "bytes": 10, "role": "text", "precision": "fp32"}},
        "model": "tiny", "precision": "fp32", "templates": ["a photo of a {}."], "context_length": 77,
    }
    for key, value in fields.items():
        if key == "files":
            for name, record in value.items():
                meta["files"][name].update(record)
        else:
            meta[key] = value
    root = tmp_path / "art"
    root.mkdir(exist_ok=True)
    (root / META).write_text(json.dumps(meta))
    return root


def test_meta_folder_of_these_tests_loads(tmp_path):
    """The baseline the cases below break one field of (else each could fail for another reason)."""
    assert Artifact.load(_meta_folder(tmp_path)).info.templates == ["a photo of a {}."]


@pytest.mark.parametrize("fields, words", [
    ({"templates": []}, ("'templates'", "empty")),
    ({"model": "../../etc/passwd"}, ("'model'", "etc/passwd", "ViT-B-16")),
    ({"format_version": "1"}, ("'format_version'", "not an integer")),
    ({"precision": "fp64"}, ("'precision'", "fp64")),
    ({"files": {TEXT_ONNX: {"role": "image"}}}, ("'files'", TEXT_ONNX, "role 'image'")),
    ({"files": {IMAGE_ONNX: {"precision": "fp64"}}}, ("'files'", IMAGE_ONNX, "precision")),
    ({"files": {IMAGE_ONNX: {"bytes": 10**18}}}, ("'files'", IMAGE_ONNX, "bytes")),
    ({"context_length": 10**9}, ("'context_length'", "1000000000")),
], ids=["templates-empty", "model-path", "version-string", "precision-fp64", "text-role-image",
        "file-precision", "bytes-huge", "context-huge"])
def test_meta_field_outside_its_values_is_one_line_naming_meta_json(tmp_path, fields, words):
    """Each field is checked against its allowed values when the folder is loaded (every reader)."""
    with pytest.raises(FSAError) as e:
        Artifact.load(_meta_folder(tmp_path, **fields))
    line = str(e.value)
    assert "\n" not in line and META in line
    for w in words:
        assert w in line, line


def test_clip_models_of_meta_json_are_the_registry_models():
    """meta.json's allowed `model` values are the models export can build (one list each, kept equal)."""
    from fsa_deploy.contract import CLIP_MODELS
    from fsa_deploy.models.registry import CLIPS

    assert tuple(CLIPS) == CLIP_MODELS


def test_segment_and_validate_refuse_empty_templates(tmp_path, run_here):
    """`"templates": []` was a traceback (np.concatenate of nothing) in segment and validate."""
    from conftest import assert_one_line_error, photos

    art = _meta_folder(tmp_path, templates=[])
    assert_one_line_error(run_here("segment", "--artifact", art, photos()[0], "--classes", "cat, dog",
                                   "--out", tmp_path / "out"), META, "'templates'")
    assert not (tmp_path / "out").exists()
    assert_one_line_error(run_here("validate", art, "--classes", "cat, dog"), META, "'templates'")


def test_bench_block_refuses_a_users_json_file(tmp_path, run_here):
    """`fsa bench --block --json F` wrote over a user's F (its write path skipped the option check)."""
    from conftest import assert_one_line_error

    user = tmp_path / "p.txt"
    user.write_text("the user's notes\n")
    argv = ("bench", "--block", "--tokens", "16", "--num-classes", "4", "--repeats", "1", "--warmup", "0",
            "--json", user)
    assert_one_line_error(run_here(*argv), "--json", "p.txt", "--overwrite")
    assert user.read_text() == "the user's notes\n"


def test_gate_refuses_a_result_over_a_foreign_file_not_checked_first(tmp_path):
    """The gate's last line: a result written without its option's check_file never replaces a user's
    file; check_file with --overwrite lets it, and a file fsa wrote is replaced on a re-run."""
    from fsa_deploy.runtime import gate

    user = tmp_path / "user.json"
    user.write_text("mine\n")
    with pytest.raises(FSAError, match="--overwrite"):
        gate.write_json(user, {"a": 1})
    assert user.read_text() == "mine\n"
    ours = tmp_path / "ours.json"
    gate.write_json(ours, {"a": 1})
    gate.write_json(ours, {"a": 2})  # ours (its manifest): a re-run replaces it
    assert json.loads(ours.read_text()) == {"a": 2}
    gate.check_file(user, "--json", overwrite=True)
    gate.write_json(user, {"a": 3})
    assert json.loads(user.read_text()) == {"a": 3}


def test_calibration_cache_with_nan_is_refused_naming_it(tmp_path):
    """A calibration-*.npz of NaN whose hash meta.json records passed with --method max (scales 448/127)."""
    import numpy as np

    from fsa_deploy.calibration.data import load_cached
    from fsa_deploy.contract import Role

    art = Artifact.load(_meta_folder(tmp_path))
    name = "calibration-0123456789abcdef.npz"
    crops = np.full((2, 3, 64, 64), np.nan, np.float32)
    np.savez(art.root / name, crops=crops, text_embeddings=np.ones((2, 8), np.float32), images=np.array(["a.png"]))
    art.record(name, role=Role.CALIBRATION_CACHE)
    with pytest.raises(FSAError, match=rf"{name}: array 'crops' holds non-finite values"):
        load_cached(art, name)
    np.savez(art.root / name, crops=np.zeros_like(crops), text_embeddings=np.ones((2, 8), np.float32),
             images=np.array(["a.png"]))
    art.record(name, role=Role.CALIBRATION_CACHE)
    assert load_cached(art, name).crops.shape == (2, 3, 64, 64)  # finite: the cache serves


def test_help_says_what_options_do(run_here):
    """segment --help said --prob-thd pixels become class 0 (they are label 255); serve --help and the
    --log-file refusal disagreed on what --overwrite does (tritonserver appends to the log)."""
    seg = run_here("segment", "--help")
    assert seg.returncode == 0 and "class 0 (default" not in seg.stdout
    assert "label 255" in " ".join(seg.stdout.split())
    serve = run_here("serve", "--help")
    assert serve.returncode == 0 and "append to a --log-file" in " ".join(serve.stdout.split())


def test_log_file_refusal_says_overwrite_appends(tmp_path):
    from fsa_deploy.runtime import gate

    log = tmp_path / "server.log"
    log.write_text("a user's log\n")
    with pytest.raises(FSAError, match="pass --overwrite to append to it"):
        gate.check_file(log, "--log-file", action="append to")


def test_proxy_crop_not_a_multiple_names_the_patch_size():
    """`--crop 64 --proxy tiny-dinov2`: the line said 'not a multiple of its patch' without the size (14)."""
    from fsa_deploy.models.proxies import create_proxy

    with pytest.raises(FSAError, match=r"--crop 64: the tiny-dinov2 proxy's input 64 is not a multiple of its patch "
                                       r"size 14"):
        create_proxy("tiny-dinov2", 64, None)  # type: ignore[arg-type]  # refused before the weights are used


def test_checkpoint_folder_is_named_a_folder(tmp_path):
    """`--checkpoint imgs` (a folder) said 'no such file'."""
    from fsa_deploy.models.weights import read_state_file

    with pytest.raises(FSAError, match="--checkpoint .*: is a folder, not a checkpoint file"):
        read_state_file(str(tmp_path), "--checkpoint")


@pytest.mark.parametrize("name, words", [("nonexistent.png", ("no such file",)),
                                         ("notes.png", ("not an image Pillow can read",))])
def test_export_fp16_refuses_bad_images_before_any_work(tmp_path, run_here, name, words):
    """`fsa export --precision fp16 --images BAD` was refused only after the model was built and exported."""
    from conftest import assert_one_line_error

    (tmp_path / "notes.png").write_text("not a picture")
    out = tmp_path / "art"
    proc = run_here("export", "--model", "tiny", "--random-init", "--crop", "64", "--proxy", "tiny-dino",
                    "--precision", "fp16", "--images", tmp_path / name, "--out", out, "-q")
    assert_one_line_error(proc, "--images", name, *words)
    assert not out.exists()


def test_served_protocol_errors_name_the_input_not_a_cli_flag(monkeypatch):
    """fsa_segment replied `--prob-thd 2.0: ...` / `--stride 0: ...` (CLI flags) to PROB_THD / STRIDE.
    The python model's check path in-process: Triton's python-backend utils module is given just the
    one call the check makes (the server round trip is test_eval's test_served_protocol_inputs_are_checked)."""
    import sys
    import types

    import numpy as np

    from fsa_deploy.contract import IN_PROB_THD, IN_SHORT_SIDE, IN_STRIDE
    from fsa_deploy.runtime.segmenter import protocol_problems

    utils = types.ModuleType("triton_python_backend_utils")
    utils.get_input_tensor_by_name = lambda request, name: request.get(name)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", utils)
    monkeypatch.delitem(sys.modules, "fsa_deploy.runtime.serve.models.segment_model", raising=False)
    from fsa_deploy.runtime.serve.models.segment_model import TritonPythonModel

    model = TritonPythonModel()
    model.FSAError, model.protocol_problems = FSAError, protocol_problems
    model.protocol_names = (IN_SHORT_SIDE, IN_STRIDE, IN_PROB_THD)
    seg = types.SimpleNamespace(crop=64)

    class Tensor:
        def __init__(self, v):
            self.v = v

        def as_numpy(self):
            return np.array([self.v])

    for name, value, words in ((IN_PROB_THD, np.float32(2.0), "input PROB_THD: 2.0: must be between 0 and 1"),
                               (IN_STRIDE, np.int32(0), "input STRIDE: 0: must be between 1 and the crop size 64")):
        with pytest.raises(FSAError) as e:
            model._with_protocol(seg, {name: Tensor(value)})
        assert str(e.value) == words


# ---- signals inside native code: recorded there, raised once the native call has returned


def test_signal_during_the_modelopt_import_is_raised_after_it(monkeypatch):
    """SIGINT while `fsa calibrate` imported ModelOpt (lief, a nanobind module, runs Python import hooks)
    aborted the process (SIGABRT: the handler's exception crossed C++ frames). The import now runs under
    interrupts.native(): the signal, delivered here during the import, surfaces after it as Interrupted."""
    import os
    import signal
    import sys
    import types

    from fsa_deploy import interrupts
    from fsa_deploy.calibration.modelopt_call import require_modelopt

    finished = []

    def attribute(name: str):  # the import's work, in Python, as lief's hooks are: the signal lands in it
        os.kill(os.getpid(), signal.SIGINT)
        total = sum(range(10_000))  # bytecode after the signal: a raising handler would have run by now
        finished.append(total)
        return lambda *a, **k: None

    module = types.ModuleType("modelopt.onnx.quantization")
    module.__getattr__ = attribute  # type: ignore[method-assign]
    monkeypatch.setitem(sys.modules, "modelopt.onnx.quantization", module)
    with interrupts.handling():
        with pytest.raises(interrupts.Interrupted) as e:
            require_modelopt()
        assert finished and e.value.exit_code == 130


def test_tensorrt_callbacks_never_raise_and_a_signal_stops_the_build():
    """SIGINT during `fsa build` printed TensorRT's `Exception caught in log()` and five frames before the
    one line: the logger callback raised. It now swallows it (the signal stays recorded), and the build's
    progress monitor asks TensorRT to stop at its next step."""
    import os
    import signal

    from fsa_deploy import interrupts
    from fsa_deploy.export.trt_build import stop_on_signal
    from fsa_deploy.runtime.backends.trt_lib import RTX, installed, load, logger

    if installed(RTX) is None:
        pytest.skip("TensorRT-RTX not installed (make setup installs it)")
    lib = load(RTX)
    log, monitor = logger(RTX), stop_on_signal(lib)

    class Severity:
        @property
        def name(self) -> str:
            os.kill(os.getpid(), signal.SIGINT)  # the signal lands inside the callback
            return "VERBOSE" if sum(range(10_000)) else ""

    assert monitor.step_complete("build", 0) is True
    with interrupts.handling(), pytest.raises(interrupts.Interrupted), interrupts.native():
        log.log(Severity(), "a line")  # returns: nothing raised into TensorRT
        assert interrupts.received() == signal.SIGINT
        assert monitor.step_complete("build", 1) is False

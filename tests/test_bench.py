"""`fsa bench`: one tiny run over the session's tiny export (every row, every output file, the
speedups), the --min-agreement gate, one-line errors, and the work counting behind the floor.

The run benches the `tiny_artifact` fixture with --artifact, so the test itself exports
nothing (int8 is calibrated into bench's work folder when ModelOpt is installed).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, assert_one_line_error, required, tiny_reference

from fsa_deploy.errors import CheckFailed
from fsa_deploy.validation.bench import data as B
from fsa_deploy.validation.bench.cli import run_block
from fsa_deploy.validation.bench.flops import PARTS, Rates, count_work, floor_ms
from fsa_deploy.validation.bench.plan import Machine, plan_rows
from fsa_deploy.validation.bench.report import gate

HAVE_MODELOPT = importlib.util.find_spec("modelopt") is not None
CPU_ROWS = ("PyTorch literal fp32 cpu", "PyTorch deploy fp32 cpu", "ONNX Runtime fp32 cpu", "ONNX Runtime fp16 cpu",
            "ONNX Runtime int8 cpu")


def bench(cache: Path, *args: str | Path) -> subprocess.CompletedProcess:
    """`fsa bench` in a subprocess, class embeddings cached under `cache`."""
    env = dict(os.environ, FSA_CACHE_DIR=str(cache))
    return subprocess.run([sys.executable, "-m", "fsa_deploy", "bench", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("text-cache")


@pytest.fixture(scope="module")
def run(tiny_artifact, cache, tmp_path_factory):
    """One bench of the tiny export, all three outputs written; threads 1 (two shared cores)."""
    out = tmp_path_factory.mktemp("bench")
    files = {"json": out / "bench.json", "md": out / "bench.md", "plot": out / "bench.png"}
    proc = bench(cache, "--artifact", tiny_artifact.root, "--json", files["json"], "--md", files["md"],
                          "--plot", files["plot"], "--repeats", "2", "--threads", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, files


def test_every_row_in_every_output(run):
    proc, files = run
    umask = os.umask(0)
    os.umask(umask)
    for f in files.values():  # written under a temporary name, then renamed: as readable as any other file
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask, (f.name, oct(f.stat().st_mode))
    report = json.loads(files["json"].read_text())
    names = [r["name"] for r in report["rows"]]
    for name in CPU_ROWS:
        assert name in names, f"{name} missing from {names}"
    assert any(n.startswith("TensorRT") for n in names), names
    if not torch.cuda.is_available():
        assert any(n.endswith("cuda") and n.startswith("PyTorch") for n in names), names
    md, table = files["md"].read_text(), proc.stdout
    for name in names:
        assert name in md and name in table, f"{name} not in the Markdown or the terminal table"
    assert files["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", "--plot did not write a PNG"


def test_rows_say_why_or_carry_numbers(run):
    rows = {r["name"]: r for r in json.loads(run[1]["json"].read_text())["rows"]}
    for name, r in rows.items():
        assert "speedup" in r, name
        if r["status"] in ("ok", "failed validation"):
            assert r["speedup"] and r["speedup"] > 0, name
            if name != "PyTorch deploy fp32 cpu":  # validate's reference: measured against, not measured
                assert 0 <= r["pixel_agreement"] <= 1 and 0 <= r["miou"] <= 1, name
            assert r["crop_ms"]["median"] > 0 and r["crop_ms"]["p90"] >= r["crop_ms"]["median"], name
            assert r["crops_per_s"] > 0 and r["peak_rss_mib"] > 0 and r["size_mib"] > 0, name
            assert r["x_floor"] > 0, name
        else:
            assert r["reason"], f"{name}: status {r['status']} without a reason"
    base = rows["PyTorch literal fp32 cpu"]
    for name, r in rows.items():  # each speedup is the baseline's latency over the row's own
        if r["crop_ms"]:
            assert r["speedup"] == pytest.approx(base["crop_ms"]["median"] / r["crop_ms"]["median"]), name
            assert r["speedup_image"] == pytest.approx(base["image_ms"]["median"] / r["image_ms"]["median"]), name
    ref = rows["PyTorch deploy fp32 cpu"]
    assert ref["status"] == "ok" and ref["pixel_agreement"] is None and "reference" in ref["note"]
    # the official formulation against the deploy one, under the fp32 profile: a real comparison
    assert base["status"] == "ok" and base["profile"] == "fp32", base["reason"]
    assert base["pixel_agreement"] >= 0.99 and base["logits_rel_l2"] < 1e-3, base
    assert rows["ONNX Runtime fp32 cpu"]["status"] == "ok", rows["ONNX Runtime fp32 cpu"]["reason"]
    assert rows["ONNX Runtime fp16 cpu"]["status"] == "skipped"  # the fixture is an fp32 export
    assert "fsa export --precision fp16" in rows["ONNX Runtime fp16 cpu"]["reason"]
    int8 = rows["ONNX Runtime int8 cpu"]
    if HAVE_MODELOPT or required():  # under make test a missing ModelOpt (quant extra) fails here
        assert int8["status"] in ("ok", "failed validation"), int8["reason"]
    else:
        assert int8["status"] == "missing" and "ModelOpt" in int8["reason"]


def test_report_names_the_machine_and_the_work(run):
    report = json.loads(run[1]["json"].read_text())
    m = report["machine"]
    assert m["cpu"] and m["cores"] >= 1 and m["torch_threads"] == 1 and m["platform"]
    assert all(report["work"][p]["flops"] > 0 for p in PARTS)
    assert report["rates"]["cpu"]["matmul_flops"]["fp32"] > 0 and report["floors_ms"]["cpu"]["fp32"] > 0
    assert report["baselines"]["cpu"] == "PyTorch literal fp32 cpu"


def test_min_agreement_gate_exits_1(tiny_artifact, cache, tmp_path):
    proc = bench(cache, "--artifact", tiny_artifact.root, "--only", "literal fp32 cpu", "--repeats", "1",
                 "--warmup", "0", "--threads", "1", "--min-agreement", "1.01", "--json", tmp_path / "b.json")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "PyTorch literal fp32 cpu" in proc.stderr.strip().splitlines()[-1]
    assert [r["name"] for r in json.loads((tmp_path / "b.json").read_text())["rows"]] == ["PyTorch literal fp32 cpu"]


def test_bad_option_exits_2_with_one_line(cache):
    proc = bench(cache, "--repeats", "0")
    assert_one_line_error(proc, "--repeats")


@pytest.mark.parametrize("args, needle", [
    (("--warmup", "-1"), "--warmup"),
    (("--tokens", "64"), "--tokens"),
    (("--block", "--tokens", "64"), "--num-classes K"),
    (("--num-classes", "3"), "--num-classes: only with --block"),
    (("--block", "--tokens", "64", "--classes", "3", "--num-classes", "3"), "--num-classes K only"),
    (("--block", "--tokens", "64", "--classes", "cat"), "--classes"),
    (("--artifact", "/nonexistent/folder"), "/nonexistent/folder"),
    (("--model", "no-such-model"), "no-such-model"),
    (("--model", "tiny", "--proxy", "tiny-dino", "--crop", "112", "--only", "no-such-row"), "no-such-row"),
])
def test_bad_options_are_one_line_errors(capsys, args, needle):
    from fsa_deploy import cli as fsa_cli

    assert fsa_cli.main(["bench", *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], lines


def test_model_options_conflict_with_artifact(tiny_artifact, capsys):
    from fsa_deploy import cli as fsa_cli

    assert fsa_cli.main(["bench", "--artifact", str(tiny_artifact.root), "--crop", "224"]) == 2
    err = capsys.readouterr().err
    assert "--crop" in err and "--artifact" in err


@pytest.mark.parametrize("classes, num_classes, deprecated", [(None, 3, False), ("3", None, True)])
def test_block_takes_the_class_count(monkeypatch, capsys, classes, num_classes, deprecated):
    """--num-classes K; the old --block --classes K still works, with one deprecation line."""
    from fsa_deploy import log

    log.configure()  # as the CLI does: without it the line goes to pytest's log capture, not stderr
    seen = {}
    monkeypatch.setattr("fsa_deploy.validation.bench.block.main_block", lambda ns: seen.setdefault("ns", ns) and 0)
    run_block(argparse.Namespace(tokens=16, classes=classes, num_classes=num_classes, device=None, repeats=3,
                                 json=None))
    assert (seen["ns"].classes, seen["ns"].device, seen["ns"].tokens) == (3, "cpu", 16)
    err = capsys.readouterr().err
    assert ("--classes K is deprecated, use --num-classes K" in err) is deprecated, err


def test_block_child_times_both_formulations(tmp_path):
    """bench --block's child (run in process here): timings, a peak, and logits that agree across
    the two formulations."""
    from fsa_deploy.validation.bench.block import run_one

    res = {}
    for form in ("literal", "deploy"):
        run_one(form, 16, 3, "cpu", 2, str(tmp_path / f"{form}.pt"))
        res[form] = torch.load(tmp_path / f"{form}.pt")
        assert res[form]["ms"] > 0 and res[form]["logits"].shape[-1] == 3, res[form]
    assert torch.allclose(res["literal"]["logits"], res["deploy"]["logits"], atol=1e-4)


# ---------------------------------------------------------------- in process: work, floor, rows, gate


def test_work_parts_add_up_and_floor_follows_the_rates():
    model = tiny_reference().model
    text = torch.nn.functional.normalize(torch.randn(5, model.embed_dim), dim=-1)
    work = count_work(model, model.cfg.crop, text)
    assert set(work) == set(PARTS) and all(w.flops > 0 and w.param_bytes > 0 for w in work.values())
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    assert sum(w.param_bytes for w in work.values()) == params
    slow = Rates("cpu", {"fp32": 1e9}, 1e9)
    fast = Rates("cuda", {"fp32": 1e9, "fp16": 4e9}, 4e9)
    assert floor_ms(work, fast, "fp16") < floor_ms(work, fast, "fp32") <= floor_ms(work, slow, "fp32")
    assert fast.matmul("int8") == (4e9, "fp16") and slow.matmul("fp16") == (1e9, "fp32")  # nearest measured


def test_rows_of_a_bare_machine_say_what_is_missing():
    machine = Machine(cuda=False, ort_providers=("CPUExecutionProvider",), ort_missing=None,
                        trt_missing="TensorRT is not installed", modelopt_missing="NVIDIA ModelOpt is not installed")
    graphs = {"fp32": B.Source("/a", "image.onnx"), "fp16": B.Source(status=B.SKIPPED, why="no fp16 export"),
              "int8": B.Source(status=B.MISSING, why=machine.modelopt_missing)}
    opts = B.BenchOptions(spec=None, artifacts=(), work=None, images=(), vocab=None)
    rows = {r.name: r for r in plan_rows(opts, machine, graphs, {})}
    assert [n for n, r in rows.items() if r.runs] == ["PyTorch literal fp32 cpu", "PyTorch deploy fp32 cpu",
                                                      "ONNX Runtime fp32 cpu"]
    assert rows["ONNX Runtime int8 cpu"].why == "NVIDIA ModelOpt is not installed"
    assert rows["TensorRT fp32/fp16/int8 cuda"].status == B.MISSING
    only = plan_rows(B.BenchOptions(None, (), None, (), None, only=("onnx",)), machine, graphs, {})
    assert all("ONNX" in r.name for r in only)


def test_gate_counts_measured_rows_only():
    def result(name: str, agreement: float | None) -> B.BenchResult:
        fid = None if agreement is None else B.Fidelity("fp32", True, agreement, 1.0, 0.0, [], "x")
        lat = B.Latency.of([1.0, 2.0])
        m = B.Measured("x", 1.0, lat, lat, 1, 1.0, 1.0, 0.5, None, None, fid)
        return B.BenchResult(B.BenchRow(name, "fp32", "cpu"), B.OK, measured=m)

    rows = [result("a", 1.0), result("b", 0.98), B.BenchResult(B.BenchRow("c", "fp32", "cpu"), B.MISSING, "why")]
    gate(rows, 0.98)
    with pytest.raises(CheckFailed, match="b fp32 cpu"):
        gate(rows, 0.99)
    lat = B.Latency.of([3.0, 1.0, 2.0])
    assert (lat.median, lat.min, lat.max, lat.spread) == (2.0, 1.0, 3.0, 1.0)

"""`make gpu-check`'s flow without a GPU (`GPU_CHECK_DRY_RUN=1 tools/gpu_check.sh`, docs/ENGINES.md).

The dry run's precision step is validation/gpu_precision.py with `--device cpu --sizes tiny`; here it runs in-process
on the tiny plain case, one photo, emulating the session's shared tiny fp32 export (no export of its own). What must
hold on the CPU: the fp32 rerun is exactly the reference (the comparison's floor), the fp16 paths (true half, the
export's split, autocast) and both emulation models give finite per-stage figures at fp16 scale that keep the fp16
profile's pixels, and the report carries them. The script itself runs with a budget too small for any step, so its
report and skip lines are checked without a model. Cost: ~6 s (1 s of it the refusal) on top of the shared export.
"""

from __future__ import annotations

import json
import math
import os
import subprocess

import pytest
from conftest import photo_crops, tiny_reference, unit_text

from fsa_deploy.contract import IMAGE_ONNX
from fsa_deploy.errors import FSAError
from fsa_deploy.validation import gpu_precision as G
from fsa_deploy.validation.fp16_emulate import PRECISION_MODELS

FP16_PIXELS = 0.999  # the fp16 profile (fsa validate)


def test_precision_flow_on_cpu(tiny_export, tmp_path, capfd):
    graph = tiny_export() / IMAGE_ONNX
    js, md = tmp_path / "precision-cpu.json", tmp_path / "precision-cpu.md"
    rc = G.main(["--device", "cpu", "--sizes", "tiny", "--weights", "plain", "--photos", "1",
                 "--fp32-graph", str(graph), "--json", str(js), "--md", str(md)])
    assert rc == 0, capfd.readouterr().err
    (row,) = json.loads(js.read_text())["rows"]
    assert (row["size"], row["weights"], row["device"]) == ("tiny", "plain", "cpu")

    control = row[G.CONTROL]
    stages = set(control["stages"])
    assert "logits" in stages and len(stages) >= 5, stages
    assert all(v == {"rel_l2": 0.0, "nonfinite": 0} for v in control["stages"].values()), control
    assert (control["pixels"], control["nonfinite_logits"]) == (1.0, 0)

    for mode in G.MODES:
        c = row[mode]
        assert set(c["stages"]) == stages, mode
        for name, v in c["stages"].items():
            assert v["nonfinite"] == 0 and math.isfinite(v["rel_l2"]), (mode, name, v)
            assert v["rel_l2"] < 0.1, (mode, name, v)  # fp16 rounding through the model, no overflow
        assert c["stages"]["logits"]["rel_l2"] > 1e-4, mode  # it did run in fp16 (unit roundoff 4.9e-4)
        assert c["pixels"] >= FP16_PIXELS and c["nonfinite_logits"] == 0, (mode, c["pixels"])
    # the export's split keeps the last block, the feedback and the tail in fp32: nearer fp32 than true half
    assert row["split"]["stages"]["logits"]["rel_l2"] < row["half"]["stages"]["logits"]["rel_l2"]

    e = row["emulation"]
    assert 0 <= e["graph_rel_l2"] < G.GRAPH_MATCH  # the shared export is this model's graph
    for m in PRECISION_MODELS:
        assert e[m]["nonfinite"] == 0 and e[m]["vs_fp32"] >= FP16_PIXELS and e[m]["vs_device_half"] >= FP16_PIXELS

    text = md.read_text()
    assert text.startswith("| case | device | fp32 rerun: worst stage rel L2 |")
    assert "| tiny plain | cpu | 0.00e+00 | 100.00% / " in text
    assert f"(fp32 graph {e['graph_rel_l2']:.1e})" in text


def test_emulation_refuses_another_models_graph(tiny_export):
    """The prediction must be of the model measured: the FSA graph against the same weights without FSA is refused."""
    ref = tiny_reference("proxy", "tiny-dino", False)  # conftest's cached reference, built by the export tests too
    image, text = photo_crops(1), unit_text(5)
    logits = G.forward(ref.model, image, text)["logits"]
    with pytest.raises(FSAError, match="not this model's graph") as err:
        G.emulation(ref, image, text, logits, logits, tiny_export() / IMAGE_ONNX)
    assert IMAGE_ONNX in str(err.value)


def test_gpu_check_script_dry_run_report(repo, tmp_path):
    """The script's own dry-run branch: with no budget left every step is skipped with its reason, no GPU asked."""
    env = dict(os.environ, GPU_CHECK_DRY_RUN="1", GPU_CHECK_OUT=str(tmp_path), GPU_CHECK_BUDGET="5")
    proc = subprocess.run(["bash", str(repo / "tools" / "gpu_check.sh")], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("### GPU check dry run (CPU)")
    assert "- skipped precision: PyTorch cpu half / split / autocast vs fp32 (tiny): out of the 5 s budget" in report
    assert "- skipped pytest -m 'gpu or tensorrt', fsa build / validate --backend trt, bench CUDA rows: dry run" \
        in report
    assert not (tmp_path / "precision-cpu.json").exists()

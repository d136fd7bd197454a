"""`make bench-envelope`'s smoke: two points of the --real-stats-scale sweep, fp16 only, on one photo.

Scale 1 (the published magnitudes): the fp16 export (policy + measured islands) passes `fsa validate`'s fp16
profile; scale 1e37: the planted gains pass float32's range, the fp32 graph is not
finite on the calibration crops and the fp16 export is refused with one line naming the tensor. About 30 s of CPU.
"""

from __future__ import annotations

import json

from benchmarks import precision_envelope as envelope


def test_envelope_two_points(tmp_path):
    from fsa_deploy.runtime.images import sample_photos

    argv = ["--scales", "1,1e37", "--kinds", "fp16", "--photos", "1", "--no-emulation",
            "--work", str(tmp_path / "work"), "--json", str(tmp_path / "e.json"), "--md", str(tmp_path / "e.md")]
    assert envelope.main(argv) == 0
    rows = json.loads((tmp_path / "e.json").read_text())["rows"]
    assert [r["scale"] for r in rows] == [1.0, 1e37]
    ok = rows[0]["fp16"]
    assert ok["passed"] and ok["pixels"] >= 0.999 and ok["nonfinite"] == 0, ok
    assert "emulated" not in ok  # the bench's emulation columns: make bench-envelope
    refused = rows[1]["fp16"]
    assert not refused["passed"] and "is NaN or inf in fp32 on calibration crop" in refused["refused"], refused
    assert sample_photos()[0] in refused["refused"] and "\n" not in refused["refused"]
    table = (tmp_path / "e.md").read_text()
    assert "| 1 |" in table and "refused (fp32 not finite)" in table

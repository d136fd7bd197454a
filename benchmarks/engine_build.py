"""`make bench-build`: full-size TensorRT-RTX builds on this machine (no GPU needed): time, size, peak RSS.

python -m benchmarks.engine_build --work out/bench-build [--calibration-count N] [--json F] [--md F]

Exports ViT-B-16 + DINO ViT-B/8 at 336 (random init; weights do not change build cost) in fp32 and
fp16 once into --work, then runs each `fsa build --engine rtx` in its own process so that its peak
RSS is its own (os.wait4). int8 needs `fsa calibrate` of the full-size graph first (ModelOpt on the
CPU: slow); it runs only with --calibration-count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fsa_deploy.cli import OneLineParser
from fsa_deploy.contract import EXPORT_PRECISIONS
from fsa_deploy.ranges import add_ranged
from fsa_deploy.runtime import gate
from fsa_deploy.spellings import add_old_spellings

FSA = [sys.executable, "-m", "fsa_deploy"]
BUILT = re.compile(r"^(\S+\.engine): ([\d.]+) MiB from (\S+) in ([\d.]+) s", re.M)


def run(argv: list[str], log: Path) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB of that process, its stdout); a failure stops the bench with its log."""
    t0 = time.perf_counter()
    with gate.open_append(log) as f:
        f.write(f"$ {' '.join(argv)}\n")
        f.flush()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=f, text=True)
        assert proc.stdout is not None
        out = proc.stdout.read()
        f.write(out)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.exit(f"bench-build: {' '.join(argv[3:])} failed (exit {proc.returncode}); see {log}")
    return time.perf_counter() - t0, usage.ru_maxrss / 1024, out


def export(folder: Path, precision: str, log: Path) -> float | None:
    if (folder / "meta.json").is_file():
        return None
    seconds, _, _ = run([*FSA, "export", "--random-init", "--out", str(folder), "--precision", precision,
                         "--model", "ViT-B-16", "--proxy", "dino", "--crop", "336", "--quiet", "--overwrite"], log)
    return seconds


def build(folder: Path, args: list[str], log: Path) -> list[dict[str, Any]]:
    wall, rss, out = run([*FSA, "build", str(folder), "--engine", "rtx", *args], log)
    rows = []
    for engine, mib, source, seconds in BUILT.findall(out):
        rows.append({"engine": engine, "source": source, "build_s": float(seconds), "engine_mib": float(mib),
                     "process_wall_s": round(wall, 1), "peak_rss_mib": round(rss)})
    return rows


def markdown(report: dict[str, Any]) -> str:
    lines = [f"TensorRT-RTX {report['tensorrt_rtx']} on {report['machine']} (no GPU), ViT-B-16 + DINO B/8, crop 336, "
             "default targets, profile B 1..8, K 1..256, T 1..256:", "",
             "| engine | source | build s | engine MiB | peak RSS MiB (process) |", "|---|---|---|---|---|"]
    for r in report["builds"]:
        lines.append(f"| {r['engine']} | {r['source']} | {r['build_s']:.1f} | {r['engine_mib']:.0f} | "
                     f"{r['peak_rss_mib']} |")
    lines += [""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("out/bench-build"))
    add_ranged(p, "--calibration-count", "also calibrate int8 from N crops and build it")
    p.add_argument("--json", type=Path)
    p.add_argument("--md", type=Path)
    add_old_spellings(p, "bench-build")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import tensorrt_rtx

    gate.check_folder(args.work, "--work")
    log = args.work / "bench-build.log"
    notes, builds = [], []
    for precision in EXPORT_PRECISIONS:
        seconds = export(args.work / precision, precision, log)
        if seconds is not None:
            notes.append(f"export {precision}: {seconds:.0f} s")
    builds += build(args.work / "fp32", [], log)  # image fp32 + text
    builds += build(args.work / "fp16", ["--no-text"], log)
    if args.calibration_count:
        wall, rss, _ = run([*FSA, "calibrate", str(args.work / "fp32"), "--precision", "int8",
                            "--calibration-count", str(args.calibration_count), "--quiet"], log)
        notes.append(f"fsa calibrate --precision int8 --calibration-count {args.calibration_count}: {wall:.0f} s, "
                     f"peak RSS {rss:.0f} MiB")
        builds += build(args.work / "fp32", ["--no-text", "--precision", "int8"], log)
    else:
        notes.append("int8: not built (a full-size `fsa calibrate` on the CPU is slow; pass --calibration-count)")
    report = {"tensorrt_rtx": tensorrt_rtx.__version__, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "builds": builds, "notes": notes}
    text = markdown(report)
    print(text)
    for path, body in ((args.json, json.dumps(report, indent=2) + "\n"), (args.md, text)):
        if path:
            gate.write_text(path, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())

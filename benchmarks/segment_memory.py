"""Peak memory of `fsa segment`'s pipeline against the class count and the photo size.

Each case runs in a fresh Python process (the Python API the CLI uses: load, segment, save the
three files) on a tiny export with ONNX Runtime on the CPU, and reports its own peak resident
set (ru_maxrss), so no case inherits another's high-water mark. The photo is scikit-image's
chelsea.png, upscaled (bicubic) to each size.

    python -m benchmarks.segment_memory --json out/bench/memory.json     (make bench-memory)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from fsa_deploy.cli import OneLineParser
from fsa_deploy.export.tiny import tiny_artifact
from fsa_deploy.ranges import add_ranged
from fsa_deploy.runtime import gate
from fsa_deploy.runtime.images import encode, sample_photos
from fsa_deploy.runtime.segmenter import Segmenter

SIZES = {"3000x2250": (3000, 2250), "12MP 4000x3000": (4000, 3000)}  # width x height
CASES = [("3000x2250", 3), ("3000x2250", 171), ("12MP 4000x3000", 3), ("12MP 4000x3000", 171)]


def class_names(k: int) -> str:
    """k distinct class names (their words do not matter for memory; K does)."""
    words = ("cat", "floor", "blanket", "sky", "wall", "tree", "road", "grass", "person", "car", "table", "lamp")
    return ", ".join(f"{words[i % len(words)]} {i}" for i in range(k))


def one(art: str, image: str, k: int, threads: int) -> dict:
    """Runs in the child: one segmentation and its outputs; returns its own figures."""
    t0 = time.perf_counter()
    seg = Segmenter.from_artifact(art, "onnx", threads=threads, cache_dir=None).set_classes(class_names(k))
    res = seg.segment(image)

    with gate.temp_dir() as out:
        res.write(out, "photo")
    return {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "seconds": time.perf_counter() - t0, "timings_ms": res.timings, "torch_loaded": "torch" in sys.modules}


def prepare(work: Path) -> tuple[Path, dict[str, Path]]:
    """The tiny artefact (exported once) and the upscaled photos."""
    gate.check_folder(work, "--work")
    art = tiny_artifact(work / "tiny-dino")
    chelsea = next(p for p in sample_photos() if Path(p).name == "chelsea.png")
    photos = {}
    for name, size in SIZES.items():
        path = work / f"chelsea_{size[0]}x{size[1]}.png"
        if not path.is_file():
            with Image.open(chelsea) as img:  # kept between runs: whole or absent
                gate.write_bytes(path, encode(img.convert("RGB").resize(size, Image.Resampling.BICUBIC)))
        photos[name] = path
    return art, photos


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="out/bench/memory", help="artefact and photos (default out/bench/memory)")
    p.add_argument("--json", default="out/bench/memory.json")
    add_ranged(p, "--threads", "ONNX Runtime threads (default all cores)", default=None)
    p.add_argument("--one", nargs=3, metavar=("ARTIFACT", "IMAGE", "K"), help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one[0], args.one[1], int(args.one[2]), args.threads)))
        return 0
    art, photos = prepare(Path(args.work))
    rows = []
    for size, k in CASES:
        cmd = [sys.executable, "-m", __spec__.name, "--one", str(art), str(photos[size]), str(k)]
        if args.threads is not None:
            cmd += ["--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            return 1
        row = {"photo": size, "classes": k, **json.loads(proc.stdout.strip().splitlines()[-1])}
        rows.append(row)
        ms = row["timings_ms"]
        print(f"{size:>16} {k:>4} classes: peak RSS {row['peak_rss_mib']:7.0f} MiB, {row['seconds']:6.1f} s "
              f"(forward {ms['forward'] / 1e3:.1f} s, post {ms['postprocess'] / 1e3:.1f} s)", flush=True)
    report = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "python": platform.python_version()},
              "command": "make bench-memory", "rows": rows}
    for size in SIZES:
        peak = {r["classes"]: r["peak_rss_mib"] for r in rows if r["photo"] == size}
        few, many = peak[3], peak[171]
        report[f"ratio 171/3 {size}"] = round(many / few, 3)
        print(f"{size}: 171 / 3 classes = {many / few:.2f}x")

    gate.mkdir(Path(args.json).parent)
    gate.write_text(args.json, json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

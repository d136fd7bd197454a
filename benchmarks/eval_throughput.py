"""`make bench-eval`: `fsa eval` against `fsa segment` on the same images, artefact and backend.

A folder dataset of N images (the scikit-image photos, resized and flipped into N distinct images,
masks drawn) is generated once; then, alternating in the same run, `fsa segment` (ONNX Runtime,
the dataset's classes) and `fsa eval folder` on it, each a whole command, wall clock, best of the
rounds. Eval decodes the next image in a thread while the backend runs; segment writes three files
per image that eval does not, so eval should not be slower. With `--reference`, the eval row of the
PyTorch reference beside ONNX Runtime's (mIoU delta, pixel agreement) on the same dataset.

python -m benchmarks.eval_throughput [--artifact DIR] [--num-images 50] [--rounds 2] [--reference]
    [--json F] [--md F]
Without --artifact, the tests' tiny random-init model (crop 112) is exported to out/bench/serve-art once.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from fsa_deploy.cli import OneLineParser
from fsa_deploy.export.tiny import tiny_artifact
from fsa_deploy.ranges import add_ranged
from fsa_deploy.runtime import gate
from fsa_deploy.runtime.images import encode, sample_photos
from fsa_deploy.spellings import add_old_spellings

CLASSES = "background; sky\ncat; kitty\nperson\nrocket\ncoffee cup\n"


def make_dataset(root: Path, n: int) -> Path:
    """n images and drawn masks in the folder layout (kept between runs)."""

    if (root / "masks").is_dir() and len(list((root / "masks").glob("*.png"))) == n:
        return root
    gate.mkdir(root / "images")
    gate.mkdir(root / "masks")
    photos = sample_photos()
    rng = np.random.default_rng(0)
    k = CLASSES.count("\n")
    for i in range(n):
        img = Image.open(photos[i % len(photos)]).convert("RGB")
        scale = 0.6 + 0.4 * ((i // len(photos)) % 3) / 2
        img = img.resize((max(64, int(img.width * scale)), max(64, int(img.height * scale))))
        if (i // len(photos)) % 2:
            img = ImageOps.mirror(img)
        gate.write_bytes(root / "images" / f"img_{i:03d}.jpg", encode(img, "JPEG", quality=92))  # whole or absent
        mask = Image.new("L", img.size, 0)
        d = ImageDraw.Draw(mask)
        for _ in range(5):
            x, y = int(rng.integers(0, img.width - 8)), int(rng.integers(0, img.height - 8))
            d.rectangle((x, y, x + int(rng.integers(8, img.width // 2)), y + int(rng.integers(8, img.height // 2))),
                        fill=int(rng.integers(0, k)))
        gate.write_bytes(root / "masks" / f"img_{i:03d}.png", encode(mask))
    gate.write_text(root.parent / "classes.txt", CLASSES)
    return root


def timed(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return dt, proc


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m benchmarks.eval_throughput", description=__doc__.splitlines()[0])
    p.add_argument("--artifact", type=Path)
    add_ranged(p, "--num-images", "images of the generated dataset (default 50)", default=50)
    add_ranged(p, "--rounds", "timed rounds, the best counts (default 2)", default=2)
    p.add_argument("--reference", action="store_true", help="also the eval rows of the reference and ORT")
    p.add_argument("--work", type=Path, default=Path("out/bench/eval"))
    p.add_argument("--json", type=Path)
    p.add_argument("--md", type=Path)
    add_old_spellings(p, "bench-eval")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    art = args.artifact or tiny_artifact(Path("out/bench/serve-art"))
    root = make_dataset(args.work / f"ds{args.num_images}" / "data", args.num_images)
    classes = root.parent / "classes.txt"
    cache = args.work / "cache"
    fsa = [sys.executable, "-m", "fsa_deploy"]
    seg_cmd = [*fsa, "segment", str(root / "images"), "--artifact", str(art), "--out", str(args.work / "seg"),
               "--backend", "onnx", "--classes-file", str(classes), "--short-side", "336",
               "--long-side", "2048", "--stride", str(min(112, _crop(art))), "--cache-dir", str(cache)]
    eval_cmd = [*fsa, "eval", "folder", "--overwrite", "--root", str(root), "--artifact", str(art), "--backend", "onnx",
                "--classes-file", str(classes), "--short-side", "336", "--stride", str(min(112, _crop(art))),
                "--json", str(args.work / "eval.json"), "--quiet", "--cache-dir", str(cache)]
    timed([*seg_cmd[:4], str(root / "images" / "img_000.jpg"), *seg_cmd[5:]])  # warm the class cache and disk
    seg_s, eval_s, ips = [], [], []
    for _ in range(args.rounds):
        seg_s.append(timed(seg_cmd)[0])
        eval_s.append(timed(eval_cmd)[0])
        ips.append(json.loads((args.work / "eval.json").read_text())["rows"][0]["images_per_s"])
    n = args.num_images
    out = {
        "machine": f"{platform.node()} ({os.cpu_count()} vCPU, {platform.machine()})", "artifact": str(art),
        "images": n, "rounds": args.rounds,
        "segment_s": seg_s, "eval_s": eval_s,
        "segment_images_per_s": n / min(seg_s), "eval_images_per_s": n / min(eval_s),
        "eval_ratio": min(seg_s) / min(eval_s), "eval_row_images_per_s": max(ips),
    }
    if args.reference:
        _, proc = timed([*eval_cmd[:-3], "--json", str(args.work / "ref.json"), "--reference", "--md",
                         str(args.work / "ref.md"), "--cache-dir", str(cache)])
        rep = json.loads((args.work / "ref.json").read_text())
        out["reference_rows"] = [{k: r.get(k) for k in ("name", "backend", "miou", "miou_delta", "pixel_agreement",
                                                        "images_per_s")} for r in rep["rows"]]
    text = json.dumps(out, indent=2)
    print(text)
    md = [f"| command | images | wall s (best of {args.rounds}) | images/s |", "|---|---|---|---|",
          f"| fsa segment | {n} | {min(seg_s):.2f} | {out['segment_images_per_s']:.2f} |",
          f"| fsa eval | {n} | {min(eval_s):.2f} | {out['eval_images_per_s']:.2f} |",
          "", f"eval / segment throughput: {out['eval_ratio']:.3f}"]
    for r in out.get("reference_rows", []):
        md.append(f"- {r['name']} ({r['backend']}): mIoU {100 * r['miou']:.2f}"
                  + (f", delta {100 * r['miou_delta']:+.3f} points, agreement {100 * r['pixel_agreement']:.3f}%"
                     if r.get("miou_delta") is not None else "") + f", {r['images_per_s']:.3f} images/s")

    for path, body in ((args.json, text + "\n"), (args.md, "\n".join(md) + "\n")):
        if path:
            gate.mkdir(path.parent)
            gate.write_text(path, body)
    print("\n".join(md))
    return 0


def _crop(art: Path) -> int:
    return int(json.loads((Path(art) / "meta.json").read_text())["crop"])


if __name__ == "__main__":
    sys.exit(main())

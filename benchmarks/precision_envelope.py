"""`make bench-envelope`: fidelity over the range of outlier magnitudes, `--real-stats-scale` swept on the tiny model.

For each scale: the fp32 export (`--random-init --real-stats --real-stats-scale X`), the fp16 export with the
precision policy and the measured islands, the naive all-fp16 graph (`--no-fp16-islands`), and fsa calibrate's
int8 and fp8 graphs; each validated with `fsa validate` (ONNX Runtime CPU against the PyTorch reference: pixel
agreement, mIoU, non-finite logits) on the sample photos, and the fp16 graphs also through the fp16 emulation
(validation.fp16_emulate, both precision models: what an fp16 kernel computes, which ONNX Runtime's CPU does not
show). A scale whose fp32 graph is not finite on the calibration crops is refused by the fp16 export: recorded as
`refused`. Writes JSON, a Markdown table and a heatmap PNG; minutes per point on 2 cores: run it under the lock.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from fsa_deploy import cli as fsa_cli  # its main, beside this script's own
from fsa_deploy.cli import OneLineParser
from fsa_deploy.runtime import gate
from fsa_deploy.runtime.images import load_image, sample_photos
from fsa_deploy.runtime.pipeline import Geometry, crops_of, resize_image

TARGETS = {"fp16": (0.999, None), "fp16-naive": (0.999, None), "int8": (0.99, 0.97), "fp8": (0.99, 0.97)}
SCALES = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
MODEL = ["--model", "tiny", "--proxy", "tiny-dino", "--crop", "112", "--random-init", "--real-stats", "--seed", "0"]


def fsa(*args: str | Path) -> tuple[int, str]:
    """The CLI in this process; (exit code, last stderr line)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = fsa_cli.main([str(a) for a in args])
    lines = err.getvalue().strip().splitlines()
    return rc, lines[-1] if lines else ""


def validated(folder: Path, graph: str, work: Path, photos: list[str]) -> dict[str, Any]:
    out = work / f"{folder.name}-{graph}.json"
    rc, line = fsa("validate", folder, "--graph", graph, "--images", *photos, "--json", out, "--overwrite")
    if not out.is_file():
        return {"error": line}
    s = json.loads(out.read_text())["summary"]
    return {"rc": rc, "pixels": s["pixel_agreement_min"], "miou": s["miou_min"], "nonfinite": s["nonfinite_logits"]}


def emulated(folder: Path, photos: list[str]) -> dict[str, float]:
    """Pixel agreement of the fp16 graph under each emulation precision model against the fp32 graph (ORT)."""
    import onnx
    import onnxruntime as ort

    from fsa_deploy.validation.fp16_emulate import PRECISION_MODELS, run_graph

    geo = Geometry(crop=112)
    crops = np.concatenate([crops_of(resize_image(load_image(p), geo), geo)[0] for p in photos]).astype(np.float32)
    text = np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    feed = {"image": crops, "text_embeddings": text}
    ref = ort.InferenceSession(str(folder.parent / "fp32" / "image.onnx"),
                               providers=["CPUExecutionProvider"]).run(["logits"], feed)[0]
    model = onnx.load(str(folder / "image.onnx"))
    out = {}
    for m in PRECISION_MODELS:
        with np.errstate(all="ignore"):
            y = run_graph(model, feed, precision=m)["logits"]
        out[m] = float((y.argmax(1) == ref.argmax(1)).mean()) if np.isfinite(y).all() else 0.0
    return out


def passes(kind: str, row: dict[str, Any]) -> bool:
    pix, miou = TARGETS[kind]
    return ("pixels" in row and row["pixels"] >= pix and row["nonfinite"] == 0
            and (miou is None or row["miou"] >= miou))


def point(scale: float, work: Path, photos: list[str], count: int,
          kinds: tuple[str, ...] = tuple(TARGETS), emulate: bool = True) -> dict[str, Any]:
    base = work / f"s{scale:g}"
    row: dict[str, Any] = {"scale": scale}
    t0 = time.perf_counter()
    scale_arg = ["--real-stats-scale", str(scale)]
    for kind, extra in (("fp16", []), ("fp16-naive", ["--no-fp16-islands"])):
        if kind not in kinds:
            continue
        rc, line = fsa("export", "--out", base / kind, "--overwrite", "--quiet", "--no-lint", "--precision", "fp16",
                       *extra, *MODEL, *scale_arg)
        row[kind] = {"refused": line} if rc else validated(base / kind, "image.onnx", work, photos)
    made = [k for k in ("fp16", "fp16-naive") if k in row and "refused" not in row[k]] if emulate else []
    quantized = [k for k in ("int8", "fp8") if k in kinds]
    if made or quantized:  # the fp32 graph: the emulation's reference and what fsa calibrate quantizes
        rc, line = fsa("export", "--out", base / "fp32", "--overwrite", "--quiet", "--no-lint", *MODEL, *scale_arg)
        if rc:
            return {**row, "error": line}
        for kind in made:
            row[kind]["emulated"] = emulated(base / kind, photos)
    for prec in quantized:
        rc, line = fsa("calibrate", base / "fp32", "--precision", prec, "--calibration-count", str(count),
                       "--no-calibration-cache", "--quiet", "--no-lint")
        row[prec] = validated(base / "fp32", f"image.{prec}.onnx", work, photos) if rc == 0 else {"error": line}
    for kind in kinds:
        r = row.setdefault(kind, {})
        r["passed"] = passes(kind, r)
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def cell(r: dict[str, Any]) -> str:
    if "refused" in r:
        return "refused (fp32 not finite)"
    if "pixels" not in r:
        return "error"
    text = f"{100 * r['pixels']:.2f}% / {r['miou']:.3f}" + (f" / {r['nonfinite']} nf" if r["nonfinite"] else "")
    if "emulated" in r:
        text += " (emul. " + " / ".join(f"{100 * v:.2f}%" for v in r["emulated"].values()) + ")"
    return text + ("" if r.get("passed") else " **FAIL**")


def write_outputs(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    gate.write_json(args.json, {"command": " ".join(sys.argv), "profiles": TARGETS, "rows": rows})
    lines = ["| --real-stats-scale | " + " | ".join(TARGETS) + " |", "|---" * (len(TARGETS) + 1) + "|"]
    for r in rows:
        lines.append(f"| {r['scale']:g} | " + " | ".join(cell(r.get(k, {})) for k in TARGETS) + " |")
    gate.write_text(args.md, "\n".join(lines) + "\n")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        lines_ = [(k, k, None) for k in TARGETS] + [
            (f"{k} emul. {m.split('-')[1]}", k, m) for k in ("fp16", "fp16-naive")
            for m in ("fp16-storage-fp32-accumulate", "fp16-accumulate")]

        def value(r: dict[str, Any], kind: str, model: str | None) -> float:
            c = r.get(kind, {})
            v = c.get("emulated", {}).get(model) if model else c.get("pixels")
            return float("nan") if v is None else 100 * v

        grid = np.array([[value(r, k, m) for r in rows] for _, k, m in lines_])
        fig, ax = plt.subplots(figsize=(8, 4.2))
        im = ax.imshow(grid, cmap="RdYlGn", vmin=98, vmax=100, aspect="auto")
        ax.set_xticks(range(len(rows)), [f"{r['scale']:g}" for r in rows])
        ax.set_yticks(range(len(lines_)), [n for n, _, _ in lines_])
        ax.set_xlabel("--real-stats-scale (1 = published magnitudes)")
        for i, (_, k, m) in enumerate(lines_):
            for j, r in enumerate(rows):
                c = r.get(k, {})
                txt = "refused" if "refused" in c else (f"{grid[i, j]:.2f}" if np.isfinite(grid[i, j]) else "-")
                ax.text(j, i, txt + ("" if m or c.get("passed", True) else "!"), ha="center", va="center", fontsize=7)
        fig.colorbar(im, ax=ax, label="pixel agreement %")
        ax.set_title("tiny --real-stats: fsa validate (ORT CPU) and the fp16 emulation over the outlier scale")
        fig.tight_layout()
        gate.write_with(args.plot, fig.savefig, format="png", dpi=110)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(description=__doc__)
    p.add_argument("--scales", default=",".join(f"{s:g}" for s in SCALES))
    p.add_argument("--photos", type=int, default=2, help="sample photos to validate on")
    p.add_argument("--kinds", default=",".join(TARGETS), help="graphs to make and validate")
    p.add_argument("--no-emulation", action="store_true", help="skip the fp16 emulation (the smoke test's speed)")
    p.add_argument("--calibration-count", type=int, default=8)
    p.add_argument("--work", required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--md", required=True)
    p.add_argument("--plot")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    work = gate.check_folder(args.work, "--work")  # never inside an artefact folder
    photos = list(sample_photos()[: args.photos])
    rows = []
    for s in (float(x) for x in args.scales.split(",")):
        rows.append(point(s, work, photos, args.calibration_count, tuple(args.kinds.split(",")),
                          not args.no_emulation))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        write_outputs(rows, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

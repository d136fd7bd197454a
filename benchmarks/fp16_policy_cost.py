"""The fp16 precision policy's cost: the same fp32 artefact converted with the measured islands only (the baseline)
and with the policy + measured islands; nodes, fp16 nodes, fp32 islands, MiB and ONNX Runtime CPU time of one crop,
the times as ratios against the baseline measured in the same run (the two sessions alternate, so the machine's load
falls on both). `make bench-policy-cost` (tiny) and `make bench-policy-cost-full` (ViT-B-16 + DINO B/8 at 336);
docs/BENCHMARKS.md.

python -m benchmarks.fp16_policy_cost DIR [--repeats N] [--crops N] [--json F] [--md F]   (DIR: an fp32 export)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from fsa_deploy.cli import OneLineParser
from fsa_deploy.export import fp16_audit as F
from fsa_deploy.runtime import gate
from fsa_deploy.runtime.artifact import Artifact
from fsa_deploy.runtime.images import load_image, sample_photos
from fsa_deploy.runtime.pipeline import Geometry, crops_of, resize_image
from fsa_deploy.validation.bench.report import cpu_model

ROWS = ("measured islands only", "policy + measured islands")  # the baseline first


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m benchmarks.fp16_policy_cost", description=__doc__.splitlines()[0])
    p.add_argument("folder", help="an fp32 `fsa export` folder")
    p.add_argument("--repeats", type=int, default=20, help="timed runs of each graph (default 20)")
    p.add_argument("--crops", type=int, default=1, help="photo crops the audit measures ranges on (default 1)")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--md", help="write the Markdown table here")
    return p


def main(argv: list[str] | None = None) -> int:
    import onnx
    import onnxruntime as ort


    args = build_parser().parse_args(argv)
    art = Artifact.load(args.folder)
    path = Path(args.folder) / "image.onnx"
    geo = Geometry(crop=art.info.crop)
    text = np.random.default_rng(0).standard_normal((21, art.info.embed_dim)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    crops = [c[None].astype(np.float32) for photo in sample_photos()
             for c in crops_of(resize_image(load_image(photo), geo), geo)[0]][:args.crops]
    feeds = [{"image": c, "text_embeddings": text} for c in crops]
    t0 = time.perf_counter()
    ranges = F.measure(path, feeds)
    fp32 = onnx.load(str(path))
    policy = F.precision_policy(fp32)
    base = F.structural_islands(fp32, art.info.stages, art.info.feedback_scope)
    print(f"ranges on {len(feeds)} crop(s): {time.perf_counter() - t0:.0f} s; policy: "
          f"{ {k: len(v) for k, v in policy.items()} }", file=sys.stderr, flush=True)
    rows: list[dict[str, Any]] = []
    sessions = []
    for name, always in zip(ROWS, (base, base + [n for v in policy.values() for n in v]), strict=True):
        keep = F.fp32_islands(fp32, ranges, always)
        model = F.to_fp16(path, keep)
        blob = model.SerializeToString()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        sess = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=["MatmulTransposeFusion"])
        sess.run(["logits"], feeds[0])  # warm-up
        sessions.append(sess)
        rows.append({"graph": name, "nodes": len(model.graph.node), "fp16_nodes": len(F.low_precision_nodes(model)),
                     "fp32_islands": len(keep), "mib": round(len(blob) / 2**20, 2), "ms": []})
        del model, blob
    for _ in range(args.repeats):  # interleaved: the load at any moment falls on both graphs
        for row, sess in zip(rows, sessions, strict=True):
            t = time.perf_counter()
            sess.run(["logits"], feeds[0])
            row["ms"].append(1000 * (time.perf_counter() - t))
    for row in rows:
        row["median_ms"] = round(float(np.median(row["ms"])), 1)
        row["ratio"] = round(row["median_ms"] / rows[0]["median_ms"], 3)
    head = ("| fp16 graph | nodes | in fp16 | kept fp32 | MiB | ORT CPU ms (median) | time vs baseline |\n"
            "|---|---|---|---|---|---|---|\n")
    table = head + "".join(f"| {r['graph']} | {r['nodes']} | {r['fp16_nodes']} | {r['fp32_islands']} | {r['mib']:.2f} "
                           f"| {r['median_ms']:.1f} | {r['ratio']:.2f}x |\n" for r in rows)
    print(table)
    report = {"artifact": str(args.folder), "model": art.info.model, "proxy": art.info.proxy,
              "crop": art.info.crop, "weights": art.info.weights, "cpu": cpu_model(), "threads": args.threads,
              "repeats": args.repeats, "audit_crops": len(feeds), "policy": {k: len(v) for k, v in policy.items()},
              "rows": rows}
    if args.json:
        gate.write_json(args.json, report)
    if args.md:
        gate.write_text(args.md, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The fp16 precision policy's cost: the same fp32 artefact converted with the measured islands only and with the
policy + measured islands; nodes, fp16 nodes, MiB and ONNX Runtime CPU time of one crop (docs/BENCHMARKS.md).

python -m benchmarks.fp16_policy_cost DIR [--repeats N]   (DIR: an fp32 `fsa export` folder)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    import onnx
    import onnxruntime as ort
    from fsa_deploy.export import fp16_audit as F
    from fsa_deploy.runtime.artifact import Artifact
    from fsa_deploy.runtime.images import load_image, sample_photos
    from fsa_deploy.runtime.pipeline import Geometry, crops_of, resize_image

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("folder")
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args(argv)
    art = Artifact.load(args.folder)
    path = Path(args.folder) / "image.onnx"
    geo = Geometry(crop=int(art.meta["crop"]))
    crop = crops_of(resize_image(load_image(sample_photos()[0]), geo), geo)[0][:1].astype(np.float32)
    text = np.random.default_rng(0).standard_normal((21, int(art.meta["embed_dim"]))).astype(np.float32)
    feed = {"image": crop, "text_embeddings": text / np.linalg.norm(text, axis=1, keepdims=True)}
    ranges = F.measure(path, [feed])
    fp32 = onnx.load(str(path))
    policy = F.precision_policy(fp32)
    base = F.structural_islands(fp32, art.meta["stages"], str(art.meta.get("feedback_scope") or ""))
    print({k: len(v) for k, v in policy.items()})
    for name, always in (("measured islands only", base),
                         ("policy + measured islands", base + [n for v in policy.values() for n in v])):
        keep = F.fp32_islands(fp32, ranges, always)
        model = F.to_fp16(path, keep)
        blob = model.SerializeToString()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        sess = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=["MatmulTransposeFusion"])
        sess.run(["logits"], feed)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            sess.run(["logits"], feed)
            times.append(time.perf_counter() - t0)
        print(f"| {name} | {len(model.graph.node)} | {len(F.low_precision_nodes(model))} | {len(keep)} | "
              f"{len(blob) / 2**20:.2f} | {1000 * float(np.median(times)):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

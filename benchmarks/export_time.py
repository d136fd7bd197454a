"""`make export-b16`: time a full-size export and compare one crop on ONNX Runtime CPU against
the PyTorch literal (official) formulation, in the same run on the same machine.

python -m benchmarks.export_time --out out/b16 [--model ViT-B-16 --proxy dino --crop 336] [--json F]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from fsa_deploy import contract
from fsa_deploy.cli import OneLineParser
from fsa_deploy.export.onnx_export import export_artifact
from fsa_deploy.models.factory import ModelSpec, build_reference, default_hp
from fsa_deploy.models.weights import Weights
from fsa_deploy.ranges import add_ranged
from fsa_deploy.runtime import gate
from fsa_deploy.runtime.backends.onnxrt import OnnxRuntimeBackend
from fsa_deploy.runtime.images import load_image, sample_photos
from fsa_deploy.runtime.pipeline import Geometry, crops_of, resize_image
from fsa_deploy.spellings import add_old_spellings
from fsa_deploy.validation.bench.report import cpu_model
from fsa_deploy.validation.bench.timing import time_calls


def median_ms(fn, repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    times = time_calls(fn, repeats, warmup)
    return statistics.median(times), times


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(description=__doc__)
    p.add_argument("--out", required=True)
    p.add_argument("--model", default="ViT-B-16")
    p.add_argument("--proxy", default="dino")
    add_ranged(p, "--crop", "square crop size (default 336)", default=336)
    add_ranged(p, "--num-classes", "class count K of the random text embeddings (default 21)", default=21)
    add_ranged(p, "--repeats", "timed runs (default 3)", default=3)
    p.add_argument("--json")
    add_old_spellings(p, "export-b16")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    import onnx  # noqa: PLC0415 - onnx: heavy, imported where it is used

    torch.set_grad_enabled(False)
    spec = ModelSpec(model=args.model, weights=Weights(seed=0),
                     proxy=args.proxy, crop=args.crop, hp=default_hp(args.model, args.proxy))
    t0 = time.perf_counter()
    art = export_artifact(spec, args.out, overwrite=True)
    export_s = time.perf_counter() - t0
    graph = onnx.load(str(art.path(contract.IMAGE_ONNX)), load_external_data=False)
    geo = Geometry(crop=args.crop)
    crop = crops_of(resize_image(load_image(sample_photos()[1]), geo), geo)[0][:1]  # host numpy
    text = torch.nn.functional.normalize(torch.randn(args.num_classes, art.info.embed_dim), dim=-1)
    ort = OnnxRuntimeBackend(art)
    literal = build_reference(spec, "literal").model
    crop_t = torch.from_numpy(crop.copy())
    ort_ms, ort_all = median_ms(lambda: ort.run(crop, text.numpy()), args.repeats)
    lit_ms, lit_all = median_ms(lambda: literal(crop_t, text), args.repeats)
    result = {
        "model": args.model, "proxy": args.proxy, "crop": args.crop, "classes": args.num_classes,
        "export_s": round(export_s, 1), "image_onnx_mb": (art.file(contract.IMAGE_ONNX).bytes or 0) / 2**20,
        "image_onnx_nodes": len(graph.graph.node), "text_onnx_mb": (art.file(contract.TEXT_ONNX).bytes or 0) / 2**20,
        "ort_cpu_crop_ms": ort_ms, "torch_literal_crop_ms": lit_ms, "speedup_vs_literal": lit_ms / ort_ms,
        "ort_cpu_all_ms": ort_all, "torch_literal_all_ms": lit_all,
        "machine": {"cpu": cpu_model(), "cores": torch.get_num_threads(), "torch": torch.__version__},
    }
    if args.json:

        gate.mkdir(Path(args.json).parent)
        gate.write_json(args.json, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

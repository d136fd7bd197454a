"""The `fsa calibrate` verb: argument parsing only; the work is in calibration.quantize."""

from __future__ import annotations

import argparse
import json

from fsa_deploy.calibration.modelopt_call import METHODS
from fsa_deploy.calibration.quantize import REGIONS, CalibrationOptions, calibrate
from fsa_deploy.contract import CALIBRATE_PRECISIONS
from fsa_deploy.errors import FSAError
from fsa_deploy.ranges import add_ranged
from fsa_deploy.runtime.text import add_vocabulary_args, vocabulary_from_args
from fsa_deploy.spellings import add_old_spellings


def add_calibrate(sub, help_text: str) -> None:
    p = sub.add_parser("calibrate", help=help_text, description=(
        "Explicit quantization with NVIDIA ModelOpt: image.onnx -> image.int8.onnx or image.fp8.onnx (Q/DQ "
        "nodes), calibrated on the CPU with crops cut as `fsa segment` cuts them. The FSA head (proxy attention, "
        "feedback, ensemble, tail), every Softmax and every MatMul that reads one stay in fp32; by default only "
        "the proxy's backbone is quantized (--quantize). The result is recorded in meta.json."))
    p.add_argument("dir", metavar="DIR", help="artefact folder written by `fsa export` (fp32)")
    p.add_argument("--precision", choices=CALIBRATE_PRECISIONS, default=CalibrationOptions.precision,
                   help=f"Q/DQ precision (default {CalibrationOptions.precision})")
    p.add_argument("--images", nargs="+", metavar="PATH",
                   help="calibration images: files and/or folders (default: scikit-image's sample photos)")
    add_ranged(p, "--calibration-count",
               f"crops used: the first N crops of the images (default {CalibrationOptions.count})",
               default=CalibrationOptions.count)
    add_ranged(p, "--batch", default=CalibrationOptions.batch,
               help_text=f"crops per calibration step (default {CalibrationOptions.batch}); ModelOpt holds every "
                         "calibrated activation of a step in memory (ViT-B-16 + DINO B/8 at 336: 8.4 GiB peak at 1)")
    p.add_argument("--quantize", choices=REGIONS, dest="region",
                   help="what runs in low precision: the proxy's backbone (default where the model has a proxy: "
                        "~80%% of a crop's FLOPs) or both backbones (CLIP's trunk too; the default without a proxy)")
    p.add_argument("--op-types", metavar="OPS",
                   help="comma-separated op types to quantize, e.g. MatMul,Gemm,Conv (default: ModelOpt's "
                        "placement, which also quantizes Add and LayerNormalization inputs)")
    p.add_argument("--method", choices=tuple(METHODS), default=CalibrationOptions.method,
                   help=f"activation ranges: entropy (KL divergence) or max (default {CalibrationOptions.method})")
    p.add_argument("--no-calibration-cache", action="store_true",
                   help="neither read nor write the calibration tensors cached in DIR (calibration-*.npz)")
    p.add_argument("--no-lint", action="store_true", help="skip the TensorRT lint of the Q/DQ graph")
    add_vocabulary_args(p)
    add_old_spellings(p, "calibrate")
    p.set_defaults(func=run_calibrate)


def run_calibrate(args: argparse.Namespace) -> int:
    classes = None
    if args.classes is not None or args.classes_file is not None:
        classes = vocabulary_from_args(args)
    opts = CalibrationOptions(precision=args.precision, images=tuple(args.images or ()),
                              count=args.calibration_count, batch=args.batch, method=args.method, region=args.region,
                              op_types=op_types(args.op_types), cache=not args.no_calibration_cache, classes=classes,
                              lint=not args.no_lint)
    r = calibrate(args.dir, opts, progress=not args.quiet)
    print(json.dumps({"artifact": str(r.path.parent), "file": r.path.name, "precision": r.precision,
                      "qdq_pairs": r.summary.pairs, "quantized_ops": dict(r.summary.quantized_ops),
                      "fp32_tail_nodes": r.fp32_nodes["tail_and_boundary"],
                      "fp32_probability_matmuls": r.fp32_nodes["probability_matmuls"],
                      "fp32_clip_trunk_nodes": r.fp32_nodes["clip_trunk"], "crops": int(len(r.data.crops)),
                      "cache_hit": r.data.cache_hit, "seconds": round(r.seconds, 1)}))
    return 0


def op_types(text: str | None) -> tuple[str, ...]:
    """--op-types A,B: absent means ModelOpt's placement; given, it must name at least one op type."""
    if text is None:
        return ()
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    if not names:
        raise FSAError(f"--op-types {text!r}: no op type named (e.g. MatMul,Gemm,Conv); leave the option out for "
                       "ModelOpt's own placement")
    return names

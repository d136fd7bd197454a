"""The `fsa export` verb (lint and build live in export/lint.py and export/trt_build.py)."""

from __future__ import annotations

import argparse

from fsa_deploy.contract import EXPORT_PRECISIONS
from fsa_deploy.errors import FSAError
from fsa_deploy.export.fp16_audit import Fp16Plan
from fsa_deploy.models.cli import add_model_args, spec_from_args
from fsa_deploy.ranges import add_ranged
from fsa_deploy.runtime.images import checked_image_files
from fsa_deploy.spellings import add_old_spellings


def add_export(sub, help_text: str) -> None:
    p = sub.add_parser("export", help=help_text, description=(
        "Export the two-pass FSA crop forward to an artefact folder: image.onnx (image [B,3,S,S] RGB 0-255 + "
        "text_embeddings [K,D] -> logits [B,K,H',W']), text.onnx (tokens [T,77] -> embeddings [T,D]) and "
        "meta.json. Every graph is linted against TensorRT's ONNX rules as the last step."))
    p.add_argument("--out", required=True, help="artefact folder to create")
    p.add_argument("--precision", choices=EXPORT_PRECISIONS, default="fp32",
                   help="fp16: made from the fp32 graph by ModelOpt AutoCast; the input normalisation, the FSA head, "
                   "the feedback and every node the fp16 range audit flags on calibration crops stay in fp32 "
                   "(docs/PRECISION.md)")
    p.add_argument("--images", nargs="+", metavar="PATH", help="--precision fp16: calibration images of the range "
                   "audit, files and/or folders (default: fsa calibrate's, scikit-image's sample photos)")
    p.add_argument("--no-fp16-islands", action="store_true", help="--precision fp16, debug: every node in fp16 "
                   "(no fp32 islands), to see what the fp16 audit catches")
    add_ranged(p, "--max-batch", "largest crop batch the graph admits (default 64)", default=64)
    p.add_argument("--overwrite", action="store_true", help="replace an existing artefact folder")
    p.add_argument("--no-lint", action="store_true", help="skip the TensorRT lint (not recommended)")
    add_model_args(p)
    add_old_spellings(p, "export")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from fsa_deploy.export.onnx_export import describe, export_artifact

    fp16 = None
    if args.precision == "fp16":
        if args.images:
            checked_image_files(args.images, "--images")  # before the model is built and exported
        fp16 = Fp16Plan(images=tuple(args.images or ()), islands=not args.no_fp16_islands)
    elif args.images or args.no_fp16_islands:
        raise FSAError("--images and --no-fp16-islands go with --precision fp16")
    art = export_artifact(spec_from_args(args), args.out, precision=args.precision, overwrite=args.overwrite,
                          progress=not args.quiet, max_batch=args.max_batch, lint=not args.no_lint, fp16=fp16)
    print(describe(art))
    return 0

"""The `fsa export` verb (lint and build live in export/lint.py and export/trt_build.py)."""

from __future__ import annotations

import argparse

from fsa_deploy.models.cli import add_model_args, spec_from_args

from fsa_deploy.ranges import add_ranged


def add_export(sub, help_text: str) -> None:
    p = sub.add_parser("export", help=help_text, description=(
        "Export the two-pass FSA crop forward to an artefact folder: image.onnx (image [B,3,S,S] RGB 0-255 + "
        "text_embeddings [K,D] -> logits [B,K,H',W']), text.onnx (tokens [T,77] -> embeddings [T,D]) and "
        "meta.json. Every graph is linted against TensorRT's ONNX rules as the last step."))
    p.add_argument("--out", required=True, help="artefact folder to create")
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                   help="fp16: CLIP trunk and proxy in fp16, last block + feedback + tail in fp32")
    add_ranged(p, "--max-batch", "largest crop batch the graph admits (default 64)", default=64)
    p.add_argument("--overwrite", action="store_true", help="replace an existing artefact folder")
    p.add_argument("--no-lint", action="store_true", help="skip the TensorRT lint (not recommended)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    add_model_args(p)
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from fsa_deploy.export.onnx_export import describe, export_artifact

    from fsa_deploy.errors import FSAError

    if args.max_batch < 1:
        raise FSAError(f"--max-batch {args.max_batch}: must be >= 1")
    art = export_artifact(spec_from_args(args), args.out, precision=args.precision, overwrite=args.overwrite,
                          progress=not args.quiet, max_batch=args.max_batch, lint=not args.no_lint)
    print(describe(art))
    return 0

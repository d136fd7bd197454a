"""`fsa bench`'s options: checks that need no model, then the run."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any

from fsa_deploy.errors import FSAError
from fsa_deploy.log import logger
from fsa_deploy.models.cli import add_model_args, spec_from_args
from fsa_deploy.ranges import add_ranged
from fsa_deploy.runtime import gate as outputs_gate  # `gate` here is the --min-agreement check
from fsa_deploy.runtime.artifact import Artifact
from fsa_deploy.runtime.images import sample_photos
from fsa_deploy.runtime.text import vocabulary_from_args
from fsa_deploy.spellings import add_old_spellings
from fsa_deploy.validation.bench.data import DEFAULT_IMAGE, BenchOptions
from fsa_deploy.validation.bench.report import format_terminal, gate, write_outputs
from fsa_deploy.validation.bench.run import run_bench

LOG = logger("validation")


def add_bench(sub: Any, help_text: str) -> argparse.ArgumentParser:
    p = sub.add_parser("bench", help=help_text, description=(
        "Export the model (or take --artifact folders) and run every format and precision this machine has: "
        "one table of status, size, fidelity against the reference, latency, throughput, memory and speedup "
        "against the official (literal) PyTorch formulation. --block times the FSA block alone."))
    p.add_argument("--artifact", action="append", default=[], metavar="DIR",
                   help="bench this export instead of exporting (repeatable: an fp32 and an fp16 folder)")
    p.add_argument("--work", metavar="DIR", help="keep exports here and reuse them next time (default: a temp folder)")
    p.add_argument("--images", nargs="+", help=f"images or folders (default: scikit-image's {DEFAULT_IMAGE})")
    p.add_argument("--classes", help='"cat; kitty, dog": the vocabulary (default models/data/voc21.txt)')
    p.add_argument("--classes-file", metavar="FILE", help="one class a line, synonyms separated by ';'")
    add_ranged(p, "--repeats", "timed runs per measurement (default 3)", default=3)
    add_ranged(p, "--warmup", "untimed runs first (default 1)", default=1)
    add_ranged(p, "--batch", "crops per forward in the per-image runs (default 1: a full-size literal crop "
               "needs ~8 GB)", default=1)
    add_ranged(p, "--threads", "torch and ONNX Runtime CPU threads (default: their defaults)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="only this device's rows (default: every device here); "
                   "with --block, where the block runs (default cpu)")
    p.add_argument("--only", action="append", default=[], metavar="TEXT",
                   help="only rows whose name contains TEXT, e.g. onnx, deploy, cuda (repeatable)")
    add_ranged(p, "--min-agreement", "exit 1 if a measured row's pixel agreement is under X: a CI gate "
               "(above 1 always fails: tests use it)")
    add_ranged(p, "--calibration-count", default=64,
               help_text="crops calibrating the int8 row when no folder has image.int8.onnx (default 64, as "
                        "fsa calibrate; ViT-B-16 + DINO B/8: ~5 min + ~10 s a crop on 2 CPU cores)")
    p.add_argument("--json", help="write the report as JSON")
    p.add_argument("--md", help="write the report as Markdown")
    p.add_argument("--plot", metavar="PNG", help="latency against fidelity, one labelled point per row")
    p.add_argument("--overwrite", action="store_true", help="replace existing --json / --md / --plot files")
    p.add_argument("--block", action="store_true",
                   help="the FSA feedback block alone (with --tokens N, --num-classes K)")
    add_ranged(p, "--tokens", "--block: token count N")
    add_ranged(p, "--num-classes", "--block: class count K (--classes K is its deprecated spelling there)",
               metavar="K")
    add_model_args(p)
    add_old_spellings(p, "bench")
    p.set_defaults(func=run_bench_cli)
    return p


def _check_ranges(args: argparse.Namespace) -> None:
    """What the ranges table cannot say: options that only go together."""
    if args.tokens is not None or args.num_classes is not None:
        raise FSAError(f"{'--tokens' if args.tokens is not None else '--num-classes'}: only with --block")
    if args.classes is not None and args.classes_file is not None:
        raise FSAError("--classes and --classes-file: give one of them")


def _model_options_given(args: argparse.Namespace) -> list[str]:
    """Model options that differ from their defaults (with --artifact, meta.json decides the model)."""
    probe = argparse.ArgumentParser()
    add_model_args(probe)
    defaults = vars(probe.parse_args([]))
    return [f"--{k.replace('_', '-')}" for k, v in defaults.items() if getattr(args, k) != v]


def _default_images() -> tuple[str, ...]:
    photos = sample_photos()
    chosen = [p for p in photos if Path(p).name == DEFAULT_IMAGE] or photos[:1]
    if not chosen:
        raise FSAError("no images given and no scikit-image sample photo found: pass --images")
    return tuple(chosen)


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    """Every check that needs no model, so bad usage fails in a second."""
    import torch

    from fsa_deploy.validation.validate import expand_images

    _check_ranges(args)
    outputs = outputs_gate.Outputs()  # before minutes of measuring; two options on one file are refused
    for path, option in ((args.json, "--json"), (args.md, "--md"), (args.plot, "--plot")):
        outputs.file(path, option, args.overwrite)
    if getattr(args, "work", None):
        outputs_gate.check_folder(args.work, "--work")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise FSAError("--device cuda: no CUDA device visible to torch")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        raise FSAError(f"--plot {args.plot}: matplotlib is not installed: pip install matplotlib")
    spec = None
    if args.artifact:
        given = _model_options_given(args)
        if given:
            raise FSAError(f"{given[0]}: with --artifact the model comes from the folder's meta.json; drop it")

        for folder in args.artifact:
            Artifact.load(folder)  # a bad folder is one line now, not after minutes
    else:
        if not (args.pretrained or args.checkpoint):
            args.random_init = True  # bench measures speed and fidelity: random weights serve
        spec = spec_from_args(args)
    devices = (args.device,) if args.device else ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
    return BenchOptions(spec, tuple(args.artifact), args.work, tuple(expand_images(args.images) or _default_images()),
                   vocabulary_from_args(args), args.repeats, args.warmup, args.batch, args.threads, devices,
                   tuple(args.only), args.min_agreement, args.calibration_count, args.json, args.md, args.plot)


def block_classes(args: argparse.Namespace) -> int | None:
    """--num-classes K, or the old spelling --classes K (a vocabulary everywhere else)."""
    if args.classes is None:
        return args.num_classes
    if args.num_classes is not None:
        raise FSAError("--classes and --num-classes: with --block, give --num-classes K only")
    try:
        classes = int(args.classes)
    except ValueError:
        raise FSAError(f"--classes {args.classes!r}: --block takes no vocabulary; the class count is "
                       "--num-classes K") from None
    LOG.warning("fsa bench: --block --classes K is deprecated, use --num-classes K")
    return classes


def run_block(args: argparse.Namespace) -> int:
    """`--block`: validation/bench/block.py with K classes."""
    from fsa_deploy.validation.bench.block import main_block

    classes = block_classes(args)
    if args.tokens is None or classes is None:
        raise FSAError("--block needs --tokens N and --num-classes K")
    if args.tokens < 1 or classes < 1:
        raise FSAError(f"--tokens {args.tokens} --num-classes {classes}: must be >= 1")
    from fsa_deploy.runtime import gate  # noqa: PLC0415 - gate is another thing in this module

    gate.check_output_file(args.json, "--json", getattr(args, "overwrite", False))  # the gate: before timing
    return main_block(argparse.Namespace(**{**vars(args), "classes": classes, "device": args.device or "cpu"}))


def run_bench_cli(args: argparse.Namespace) -> int:
    if args.block:
        return run_block(args)
    opts = options_from_args(args)
    rep = run_bench(opts)
    write_outputs(rep, opts)
    print(format_terminal(rep))
    gate(rep.results, opts.min_agreement)
    return 0


"""`fsa build`'s options as data, and the checks on them that need no TensorRT and no ONNX.

Every refusal here runs before anything slow (importing TensorRT, hashing gigabytes of ONNX):
options a flavour has no use for, fp8 below the targets with fp8 kernels, Turing with fp32 GEMMs.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsa_deploy.contract import (
    CALIBRATE_PRECISIONS,
    GRAPH_PRECISIONS,
    IMAGE_GRAPHS,
    IMAGE_ONNX,
    IMAGE_ROLES,
    RTX_TARGETS,
)
from fsa_deploy.errors import FSAError
from fsa_deploy.ranges import add_ranged
from fsa_deploy.runtime.backends.trt_lib import ENGINE_CHOICES, RTX, TRT, Flavour, parse_targets
from fsa_deploy.runtime.schema import FileRecord

TIMING_CACHE = "timing.cache"

# ---------------------------------------------------------------- options as data


@dataclass(frozen=True)
class DimRange:
    """Min / opt / max of one dynamic (leading) dimension of an optimization profile."""

    opt: int
    max: int
    min: int = 1

    def check(self, what: str) -> DimRange:
        if not 1 <= self.min <= self.opt <= self.max:
            raise FSAError(f"--opt-{what} {self.opt} must be between 1 and --max-{what} {self.max}")
        return self


@dataclass(frozen=True)
class BuildOptions:
    """`fsa build`'s options as data, so the build steps take one value, not a Namespace."""

    precision: str
    batch: DimRange
    classes: DimRange
    prompts: DimRange
    workspace_mib: int | None = None
    version_compatible: bool = False
    hardware_compatible: bool = False
    dla_core: int | None = None
    tf32: bool = False
    text: bool = True
    engine: str = "trt"  # flavour name, or "auto" before `pick`
    targets: tuple[str, ...] | None = None  # TensorRT-RTX compute capabilities; None: the default
    timing_cache: Path | None = None  # None: the folder's timing.cache (TensorRT 10/11)


def options_from_args(args: argparse.Namespace) -> BuildOptions:
    """Options checked before anything slow runs; an empty precision means the export's."""
    return BuildOptions(
        precision=args.precision or "",
        batch=DimRange(args.opt_batch, args.max_batch).check("batch"),
        classes=DimRange(args.opt_classes, args.max_classes).check("classes"),
        prompts=DimRange(args.opt_prompts, args.max_prompts).check("prompts"),
        workspace_mib=args.workspace,
        version_compatible=args.version_compatible,
        hardware_compatible=args.hardware_compatible,
        dla_core=args.dla_core,
        tf32=args.tf32,
        text=not args.no_text,
        engine=args.engine,
        targets=parse_targets(args.targets) if args.targets else None,
        timing_cache=args.timing_cache,
    )


# option -> (Flavour field that must be true for it, is it set in these options?)
FLAVOUR_OPTIONS: dict[str, tuple[str, Any]] = {
    "--version-compatible": ("version_compatible", lambda o: o.version_compatible),
    "--hardware-compatible": ("hardware_compatible", lambda o: o.hardware_compatible),
    "--dla-core": ("dla", lambda o: o.dla_core is not None),
    "--timing-cache": ("timing_cache", lambda o: o.timing_cache is not None),
    "--targets": ("targets", lambda o: o.targets is not None),
}


def check_options(flavour: Flavour, opts: BuildOptions) -> None:
    """Options the flavour has no use for are refused (TensorRT-RTX ignores most of them silently)."""
    for option, (capability, is_set) in FLAVOUR_OPTIONS.items():
        if is_set(opts) and not getattr(flavour, capability):
            other = next(f for f in (TRT, RTX) if f is not flavour)
            raise FSAError(f"{option} does not apply to {flavour.label} engines (it is a {other.label} option; "
                           f"--engine {other.name})")


def job_targets(flavour: Flavour, opts: BuildOptions, precision: str) -> tuple[str, ...] | None:
    """The compute-capability targets of one engine, or None for the library's default.

    fp8 defaults to the targets that have fp8 kernels: with the library default, TensorRT-RTX
    builds the fp8 graph but its header claims SM 8.0/8.6, which an explicit SM 8.0 build refuses.
    """
    if not flavour.targets:
        return None
    order = list(RTX_TARGETS)
    targets = opts.targets
    if precision == "fp8" and flavour.fp8_min_target:
        low = order.index(flavour.fp8_min_target)
        if targets is None:
            targets = tuple(t for t in RTX_TARGETS if order.index(t) >= low and t != "sm75")
        below = [t for t in targets if order.index(t) < low]
        if below:
            raise FSAError(f"--precision fp8 --targets {','.join(targets)}: {flavour.label} has fp8 kernels from "
                           f"{flavour.fp8_min_target} on, not for {', '.join(below)}")
    if targets and flavour.fp32_min_target and precision != "fp16":
        low = order.index(flavour.fp32_min_target)
        below = [t for t in targets if order.index(t) < low]
        if below:
            raise FSAError(f"--targets {','.join(targets)}: {flavour.label} cannot compile the fp32 GEMMs of a "
                           f"{precision} graph for {', '.join(below)} (Turing); build --precision fp16 --no-text "
                           "for it, or drop it")
    return targets


# ---------------------------------------------------------------- pure helpers


def image_source(files: Mapping[str, FileRecord | Mapping[str, Any]], precision: str, default_precision: str) -> str:
    """The image graph that holds `precision`: the conventional file first, else any recorded one.

    A file's precision is its meta.json record's, or the artefact's for image.onnx.
    """
    records = {n: FileRecord.of(info) for n, info in files.items()}

    def precision_of(name: str) -> str | None:
        p = records[name].precision
        return p if p is not None or name != IMAGE_ONNX else default_precision

    graphs = [n for n, info in records.items() if info.role in IMAGE_ROLES and n.endswith(".onnx")]
    preferred = IMAGE_GRAPHS[precision]
    for name in [preferred, *sorted(graphs)]:
        if name in graphs and precision_of(name) == precision:
            return name
    have = ", ".join(f"{n} ({precision_of(n)})" for n in sorted(graphs)) or "none"
    how = "run `fsa calibrate`" if precision in CALIBRATE_PRECISIONS else f"export with --precision {precision}"
    raise FSAError(f"no {precision} image graph recorded in meta.json (image graphs: {have}); {how}")


Tail = Sequence[int | tuple[int, int, int]]  # per dimension after the first: static, or (min, opt, max)


def profile_shapes(
    name: str, shape: Sequence[int], dims: DimRange, tail: Tail | None
) -> dict[str, list[int]]:
    """min/opt/max shapes of an input whose leading dimension is dynamic and the rest static, or
    ranged where `tail` gives (min, opt, max) (the text graph's token length).

    `tail` is what meta.json says the other dimensions are (None: take the graph's); a graph that
    disagrees with meta.json is refused rather than built wrong. A ranged dimension that the graph
    has static (a text.onnx exported before its length became dynamic) is built at that size.
    """
    shape = list(shape)
    if not shape or shape[0] != -1:
        raise FSAError(f"input {name!r} has shape {shape}: its first dimension must be dynamic (re-export)")
    rest: list[int | tuple[int, int, int]] = list(shape[1:])
    if tail is not None:
        top = [t[2] if isinstance(t, tuple) else t for t in tail]
        if any(d not in (-1, t) for d, t in zip(rest, top)) or len(rest) != len(tail):
            raise FSAError(
                f"input {name!r} has shape {shape}, meta.json says [N, {', '.join(map(str, top))}]"
            )
        rest = [t if d == -1 else d for d, t in zip(rest, tail)]
    if any(not isinstance(d, tuple) and d < 0 for d in rest):
        raise FSAError(f"input {name!r} has shape {shape}: only the first dimension may be dynamic")
    return {k: [v, *(d[i] if isinstance(d, tuple) else d for d in rest)]
            for i, (k, v) in enumerate((("min", dims.min), ("opt", dims.opt), ("max", dims.max)))}


def add_build_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", metavar="DIR", type=Path, help="artefact folder written by `fsa export`")
    p.add_argument("--engine", choices=ENGINE_CHOICES, default="auto",
                   help="trt: TensorRT 10/11; rtx: TensorRT-RTX; auto (default): trt when it imports and a GPU "
                   "is present, else rtx")
    p.add_argument("--targets", metavar="SM,...",
                   help=f"rtx: compute capabilities to compile for ({','.join(RTX_TARGETS)}); default: TensorRT-RTX's "
                   "own (sm80..sm120+), fp8: sm89 and newer")
    p.add_argument("--precision", choices=GRAPH_PRECISIONS, help="image graph to build (default: the export's)")
    add_ranged(p, "--max-batch", "largest crop batch B (default 8)", default=8)
    add_ranged(p, "--opt-batch", "batch B tuned for (default 1)", default=1)
    add_ranged(p, "--max-classes", "largest class count K (default 256)", default=256)
    add_ranged(p, "--opt-classes", "class count K tuned for (default 32)", default=32)
    add_ranged(p, "--max-prompts", "largest prompt batch T (default 256)", default=256)
    add_ranged(p, "--opt-prompts", "prompt batch T tuned for (default 64)", default=64)
    add_ranged(p, "--workspace", "builder workspace limit in MiB", metavar="MiB")
    p.add_argument("--version-compatible", action="store_true", help="trt: runs on later TensorRT versions too")
    p.add_argument("--hardware-compatible", action="store_true", help="trt: runs on any Ampere or newer GPU")
    add_ranged(p, "--dla-core", "trt: image engine on DLA core N")
    p.add_argument("--timing-cache", type=Path, metavar="FILE",
                   help=f"trt: timing cache to read and extend (default: DIR/{TIMING_CACHE})")
    p.add_argument("--tf32", action="store_true", help="let fp32 layers use TF32 (faster, less exact)")
    p.add_argument("--no-text", action="store_true", help="skip the text engine")

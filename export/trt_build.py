"""`fsa build`: artefact folder -> TensorRT engines, on TensorRT 10 and 11 alike.

TensorRT 11 builds strongly typed networks only: the FP16/BF16/INT8/FP8 builder
flags are gone and the precision is whatever the ONNX graph says (an fp16 export,
Q/DQ nodes from `fsa calibrate`). TensorRT 10 gets the same graphs with the
STRONGLY_TYPED creation flag, so one code path builds the same engine from the
same file on both; `--precision` only picks which ONNX file is the source.

Sources: docs.nvidia.com/deeplearning/tensorrt "Migrating from TensorRT 10.x to
11.x" (removed Python APIs: precision flags, calibrators), the 11.0 Python API
page (STRONGLY_TYPED deprecated and ignored: always on), "Engine Compatibility"
(VERSION_COMPATIBLE, HardwareCompatibilityLevel.AMPERE_PLUS).

TensorRT is imported inside functions: `fsa build --help` and the rest of the
project work without it, and a missing install is one line naming the fix.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fsa_deploy.runtime.artifact import (
    EMBEDDINGS,
    IMAGE,
    IMAGE_ONNX,
    LOGITS,
    TEXT_EMBEDDINGS,
    TEXT_ONNX,
    TOKENS,
    Artifact,
    atomic_file,
)
from fsa_deploy.runtime.backends.trt_lib import (  # noqa: F401  (the TensorRT environment lives with the runtime)
    TEXT_ENGINE,
    cuda_device,
    image_engine_name,
    require_tensorrt,
    trt_logger,
    version_tuple,
)

from fsa_deploy.contract import GRAPH_PRECISIONS, IMAGE_GRAPHS
from fsa_deploy.errors import FSAError

if TYPE_CHECKING:
    import tensorrt as trt

# Source graph of each precision: fp32 and fp16 share image.onnx (its precision is recorded in
# meta.json), the Q/DQ graphs of `fsa calibrate` sit beside it.
PRECISIONS = GRAPH_PRECISIONS
IMAGE_SOURCES = IMAGE_GRAPHS
IMAGE_ROLES = ("image", "image-qdq")
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
    )


# ---------------------------------------------------------------- pure helpers


def image_source(files: Mapping[str, Mapping[str, Any]], precision: str, default_precision: str) -> str:
    """The image graph that holds `precision`: the conventional file first, else any recorded one.

    A file's precision is its meta.json record's, or the artefact's for image.onnx.
    """

    def precision_of(name: str) -> str | None:
        p = files[name].get("precision")
        return p if p is not None or name != IMAGE_ONNX else default_precision

    graphs = [n for n, info in files.items() if info.get("role") in IMAGE_ROLES and n.endswith(".onnx")]
    preferred = IMAGE_SOURCES[precision]
    for name in [preferred, *sorted(graphs)]:
        if name in graphs and precision_of(name) == precision:
            return name
    have = ", ".join(f"{n} ({precision_of(n)})" for n in sorted(graphs)) or "none"
    how = "run `fsa calibrate`" if precision in ("int8", "fp8") else f"export with --precision {precision}"
    raise FSAError(f"no {precision} image graph recorded in meta.json (image graphs: {have}); {how}")


def profile_shapes(
    name: str, shape: Sequence[int], dims: DimRange, tail: Sequence[int] | None
) -> dict[str, list[int]]:
    """min/opt/max shapes of an input whose leading dimension is dynamic and the rest static.

    `tail` is what meta.json says the static dimensions are (None: take the graph's);
    a graph that disagrees with meta.json is refused rather than built wrong.
    """
    shape = list(shape)
    if not shape or shape[0] != -1:
        raise FSAError(f"input {name!r} has shape {shape}: its first dimension must be dynamic (re-export)")
    rest = shape[1:]
    if tail is not None:
        if any(d not in (-1, t) for d, t in zip(rest, tail)) or len(rest) != len(tail):
            raise FSAError(
                f"input {name!r} has shape {shape}, meta.json says [N, {', '.join(map(str, tail))}]"
            )
        rest = list(tail)
    if any(d < 0 for d in rest):
        raise FSAError(f"input {name!r} has shape {shape}: only the first dimension may be dynamic")
    return {k: [v, *rest] for k, v in (("min", dims.min), ("opt", dims.opt), ("max", dims.max))}


# ---------------------------------------------------------------- TensorRT steps


def network_flags() -> int:
    """STRONGLY_TYPED on TensorRT 10; 11 is always strongly typed and deprecates the flag."""
    import tensorrt as trt

    if version_tuple(trt.__version__) >= (11,):
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def network_from_onnx(builder: trt.Builder, path: Path) -> tuple[trt.INetworkDefinition, trt.OnnxParser]:
    """Parse an ONNX file; the parser is returned too because it owns the weights until the build."""
    import tensorrt as trt

    network = builder.create_network(network_flags())
    parser = trt.OnnxParser(network, trt_logger())
    if not parser.parse_from_file(str(path)):
        errors = [" ".join(str(parser.get_error(i)).split()) for i in range(parser.num_errors)]
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise FSAError(f"{path}: TensorRT's ONNX parser refused it: {errors[0] if errors else '?'}{more}")
    return network, parser


def network_io(network: trt.INetworkDefinition) -> tuple[dict[str, list[int]], set[str]]:
    inputs = {}
    for i in range(network.num_inputs):
        t = network.get_input(i)
        inputs[t.name] = [t.shape[j] for j in range(len(t.shape))]
    outputs = {network.get_output(i).name for i in range(network.num_outputs)}
    return inputs, outputs


def check_io(
    path: Path, inputs: Mapping[str, Any], outputs: set[str], want_in: set[str], want_out: set[str]
) -> None:
    if set(inputs) != want_in or not want_out <= outputs:
        raise FSAError(
            f"{path}: inputs {sorted(inputs)} and outputs {sorted(outputs)}, "
            f"expected inputs {sorted(want_in)} and outputs {sorted(want_out)} (re-export)"
        )


def load_timing_cache(config: trt.IBuilderConfig, path: Path) -> trt.ITimingCache:
    """The folder's timing cache (faster rebuilds); an unusable one is replaced by an empty one."""
    blob = path.read_bytes() if path.is_file() else b""
    try:
        cache: trt.ITimingCache | None = config.create_timing_cache(blob)
    except (RuntimeError, TypeError):  # a damaged file: TensorRT refuses the blob
        cache = None
    if cache is None or not config.set_timing_cache(cache, False):
        print(f"note: {path.name} is unreadable or from another GPU / TensorRT; starting a new one")
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
    return cache


def create_config(
    builder: trt.Builder,
    profiles: Mapping[str, Mapping[str, list[int]]],
    opts: BuildOptions,
    dla_core: int | None,
) -> trt.IBuilderConfig:
    """Builder config from options; no precision flags (the graph is strongly typed)."""
    import tensorrt as trt

    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for name, s in profiles.items():
        profile.set_shape(name, trt.Dims(s["min"]), trt.Dims(s["opt"]), trt.Dims(s["max"]))
    config.add_optimization_profile(profile)
    if opts.workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.workspace_mib << 20)
    if not opts.tf32:  # fp32 graphs stay fp32 unless asked: TF32 would blur `fsa validate`
        config.clear_flag(trt.BuilderFlag.TF32)
    if opts.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if opts.hardware_compatible:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    if dla_core is not None:
        if dla_core >= builder.num_DLA_cores:
            raise FSAError(f"--dla-core {dla_core}: this device has {builder.num_DLA_cores} DLA core(s)")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)  # layers DLA cannot run stay on the GPU
    return config


@dataclass(frozen=True)
class EngineJob:
    """One engine to build: its source graph, its inputs' dynamic ranges and static tails."""

    engine: str
    source: str
    precision: str
    dims: Mapping[str, DimRange]
    tails: Mapping[str, Sequence[int] | None]
    outputs: frozenset[str]
    dla_core: int | None = None


def verified_source(art: Artifact, source: str) -> Path:
    """The source graph, and the external weights beside it (`image.onnx.data`), checked by sha256."""
    for name, info in art.files().items():
        if info.get("role") == "external-data" and name.startswith(source):
            art.path(name)
    return art.path(source)


def build_engine(art: Artifact, job: EngineJob, opts: BuildOptions, device: tuple[str, str]) -> float:
    """Build one engine into the folder (atomically) and record it in meta.json; returns seconds."""
    import tensorrt as trt

    source = verified_source(art, job.source)
    t0 = time.perf_counter()
    builder = trt.Builder(trt_logger())
    network, _parser = network_from_onnx(builder, source)
    inputs, outputs = network_io(network)
    check_io(source, inputs, outputs, set(job.dims), set(job.outputs))
    profiles = {n: profile_shapes(n, inputs[n], job.dims[n], job.tails.get(n)) for n in job.dims}
    config = create_config(builder, profiles, opts, job.dla_core)
    cache_path = art.root / TIMING_CACHE
    cache = load_timing_cache(config, cache_path)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise FSAError(f"TensorRT could not build {job.engine} from {job.source} (its log above says why)")
    with atomic_file(art.root / job.engine) as tmp:
        tmp.write_bytes(plan)
    with atomic_file(cache_path) as tmp:
        tmp.write_bytes(cache.serialize())
    art.record(TIMING_CACHE, role="timing-cache")
    art.record(
        job.engine,
        role="engine",
        precision=job.precision,
        engine={
            "trt_version": trt.__version__,
            "compute_capability": device[1],
            "gpu_name": device[0],
            "source": job.source,
            "source_sha256": art.files()[job.source]["sha256"],
            "profiles": profiles,
            "version_compatible": opts.version_compatible,
            "hardware_compatible": opts.hardware_compatible,
            "dla_core": job.dla_core,
            "tf32": opts.tf32,
        },
    )
    art.save()
    return time.perf_counter() - t0


def engine_jobs(art: Artifact, opts: BuildOptions) -> list[EngineJob]:
    meta, files = art.meta, art.files()
    crop, dim, context = meta.get("crop"), meta.get("embed_dim"), meta.get("context_length")
    jobs = [
        EngineJob(
            engine=image_engine_name(opts.precision),
            source=image_source(files, opts.precision, meta.get("precision", "fp32")),
            precision=opts.precision,
            dims={IMAGE: opts.batch, TEXT_EMBEDDINGS: opts.classes},
            tails={
                IMAGE: None if crop is None else [3, crop, crop],
                TEXT_EMBEDDINGS: None if dim is None else [dim],
            },
            outputs=frozenset({LOGITS}),
            dla_core=opts.dla_core,
        )
    ]
    if opts.text:
        if TEXT_ONNX not in files:
            raise FSAError(
                f"{art.root}: no {TEXT_ONNX} recorded in meta.json; pass --no-text to build the image engine"
            )
        jobs.append(
            EngineJob(
                engine=TEXT_ENGINE,
                source=TEXT_ONNX,
                precision=files[TEXT_ONNX].get("precision") or meta.get("precision", "fp32"),
                dims={TOKENS: opts.prompts},
                tails={TOKENS: None if context is None else [context]},
                outputs=frozenset({EMBEDDINGS}),
            )
        )
    return jobs


# ---------------------------------------------------------------- the verb


def run_build(args: argparse.Namespace) -> int:
    opts = options_from_args(args)
    require_tensorrt()  # before hashing gigabytes of ONNX
    device = cuda_device()
    art = Artifact.load(args.folder)
    opts = replace(opts, precision=opts.precision or art.meta.get("precision", "fp32"))
    if opts.hardware_compatible and version_tuple(device[1]) < (8, 0):
        raise FSAError(f"--hardware-compatible needs an Ampere or newer GPU (this one is SM {device[1]})")
    for job in engine_jobs(art, opts):
        seconds = build_engine(art, job, opts, device)
        size = (art.root / job.engine).stat().st_size / 2**20
        print(
            f"{job.engine}: {size:.1f} MiB from {job.source} in {seconds:.0f} s ({device[0]}, SM {device[1]})"
        )
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not a non-negative integer")
    return value


def add_build(subparsers: Any, help_text: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "build",
        help=help_text,
        description="Build TensorRT engines (image.<precision>.engine, text.engine) "
        "from an artefact folder, in place; needs TensorRT 10 or 11 and a GPU.",
    )
    p.add_argument("folder", metavar="DIR", type=Path, help="artefact folder written by `fsa export`")
    p.add_argument("--precision", choices=PRECISIONS, help="image graph to build (default: the export's)")
    p.add_argument("--max-batch", type=_positive, default=8, help="largest crop batch B (default 8)")
    p.add_argument("--opt-batch", type=_positive, default=1, help="batch B tuned for (default 1)")
    p.add_argument("--max-classes", type=_positive, default=256, help="largest class count K (default 256)")
    p.add_argument("--opt-classes", type=_positive, default=32, help="class count K tuned for (default 32)")
    p.add_argument("--max-prompts", type=_positive, default=256, help="largest prompt batch T (default 256)")
    p.add_argument("--opt-prompts", type=_positive, default=64, help="prompt batch T tuned for (default 64)")
    p.add_argument("--workspace", type=_positive, metavar="MiB", help="builder workspace limit")
    p.add_argument("--version-compatible", action="store_true", help="runs on later TensorRT versions too")
    p.add_argument("--hardware-compatible", action="store_true", help="runs on any Ampere or newer GPU")
    p.add_argument("--dla-core", type=_non_negative, metavar="N", help="image engine on DLA core N")
    p.add_argument("--tf32", action="store_true", help="let fp32 layers use TF32 (faster, less exact)")
    p.add_argument("--no-text", action="store_true", help="skip text.engine")
    p.set_defaults(func=run_build)
    return p

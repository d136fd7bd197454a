"""`fsa build`: artefact folder -> TensorRT engines, with TensorRT 10/11 or TensorRT-RTX.

One build layer, two flavours (runtime/backends/trt_lib.py: `Flavour`): the same parser,
network, profile and builder calls on `import tensorrt` or `import tensorrt_rtx`; what differs
(a GPU to build on, compute-capability targets, timing cache, DLA, engine compatibility) is read
from the flavour's record, never from a version number.

Both build strongly typed networks only: the precision is whatever the ONNX graph says (an fp16
export, Q/DQ nodes from `fsa calibrate`); `--precision` only picks which graph is the source.
TensorRT 10 gets the STRONGLY_TYPED creation flag; TensorRT 11 and TensorRT-RTX are always
strongly typed.

Sources: docs.nvidia.com/deeplearning/tensorrt "Migrating from TensorRT 10.x to 11.x", "Engine
Compatibility"; TensorRT-RTX "CPU-Only AOT and TensorRT-RTX Engines"; what the library did on our
CPU machines is in docs/BENCHMARKS.md and tests/test_trt.py.

TensorRT is imported inside functions: `fsa build --help` and the rest of the project work
without it, and a missing install is one line naming the fix.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fsa_deploy import interrupts
from fsa_deploy.contract import EMBEDDINGS, IMAGE, LOGITS, TEXT_EMBEDDINGS, TEXT_ONNX, TOKENS, Role
from fsa_deploy.errors import FSAError
from fsa_deploy.export.trt_options import (
    TIMING_CACHE,
    BuildOptions,
    DimRange,
    Tail,
    add_build_arguments,
    check_options,
    image_source,
    job_targets,
    options_from_args,
    profile_shapes,
)
from fsa_deploy.log import logger as room_logger
from fsa_deploy.runtime import gate
from fsa_deploy.runtime.artifact import Artifact
from fsa_deploy.runtime.backends.trt_lib import (
    RTX,
    TRT,
    Flavour,
    at_least,
    cuda_device,
    load,
    logger,
    pick,
    read_header,
    version_tuple,
)
from fsa_deploy.runtime.schema import EngineRecord, FileRecord, GpuRecord

LOG = room_logger("export")

if TYPE_CHECKING:
    import tensorrt as trt

# the text engine's token length (the runtime sends the batch's longest prompt): from start + end
# tokens to CLIP's 77, tuned for class-name prompts ("a photo of a {}." is 8 to 12 tokens)
TEXT_MIN_LENGTH, TEXT_OPT_LENGTH = 2, 16

# ---------------------------------------------------------------- TensorRT steps (either flavour)


def network_flags(lib: Any, flavour: Flavour) -> int:
    """STRONGLY_TYPED on TensorRT 10; 11 and TensorRT-RTX are always strongly typed (the flag is deprecated)."""
    if flavour is RTX or at_least(lib.__version__, "11"):
        return 0
    return 1 << int(lib.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def first_error(log: Any, since: int) -> str:
    errors = log.errors(since)
    return " ".join(errors[0].split()) if errors else "its log above says why"


def network_from_onnx(
    lib: Any, flavour: Flavour, builder: trt.Builder, path: Path
) -> tuple[trt.INetworkDefinition, trt.OnnxParser]:
    """Parse an ONNX file; the parser is returned too because it owns the weights until the build."""
    network = builder.create_network(network_flags(lib, flavour))
    parser: trt.OnnxParser = lib.OnnxParser(network, logger(flavour))
    if not parser.parse_from_file(str(path)):
        errors = [" ".join(str(parser.get_error(i)).split()) for i in range(parser.num_errors)]
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise FSAError(f"{path}: {flavour.label}'s ONNX parser refused it: {errors[0] if errors else '?'}{more}")
    return network, parser


def network_io(network: trt.INetworkDefinition) -> dict[str, dict[str, Any]]:
    """name -> {"mode", "dtype" (TensorRT's name), "shape" (-1: dynamic)} of the network's inputs and outputs."""
    io = {}
    for mode, count, get in (("input", network.num_inputs, network.get_input),
                             ("output", network.num_outputs, network.get_output)):
        for i in range(count):
            t = get(i)
            io[t.name] = {"mode": mode, "dtype": t.dtype.name, "shape": [t.shape[j] for j in range(len(t.shape))]}
    return io


def check_io(path: Path, io: Mapping[str, Mapping[str, Any]], want_in: set[str], want_out: set[str]) -> None:
    inputs = {n for n, t in io.items() if t["mode"] == "input"}
    outputs = {n for n, t in io.items() if t["mode"] == "output"}
    if inputs != want_in or not want_out <= outputs:
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
        LOG.warning(f"fsa build: note: {path.name} is unreadable or from another GPU / TensorRT; starting a new one")
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
    return cache


def set_targets(lib: Any, config: Any, targets: Sequence[str]) -> None:
    """TensorRT-RTX only: the compute capabilities to compile for (the stubs do not know these calls)."""
    config.num_compute_capabilities = len(targets)
    for i, t in enumerate(targets):
        if not config.set_compute_capability(getattr(lib.ComputeCapability, t.upper()), i):
            raise FSAError(f"--targets {t}: {RTX.label} {lib.__version__} refused it")


def create_config(
    lib: Any,
    flavour: Flavour,
    builder: trt.Builder,
    profiles: Mapping[str, Mapping[str, list[int]]],
    opts: BuildOptions,
    dla_core: int | None,
    targets: Sequence[str] | None,
) -> trt.IBuilderConfig:
    """Builder config from options; no precision flags (the graph is strongly typed)."""
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for name, s in profiles.items():
        profile.set_shape(name, lib.Dims(s["min"]), lib.Dims(s["opt"]), lib.Dims(s["max"]))
    config.add_optimization_profile(profile)
    if opts.workspace_mib is not None:
        config.set_memory_pool_limit(lib.MemoryPoolType.WORKSPACE, opts.workspace_mib << 20)
    if not opts.tf32:  # fp32 graphs stay fp32 unless asked: TF32 would blur `fsa validate`
        config.clear_flag(lib.BuilderFlag.TF32)
    if targets:
        set_targets(lib, config, targets)
    if opts.version_compatible:
        config.set_flag(lib.BuilderFlag.VERSION_COMPATIBLE)
    if opts.hardware_compatible:
        config.hardware_compatibility_level = lib.HardwareCompatibilityLevel.AMPERE_PLUS
    if dla_core is not None:
        if dla_core >= builder.num_DLA_cores:
            raise FSAError(f"--dla-core {dla_core}: this device has {builder.num_DLA_cores} DLA core(s)")
        config.default_device_type = lib.DeviceType.DLA
        config.DLA_core = dla_core
        config.set_flag(lib.BuilderFlag.GPU_FALLBACK)  # layers DLA cannot run stay on the GPU
    return config


@dataclass(frozen=True)
class EngineJob:
    """One engine to build: its source graph, its inputs' dynamic ranges and static tails."""

    engine: str
    source: str
    precision: str
    dims: Mapping[str, DimRange]
    tails: Mapping[str, Tail | None]
    outputs: frozenset[str]
    dla_core: int | None = None
    targets: tuple[str, ...] | None = None


@dataclass
class Plan:
    """A serialized engine and what the build learnt on the way (recorded in meta.json)."""

    data: bytes
    io: dict[str, dict[str, Any]]
    profiles: dict[str, dict[str, list[int]]]
    seconds: float
    warnings: list[str] = field(default_factory=list)


def stop_on_signal(lib: Any) -> Any:
    """A progress monitor whose steps ask to go on until a signal is recorded (a build is minutes; the
    callback runs inside the native build, so it returns False rather than raise), or None when the
    library has no IProgressMonitor."""
    base = getattr(lib, "IProgressMonitor", None)
    if base is None:
        return None

    class StopOnSignal(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            pass

        def phase_finish(self, phase_name: str) -> None:
            pass

        def step_complete(self, phase_name: str, step: int) -> bool:
            try:
                return interrupts.received() is None
            except BaseException:  # noqa: BLE001 - never raise into the builder: stop it instead
                return False

    return StopOnSignal()


def build_plan(
    lib: Any, flavour: Flavour, source: Path, job: EngineJob, opts: BuildOptions, timing_cache: Path | None
) -> Plan:
    """Parse `source`, check its I/O, set the profile, build; the plan in memory (nothing written but the
    timing cache of TensorRT 10/11)."""
    log = logger(flavour)
    since = len(log.lines)
    t0 = time.perf_counter()
    with interrupts.native():  # the logger calls back into Python from C++: a signal is acted on after
        builder: trt.Builder = lib.Builder(log)
        network, _parser = network_from_onnx(lib, flavour, builder, source)
    io = network_io(network)
    check_io(source, io, set(job.dims), set(job.outputs))
    profiles = {n: profile_shapes(n, io[n]["shape"], job.dims[n], job.tails.get(n)) for n in job.dims}
    config = create_config(lib, flavour, builder, profiles, opts, job.dla_core, job.targets)
    cache = load_timing_cache(config, timing_cache) if timing_cache is not None else None
    monitor = stop_on_signal(lib)  # referenced until the build returns: TensorRT keeps only a pointer
    if monitor is not None:
        config.progress_monitor = monitor
    with interrupts.native():  # a signal cancels the build at its next step, then is raised here
        plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise FSAError(f"{flavour.label} could not build {job.engine} from {job.source}: {first_error(log, since)}")
    if cache is not None and timing_cache is not None:
        gate.write_bytes(timing_cache, bytes(cache.serialize()), keep=False)
    warnings = [m for s, m in log.lines[since:] if s == "WARNING"]
    return Plan(bytes(plan), io, profiles, time.perf_counter() - t0, warnings)


def verified_source(art: Artifact, source: str) -> Path:
    """The source graph, and the external weights beside it (`image.onnx.data`), checked by sha256."""
    for name, info in art.file_records().items():
        if info.role == Role.EXTERNAL_DATA and name.startswith(source):
            art.path(name)
    return art.path(source)


def engine_info(lib: Any, flavour: Flavour, art: Artifact, job: EngineJob, plan: Plan, opts: BuildOptions,
                device: tuple[str, str] | None) -> EngineRecord:
    """The meta.json record of a built engine: what the runtime checks before deserialising."""
    header = read_header(plan.data)
    info = EngineRecord(
        flavour=flavour.name,
        library=flavour.module,
        version=lib.__version__,
        # RTX: what the plan's header says it was compiled for; TensorRT 10/11: the build GPU
        targets=tuple(header.targets) if flavour.targets else (f"sm{device[1].replace('.', '')}",) if device else (),
        targets_requested=tuple(job.targets) if job.targets else None,
        gpu=GpuRecord(name=device[0], compute_capability=device[1]) if device else None,
        source=job.source,
        source_sha256=art.file(job.source).sha256,
        profiles=plan.profiles,
        io=plan.io,
        tf32=opts.tf32,
        workspace_mib=opts.workspace_mib,
    )
    if flavour is TRT and device is not None:  # the fields TensorRT 10/11 records always had
        info = replace(info, trt_version=lib.__version__, compute_capability=device[1], gpu_name=device[0],
                       version_compatible=opts.version_compatible, hardware_compatible=opts.hardware_compatible,
                       dla_core=job.dla_core)
    return info


def build_engine(art: Artifact, job: EngineJob, opts: BuildOptions, device: tuple[str, str] | None,
                 flavour: Flavour = TRT) -> float:
    """Build one engine into the folder (atomically) and record it in meta.json; returns seconds."""
    lib = load(flavour)
    source = verified_source(art, job.source)
    cache = None
    if flavour.timing_cache:
        cache = opts.timing_cache or art.root / TIMING_CACHE
    with gate.writing_into(art.root):  # build adds the engine (and the timing cache) and records them
        plan = build_plan(lib, flavour, source, job, opts, cache)
        gate.write_bytes(art.root / job.engine, plan.data, keep=False)
    if cache is not None and cache.parent.resolve() == art.root.resolve():
        art.record(cache.name, FileRecord(role=Role.TIMING_CACHE))
    art.record(job.engine, FileRecord(role=Role.ENGINE, precision=job.precision,
                                      engine=engine_info(lib, flavour, art, job, plan, opts, device)))
    art.save()
    return plan.seconds


def engine_jobs(art: Artifact, opts: BuildOptions, flavour: Flavour = TRT) -> list[EngineJob]:
    """The engines to build, their targets checked: every refusal comes before the first build."""
    meta, files = art.info, art.file_records()
    crop, dim, context = meta.recorded.crop, meta.recorded.embed_dim, meta.recorded.context_length
    jobs = [
        EngineJob(
            engine=flavour.engine_name(opts.precision),
            source=image_source(files, opts.precision, meta.precision),
            precision=opts.precision,
            dims={IMAGE: opts.batch, TEXT_EMBEDDINGS: opts.classes},
            tails={
                IMAGE: None if crop is None else [3, crop, crop],
                TEXT_EMBEDDINGS: None if dim is None else [dim],
            },
            outputs=frozenset({LOGITS}),
            dla_core=opts.dla_core,
            targets=job_targets(flavour, opts, opts.precision),
        )
    ]
    if opts.text:
        if TEXT_ONNX not in files:
            raise FSAError(
                f"{art.root}: no {TEXT_ONNX} recorded in meta.json; pass --no-text to build the image engine"
            )
        precision = files[TEXT_ONNX].precision or meta.precision
        jobs.append(
            EngineJob(
                engine=flavour.text_engine,
                source=TEXT_ONNX,
                precision=precision,
                dims={TOKENS: opts.prompts},
                tails={TOKENS: None if context is None else [(TEXT_MIN_LENGTH, TEXT_OPT_LENGTH, context)]},
                outputs=frozenset({EMBEDDINGS}),
                targets=job_targets(flavour, opts, precision),
            )
        )
    return jobs


# ---------------------------------------------------------------- the verb


def run_build(args: argparse.Namespace) -> int:
    opts = options_from_args(args)
    flavour = pick(opts.engine)
    check_options(flavour, opts)
    lib = load(flavour)  # before hashing gigabytes of ONNX
    device = cuda_device() if flavour.needs_gpu_to_build else None
    art = Artifact.load(args.folder)
    if opts.timing_cache is not None:  # a user's cache file: never a special file or inside another artefact
        gate.guard(opts.timing_cache, f"--timing-cache {opts.timing_cache}")
    opts = replace(opts, engine=flavour.name, precision=opts.precision or art.info.precision)
    if opts.hardware_compatible and device and version_tuple(device[1]) < (8, 0):
        raise FSAError(f"--hardware-compatible needs an Ampere or newer GPU (this one is SM {device[1]})")
    jobs = engine_jobs(art, opts, flavour)
    where = f"{device[0]}, SM {device[1]}" if device else "no GPU needed"
    for job in jobs:
        seconds = build_engine(art, job, opts, device, flavour)
        size = (art.root / job.engine).stat().st_size / 2**20
        engine = art.file(job.engine).engine
        targets = engine.targets or () if engine else ()
        print(f"{job.engine}: {size:.1f} MiB from {job.source} in {seconds:.1f} s "
              f"({flavour.label} {lib.__version__}, {where}; targets {','.join(targets) or '-'})")
    return 0


def add_build(subparsers: Any, help_text: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "build",
        help=help_text,
        description="Build TensorRT engines (image.<precision>[.rtx].engine, text[.rtx].engine) from an "
        "artefact folder, in place. --engine trt: TensorRT 10/11 on the GPU that will run them (data centre, "
        "Jetson); --engine rtx: TensorRT-RTX, no GPU needed, for --targets (RTX cards, A100).",
    )
    add_build_arguments(p)
    p.set_defaults(func=run_build)
    return p

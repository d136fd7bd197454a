"""Artefacts for the rows: export, calibrate and build into the work folder, or take --artifact folders."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fsa_deploy import contract
from fsa_deploy.calibration.quantize import CalibrationOptions, calibrate, output_name
from fsa_deploy.contract import EXPORT_PRECISIONS, IMAGE_ROLES
from fsa_deploy.errors import FSAError
from fsa_deploy.export.trt_build import build_engine, engine_jobs
from fsa_deploy.export.trt_options import BuildOptions, DimRange
from fsa_deploy.models.text import openai_templates
from fsa_deploy.runtime import artifact as A
from fsa_deploy.runtime import gate
from fsa_deploy.runtime.artifact import Artifact
from fsa_deploy.runtime.backends.trt_lib import cuda_device, image_engine_name
from fsa_deploy.validation.bench.data import (
    BENCH_PRECISIONS,
    FAILED,
    MISSING,
    SKIPPED,
    BenchOptions,
    Source,
    one_line,
    say,
)
from fsa_deploy.validation.bench.plan import Machine

# ---------------------------------------------------------------- artefacts: export, calibrate, build


def _attempt(what: str, fn: Callable[[], Source]) -> Source:
    """A preparation step; its failure becomes the reason of the rows that needed it."""
    t0 = time.perf_counter()
    try:
        src = fn()
    except Exception as e:  # noqa: BLE001 - any failure (FSAError, ModelOpt, TensorRT) is that row's reason
        say(f"{what}: failed ({one_line(e)})")
        return Source(status=FAILED, why=f"{what} failed: {one_line(e)}")
    say(f"{what}: done in {time.perf_counter() - t0:.0f} s")
    return src


def export_into(spec: Any, folder: Path, precision: str) -> Source:
    """`fsa export` into the work folder; a folder exported earlier from the same model is reused."""
    from fsa_deploy.export.onnx_export import export_artifact
    from fsa_deploy.models.factory import spec_from_meta

    if (folder / contract.META).is_file():
        with contextlib.suppress(FSAError):
            art = A.Artifact.load(folder)
            same = spec_from_meta(art.info).describe() == spec.describe()
            image = art.file_records().get(contract.IMAGE_ONNX)
            if same and image is not None and image.precision == precision:
                return Source(str(folder), contract.IMAGE_ONNX)
    export_artifact(spec, folder, precision, overwrite=True, progress=False, lint=False)
    return Source(str(folder), contract.IMAGE_ONNX)


def writable_copy(folder: str, work: Path) -> Path:
    """A folder to add files to: the folder itself when bench made it, else a copy in the work
    folder (files hard-linked where the file system allows, else copied; meta.json copied), so that a
    user's artefact is never modified. Not symlinks: an artefact's files must be inside its folder."""
    src = Path(folder).resolve()
    if src.is_relative_to(work.resolve()):
        return src
    # keyed by the artefact's content (meta.json records every file's hash), not its base name: two
    # folders called alike never share a calibrated copy
    dest = work / "derived" / f"{src.name}-{A.sha256_file(src / contract.META)[:16]}"
    if not dest.is_dir():  # kept between runs: built under a temporary name, so never reused half-made
        with gate.staging_folder(dest) as tmp:
            for name in A.Artifact.load(src).files():
                gate.link_or_copy(src / name, tmp / name)  # a hard link, or a copy on another file system
            gate.copy(src / contract.META, tmp / contract.META, keep=False)
    return dest


def calibrate_into(fp32: Source, work: Path, count: int) -> Source:
    """`fsa calibrate` with its defaults (int8, entropy, the sample photos) on `count` crops;
    ModelOpt's chatter goes to calibrate.log in the work folder."""
    folder = writable_copy(str(fp32.folder), work)
    log = work / "calibrate.log"

    with gate.open_append(log) as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        calibrate(folder, CalibrationOptions(precision="int8", count=count, lint=False), progress=True)
    return Source(str(folder), output_name("int8"))


def build_engine_into(graph: Source, precision: str, work: Path, batch: int, classes: int) -> Source:
    """`fsa build` of one image engine (no text engine: bench times crops only)."""
    folder = writable_copy(str(graph.folder), work)
    art = A.Artifact.load(folder)
    name = image_engine_name(precision)
    if name not in art.files():
        opts = BuildOptions(precision=precision, batch=DimRange(batch, batch),
                            classes=DimRange(classes, max(classes, 256)), prompts=DimRange(1, 1), text=False)
        for job in engine_jobs(art, opts):
            build_engine(art, job, opts, cuda_device())
    return Source(str(folder), name)


def graphs_from_exports(spec: Any, work: Path, machine: Machine, need: set[str], count: int) -> dict[str, Source]:
    """Default mode: export fp32 and fp16 into the work folder, calibrate int8 from fp32
    (only what the selected rows need)."""
    exports: list[str] = [p for p in EXPORT_PRECISIONS if p in need or (p == "fp32" and "int8" in need)]
    graphs = {p: _attempt(f"export {p}", functools.partial(export_into, spec, work / p, p)) for p in exports}
    if "int8" in need:
        graphs["int8"] = int8_source(graphs["fp32"], work, machine, count)
    return graphs


def int8_source(fp32: Source, work: Path, machine: Machine, count: int) -> Source:
    if machine.modelopt_missing:
        return Source(status=MISSING, why=machine.modelopt_missing)
    if fp32.folder is None:
        return Source(status=FAILED, why=f"needs the fp32 export ({fp32.why})")

    if "image.int8.onnx" in A.Artifact.load(fp32.folder).files():
        return Source(fp32.folder, "image.int8.onnx")
    return _attempt("calibrate int8", lambda: calibrate_into(fp32, work, count))


def graphs_from_artifacts(folders: tuple[str, ...], work: Path, machine: Machine, need: set[str], count: int
                          ) -> dict[str, Source]:
    """--artifact mode: each folder's image graphs at their recorded precisions; int8 is
    calibrated into a copy when no folder has it; a missing fp32/fp16 export is skipped."""
    graphs: dict[str, Source] = {}
    for folder in folders:
        files = A.Artifact.load(folder).file_records()
        for name, info in files.items():
            if info.role in IMAGE_ROLES:
                graphs.setdefault(info.precision or "fp32", Source(folder, name))
    for p in EXPORT_PRECISIONS:
        graphs.setdefault(p, Source(status=SKIPPED, why=f"no {p} image graph in the --artifact folders "
                                    f"(fsa export --precision {p}, then add that folder with --artifact)"))
    if "int8" not in graphs and "int8" in need:
        graphs["int8"] = int8_source(graphs["fp32"], work, machine, count)
    order = {p: i for i, p in enumerate(BENCH_PRECISIONS)}
    return dict(sorted(graphs.items(), key=lambda kv: order.get(kv[0], len(order))))


def engine_sources(graphs: dict[str, Source], work: Path, batch: int, classes: int, need: set[str]
                   ) -> dict[str, Source]:
    """TensorRT engines of the image graphs the rows need, built into the work folder (or reused)."""
    out = {}
    for p, g in graphs.items():
        if p not in need:
            continue
        if g.folder is None:
            out[p] = Source(status=g.status, why=g.why)
        else:
            build = functools.partial(build_engine_into, g, p, work, batch, classes)
            out[p] = _attempt(f"build TensorRT {p}", build)
    return out


def prepare(opts: BenchOptions, work: Path, machine: Machine, spec: Any, need: set[str], need_engines: set[str]
            ) -> tuple[dict[str, Source], dict[str, Source]]:
    if opts.artifacts:
        graphs = graphs_from_artifacts(opts.artifacts, work, machine, need, opts.calibration_count)
    else:
        graphs = graphs_from_exports(spec, work, machine, need, opts.calibration_count)
    engines = engine_sources(graphs, work, opts.batch, len(opts.vocab.queries), need_engines)
    return graphs, engines


@contextlib.contextmanager
def work_folder(path: str | None) -> Iterator[Path]:
    if path:
        yield gate.check_folder(path, "--work")  # never inside an artefact folder
    else:
        with gate.temp_dir("fsa-bench-") as tmp:
            yield tmp


def model_of(opts: BenchOptions) -> tuple[Any, tuple[str, ...]]:
    """The model selection and prompt templates: the options', or the artefacts' meta.json."""
    from fsa_deploy.models.factory import spec_from_meta

    if not opts.artifacts:
        return opts.spec, tuple(openai_templates())
    arts = [Artifact.load(f) for f in opts.artifacts]
    specs = [spec_from_meta(a.info, str(a.root / contract.META)) for a in arts]
    for a, s in zip(arts[1:], specs[1:]):
        if s.describe() != specs[0].describe():
            raise FSAError(f"--artifact {a.root}: exported from another model than {arts[0].root}")
    return specs[0], tuple(arts[0].info.recorded.templates or openai_templates())



"""The run: prepare, plan, measure each row in a child, add the ratios."""

from __future__ import annotations

from typing import Any

from fsa_deploy.errors import FSAError
from fsa_deploy.validation.bench.data import (
    FAILED,
    INVALID,
    OK,
    BenchOptions,
    BenchPlan,
    BenchResult,
    BenchRow,
    Measured,
    say,
)
from fsa_deploy.validation.bench.isolate import Children
from fsa_deploy.validation.bench.measure import measure_row, measure_work
from fsa_deploy.validation.bench.plan import Machine, needed_precisions, plan_rows
from fsa_deploy.validation.bench.prepare import model_of, prepare, work_folder
from fsa_deploy.validation.bench.report import Report, machine_info

# ---------------------------------------------------------------- the run


def run_rows(children: Children, plan: BenchPlan, rows: list[BenchRow], text: Any) -> list[BenchResult]:
    out = []
    for i, row in enumerate(rows, 1):
        if not row.runs:
            out.append(BenchResult(row, str(row.status), row.why))
            continue
        say(f"[{i}/{len(rows)}] {row.name}")
        try:
            m: Measured = children.run(measure_row, plan, row, text)
        except RuntimeError as e:
            out.append(BenchResult(row, FAILED, str(e)))
            continue
        if row.reference:
            out.append(BenchResult(row, OK, None, m))
        elif m.fidelity is None:
            out.append(BenchResult(row, FAILED, f"ran, but fidelity could not be measured: {m.fidelity_error}", m))
        elif m.fidelity.passed:
            out.append(BenchResult(row, OK, None, m))
        else:
            out.append(BenchResult(row, INVALID, f"{m.fidelity.profile} profile: " + "; ".join(m.fidelity.failures), m))
    return out


def add_ratios(results: list[BenchResult], work: dict[str, Any], rates: dict[str, Any]) -> None:
    """Speedup against the literal fp32 row of the same device; distance from the roofline floor."""
    from fsa_deploy.validation.bench.flops import floor_ms

    base = {r.row.device: r.measured for r in results if r.row.baseline and r.measured}
    for r in results:
        m, b = r.measured, base.get(r.row.device)
        if m is None:
            continue
        if b is not None:
            r.speedup, r.speedup_image = b.crop.median / m.crop.median, b.image.median / m.image.median
        if r.row.device in rates:
            r.floor_ms = floor_ms(work, rates[r.row.device], r.row.precision)
            r.x_floor = m.crop.median / r.floor_ms


def run_bench(opts: BenchOptions) -> Report:
    """Export (or take) the artefacts, run every row, and return the report."""
    machine = Machine.probe()
    spec, templates = model_of(opts)
    plan = BenchPlan(spec, opts.images, opts.vocab, templates, opts.repeats, opts.warmup, opts.batch, opts.threads)
    need = needed_precisions(opts, machine)
    children = Children()
    with work_folder(opts.work) as work:
        graphs, engines = prepare(opts, work, machine, spec, *need)
        rows = plan_rows(opts, machine, graphs, engines)
        say("class embeddings, work per crop and device rates")
        try:
            w = children.run(measure_work, plan, opts.devices)
        except RuntimeError as e:
            raise FSAError(f"the PyTorch reference failed: {e}") from e
        results = run_rows(children, plan, rows, w["text"])
    add_ratios(results, w["work"], w["rates"])
    settings = {"images": list(opts.images), "classes": len(opts.vocab.queries), "repeats": opts.repeats,
                "warmup": opts.warmup, "batch": opts.batch, "threads": opts.threads,
                "max_batch": opts.batch,  # the key older readers use: the same crops per call
                "artifacts": list(opts.artifacts), "work": opts.work, "templates": len(templates)}
    return Report(machine_info(opts.threads), spec.describe(), settings, w["work"], w["rates"], results)



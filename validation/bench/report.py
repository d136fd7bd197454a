"""The report: machine, work, rows; the terminal table, Markdown, the plot, and the --min-agreement gate."""

from __future__ import annotations

import contextlib
import json
import os
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from fsa_deploy.errors import CheckFailed, FSAError
from fsa_deploy.runtime import gate as outputs_gate  # `gate` here is the --min-agreement check
from fsa_deploy.validation.bench.data import BENCH_PRECISIONS, FAILED, INVALID, OK, BenchOptions, BenchResult


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "Hardware")):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(threads: int | None) -> dict[str, Any]:
    """What absolute times need beside them: platform, CPU, cores, threads, GPU, library versions."""
    import torch

    def ver(dist: str) -> str | None:
        try:
            return version(dist)
        except PackageNotFoundError:
            return None

    return {
        "platform": platform.platform(), "cpu": cpu_model(), "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": threads or torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(), "torch": torch.__version__,
        "onnxruntime": ver("onnxruntime") or ver("onnxruntime-gpu"), "tensorrt": ver("tensorrt"),
    }


@dataclass
class Report:
    machine: dict[str, Any]
    model: dict[str, Any]
    settings: dict[str, Any]
    work: dict[str, Any]  # part -> fsa_deploy.validation.bench.flops.PartWork
    rates: dict[str, Any]  # device -> fsa_deploy.validation.bench.flops.Rates
    results: list[BenchResult] = field(default_factory=list)

    def floors(self) -> dict[str, dict[str, float]]:
        from fsa_deploy.validation.bench.flops import floor_ms

        return {d: {p: floor_ms(self.work, r, p) for p in BENCH_PRECISIONS} for d, r in self.rates.items()}

    def baselines(self) -> dict[str, str | None]:
        return {d: next((r.row.name for r in self.results if r.row.baseline and r.row.device == d and r.measured),
                        None) for d in self.rates}

    def as_dict(self) -> dict[str, Any]:
        keys = ("flops", "param_bytes", "activation_bytes")
        total = {k: sum(getattr(w, k) for w in self.work.values()) for k in keys}
        return {
            "machine": self.machine, "model": self.model, "settings": self.settings,
            "work": {**{p: {**asdict(w), "bytes": w.bytes} for p, w in self.work.items()},
                     "total": {**total, "bytes": total["param_bytes"] + 2 * total["activation_bytes"]}},
            "work_counts": "matmul/conv FLOPs of one crop (torch.utils.flop_counter, deploy reference, batch 1); "
                           "bytes = parameters once + every op output written and read once (views excluded)",
            "rates": {d: asdict(r) for d, r in self.rates.items()},
            "floors_ms": self.floors(), "baselines": self.baselines(),
            "rows": [r.as_dict() for r in self.results],
        }


# ---------------------------------------------------------------- output: table, Markdown, plot


def _cell(row: dict[str, Any], key: str, fmt: str, scale: float = 1.0, sub: str | None = None) -> str:
    """One table cell from a row of Report.as_dict(); '-' where the row has no such figure."""
    v = row.get(key)
    if sub is not None and v is not None:
        v = v.get(sub)
    return "-" if v is None else format(v * scale, fmt)


# header -> cell of a row (a row of Report.as_dict()["rows"])
COLUMNS: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("row", lambda d: d["name"]),
    ("status", lambda d: d["status"]),
    ("size MiB", lambda d: _cell(d, "size_mib", ".1f")),
    ("agree %", lambda d: _cell(d, "pixel_agreement", ".3f", 100)),
    ("mIoU", lambda d: _cell(d, "miou", ".4f")),
    ("crop ms p50", lambda d: _cell(d, "crop_ms", ".2f", sub="median")),
    ("p90", lambda d: _cell(d, "crop_ms", ".2f", sub="p90")),
    ("spread %", lambda d: _cell(d, "crop_ms", ".0f", 100, sub="spread")),
    ("image ms", lambda d: _cell(d, "image_ms", ".1f", sub="median")),
    ("crops/s", lambda d: _cell(d, "crops_per_s", ".2f")),
    ("speedup", lambda d: _cell(d, "speedup", ".2f") + ("x" if d["speedup"] else "")),
    ("peak RSS MiB", lambda d: _cell(d, "peak_rss_mib", ".0f")),
    ("device MiB", lambda d: _cell(d, "peak_device_mib", ".0f")),
    ("x floor", lambda d: _cell(d, "x_floor", ".1f")),
)


def _gflop(n: float) -> str:
    return f"{n / 1e9:.3g} GFLOP"


def header_lines(rep: Report) -> list[str]:
    m, mo, s = rep.machine, rep.model, rep.settings
    proxy = f" + {mo['proxy']}" if mo.get("proxy") else ""
    names = ", ".join(Path(i).name for i in s["images"])
    out = [f"model: {mo['model']}{proxy}, {mo['attention']} attention, crop {mo['crop']}, "
           f"weights {json.dumps(mo['weights'])}",
           f"images: {names}; {s['classes']} queries; {s['repeats']} timed repeats after {s['warmup']} warm-up; "
           f"batch <= {s.get('batch', s.get('max_batch'))}",
           f"machine: {m['platform']}; CPU {m['cpu']}, {m['cores_usable']} cores, torch {m['torch_threads']} threads; "
           f"GPU {m['gpu'] or 'none'}",
           "work per crop: " + ", ".join(f"{p} {_gflop(w.flops)} / {w.bytes / 1e6:.0f} MB"
                                         for p, w in rep.work.items())]
    for d, r in rep.rates.items():
        rates = ", ".join(f"{k} {v / 1e12:.3g} TFLOP/s" for k, v in r.matmul_flops.items())
        floors = ", ".join(f"{p} {v:.3g} ms" for p, v in rep.floors()[d].items())
        out.append(f"{d}: matmul {rates}; copy {r.copy_bytes / 1e9:.3g} GB/s; floor per crop {floors}")
    return out


def notes(rep: Report) -> list[str]:
    out = [f"{r.row.name}: {r.status}: {r.reason}" for r in rep.results if r.reason]
    out += [f"{r.row.name}: {r.measured.note}" for r in rep.results if r.measured and r.measured.note]
    return out


METHOD = ("speedup: crop latency of the PyTorch literal fp32 row of the same device / the row's; fidelity: "
          "pixel agreement and mIoU of the label maps against validate's reference (the PyTorch deploy fp32 CPU "
          "row, which has none of its own), under the tolerance profile of the row's precision; "
          "x floor: crop latency / roofline floor")


def format_terminal(rep: Report) -> str:
    head = [c for c, _ in COLUMNS]
    cells = [[f(r.as_dict()) for _, f in COLUMNS] for r in rep.results]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
    line = lambda cs: "  ".join(c.ljust(w) for c, w in zip(cs, widths)).rstrip()
    out = header_lines(rep) + ["", line(head), line(["-" * w for w in widths])] + [line(c) for c in cells]
    return "\n".join(out + [""] + notes(rep) + [METHOD])


def format_markdown(rep: Report) -> str:
    head = [c for c, _ in COLUMNS]
    out = ["# fsa bench", ""] + [f"- {h}" for h in header_lines(rep)] + [
        "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(f(r.as_dict()) for _, f in COLUMNS) + " |" for r in rep.results]
    out += ["", "## Notes", ""] + [f"- {n}" for n in notes(rep)] + [f"- {METHOD}"]
    return "\n".join(out) + "\n"


def write_plot(rep: Report, path: str, min_agreement: float | None) -> None:
    """Latency per crop (log) against pixel agreement, one labelled point per measured row."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError as e:
        raise FSAError(f"--plot {path}: matplotlib is not installed: pip install matplotlib") from e
    # by latency, so that neighbours on the x axis get labels at different heights
    pts = sorted((r for r in rep.results if r.measured and r.agreement is not None),
                 key=lambda r: r.measured.crop.median)  # type: ignore[union-attr]
    fig, ax = plt.subplots(figsize=(10, 6), dpi=120)
    colors = {OK: "tab:green", INVALID: "tab:red", FAILED: "tab:orange"}
    for i, r in enumerate(pts):
        x, y = r.measured.crop.median, 100 * r.agreement  # type: ignore[union-attr, operator]
        ax.scatter([x], [y], s=60, color=colors.get(r.status, "gray"), marker="o" if r.row.device == "cpu" else "s",
                   edgecolors="black", zorder=3)
        label = f"{r.row.name}\n" + ("baseline" if r.row.baseline else f"{r.speedup:.2f}x" if r.speedup else "")
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(10, (14, -30, 40, -56)[i % 4]), fontsize=8,
                    arrowprops={"arrowstyle": "-", "color": "gray", "linewidth": 0.6})
    ys = [100 * r.agreement for r in pts] + ([100 * min_agreement] if min_agreement else [])  # type: ignore[operator]
    lo = min(ys, default=99.0)
    ax.set_ylim(lo - max(0.1, (100 - lo) * 0.15), 100 + max(0.05, (100 - lo) * 0.1))
    if min_agreement is not None:
        ax.axhline(100 * min_agreement, color="tab:red", linestyle="--", linewidth=1, label="--min-agreement")
    ax.set_xscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "235" else ""))
    xs = [r.measured.crop.median for r in pts]  # type: ignore[union-attr]
    if xs:
        ax.set_xlim(min(xs) / 1.6, max(xs) * 3.0)  # room for the labels right of the points
    ax.set_xlabel("latency per crop, median (ms, log scale; lower is faster)")
    ax.set_ylabel("pixel agreement with the reference (%)")
    m = rep.machine
    proxy = f" + {rep.model['proxy']}" if rep.model.get("proxy") else ""
    ax.set_title(f"fsa bench: {rep.model['model']}{proxy}, crop {rep.model['crop']}, on {m['gpu'] or m['cpu']}\n"
                 "green: ok, red: failed validation; circle: CPU, square: CUDA; "
                 "label: speedup over the literal row of its device",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    outputs_gate.mkdir(Path(path).parent)
    outputs_gate.write_with(path, fig.savefig, format="png")
    plt.close(fig)


def write_outputs(rep: Report, opts: BenchOptions) -> None:
    if opts.json:
        outputs_gate.mkdir(Path(opts.json).parent)
        outputs_gate.write_json(opts.json, rep.as_dict())
    if opts.md:
        outputs_gate.mkdir(Path(opts.md).parent)
        outputs_gate.write_text(opts.md, format_markdown(rep))
    if opts.plot:
        write_plot(rep, opts.plot, opts.min_agreement)


def gate(results: list[BenchResult], min_agreement: float | None) -> None:
    """--min-agreement: every row that was measured must agree at least that much."""
    if min_agreement is None:
        return
    low = [f"{r.row.name} {r.agreement:.6f}" for r in results
           if r.agreement is not None and r.agreement < min_agreement]
    if low:
        raise CheckFailed(f"pixel agreement under --min-agreement {min_agreement:g}: " + ", ".join(low))



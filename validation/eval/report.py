"""The evaluation's JSON (fractions), its tables in points (stdout as mmseg prints them, Markdown,
CSV, LaTeX), the per-class plot (worst deltas first), and `fsa eval paper`'s one row per model.

Points are rounded to 2 decimals for reading; a difference that rounds to nothing is printed
"<0.01" (never "-0.00", never "100.00%" when pixels differ); the JSON keeps the exact fractions.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from fsa_deploy.contract import PAPER_BENCHMARKS
from fsa_deploy.errors import FSAError
from fsa_deploy.runtime import gate
from fsa_deploy.validation.eval.metrics import scores
from fsa_deploy.validation.eval.runner import Row


def _num(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def row_json(r: Row, ref: Row | None) -> dict[str, Any]:
    assert r.cm is not None
    s = scores(r.cm)
    out: dict[str, Any] = {
        "name": r.name, "backend": r.backend, "graph": r.graph,
        "miou": _num(s.miou), "aacc": _num(s.aacc), "macc": _num(s.macc),
        "iou": [_num(v) for v in s.iou], "acc": [_num(v) for v in s.acc], "confusion": r.cm.tolist(),
        "images_per_s": (r.images_run / r.seconds) if r.images_run and r.seconds > 0 else None,
    }
    if ref is not None and not r.is_reference:
        assert ref.cm is not None
        rs = scores(ref.cm)
        out["miou_delta"] = _num(s.miou - rs.miou)
        out["pixel_agreement"] = (r.agree[0] / r.agree[1]) if r.agree[1] else None
    return out


@dataclass
class EvalReport:
    """One benchmark's evaluation: the fields, in this order, are the keys of `fsa eval --json`
    (show_dir only when --show-dir was given). Rows stay the JSON's records: {name, backend,
    graph, miou, aacc, macc, iou, acc, confusion, images_per_s[, miou_delta, pixel_agreement]}."""

    dataset: str
    method: str
    protocol: dict[str, Any]
    classes: list[str]  # the prompts of each class, "; "-joined
    class_names: list[str]
    images: int
    rows: list[dict[str, Any]]
    artifact: str
    artifact_sha256: str
    setup: dict[str, Any] = field(default_factory=dict)
    show_dir: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.show_dir is None:
            del out["show_dir"]
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> EvalReport:
        """A report read back (--work); ValueError when a key is missing (other keys are ignored)."""
        names = {f.name for f in fields(cls)}
        missing = sorted(n for n in names - {"setup", "show_dir"} if n not in obj)
        if missing:
            raise ValueError(f"not an eval report (no {', '.join(missing)})")
        return cls(**{k: v for k, v in obj.items() if k in names})


@dataclass
class PaperReport:
    """`fsa eval paper`: one row per model, {name, backend, cells {benchmark: mIoU}, avg}; the keys
    of its --json."""

    rows: list[dict[str, Any]]
    missing: list[str]
    artifact_sha256: str

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def make_report(dataset: str, method: str, protocol: dict[str, Any], classes: list[str], class_names: list[str],
          images: int, rows: list[Row], artifact: str, artifact_sha256: str, setup: dict[str, Any],
          show_dir: dict[str, str] | None = None) -> EvalReport:
    ref = next((r for r in rows if r.is_reference), None)
    return EvalReport(dataset, method, protocol, classes, class_names, images, [row_json(r, ref) for r in rows],
                      artifact, artifact_sha256, setup, show_dir)


def _pts(v: float | None, sign: bool = False) -> str:
    """Points to 2 decimals; with `sign`, a difference: "<0.01" (signed) where it would print as 0.00."""
    if v is None:
        return "-"
    if sign:
        return delta_text(v)
    return f"{100 * v:.2f}"


def delta_text(v: float | None) -> str:
    """A difference of fractions in points: 2 decimals, "+<0.01" / "-<0.01" below 0.01 point, 0.00 only
    when exactly equal."""
    if v is None:
        return "-"
    d = 100 * v
    if d == 0:
        return "0.00"
    if abs(d) < 0.01:
        return "+<0.01" if d > 0 else "-<0.01"
    return f"{d:+.2f}"


def share_text(v: float | None) -> str:
    """A share of pixels in percent: never 100.00% unless every pixel agrees (then ">99.99%")."""
    if v is None:
        return "-"
    if v < 1 and 100 * v >= 99.995:
        return ">99.99%"
    return f"{100 * v:.2f}%"


def markdown(report: EvalReport) -> str:
    p = report.protocol
    lines = [f"# fsa eval: {report.dataset}, {report.method} ({report.images} images)", "",
             f"Protocol: short side {p['short_side']}, long side {p['long_side']}, crop {p['crop']}, "
             f"stride {p['stride']}, prob_thd {p['prob_thd']}, reduce_zero_label {p['reduce_zero_label']}, "
             f"ignore index {p['ignore_index']}.", ""]
    if p["differs_from_official"]:
        lines += ["Differs from the official protocol:", ""] + [f"- {d}" for d in p["differs_from_official"]] + [""]
    lines += ["| row | backend | graph | mIoU | aAcc | mAcc | mIoU delta | pixel agreement | images/s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in report.rows:
        ips = f"{r['images_per_s']:.2f}" if r["images_per_s"] else "-"
        lines.append(f"| {r['name']} | {r['backend']} | {r['graph'] or '-'} | {_pts(r['miou'])} | {_pts(r['aacc'])} "
                     f"| {_pts(r['macc'])} | {_pts(r.get('miou_delta'), True)} "
                     f"| {share_text(r.get('pixel_agreement'))} "
                     f"| {ips} |")
    lines += ["", "Per-class IoU (points):", "",
              "| class | " + " | ".join(r["name"] for r in report.rows) + " |",
              "|---|" + "---|" * len(report.rows)]
    for i, name in enumerate(report.class_names):
        lines.append(f"| {name} | " + " | ".join(_pts(r["iou"][i]) for r in report.rows) + " |")
    lines += [""] + [f"- {line}" for line in setup_lines(report)]
    return "\n".join(lines) + "\n"


def class_order(report: EvalReport) -> list[int]:
    """Classes by the worst delta of any artefact row against the reference (else by the first
    row's IoU), lowest first; classes absent everywhere last."""
    rows = report.rows
    ref = next((r for r in rows if r["backend"] == "pytorch" and r["graph"] is None and "miou_delta" not in r), None)

    def key(i: int) -> float:
        if ref is not None and len(rows) > 1:
            ds = [r["iou"][i] - ref["iou"][i] for r in rows if r is not ref
                  and r["iou"][i] is not None and ref["iou"][i] is not None]
            return min(ds) if ds else math.inf
        v = rows[0]["iou"][i]
        return v if v is not None else math.inf

    return sorted(range(len(report.classes)), key=key)


def plot(report: EvalReport, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise FSAError(f"--plot {path}: needs matplotlib (pip install matplotlib)") from e

    order = class_order(report)
    rows = report.rows
    names = [report.class_names[i] for i in order]
    width = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(order) + 2), 4.5))
    x = np.arange(len(order))
    for j, r in enumerate(rows):
        vals = [100 * r["iou"][i] if r["iou"][i] is not None else 0.0 for i in order]
        ax.bar(x + j * width, vals, width, label=f"{r['name']} ({r['backend']}): mIoU {_pts(r['miou'])}")
    ax.set_xticks(x + width * (len(rows) - 1) / 2, names, rotation=90, fontsize=7)
    ax.set_ylabel("IoU (points)")
    ax.set_title(f"{report.dataset}, {report.method}: per-class IoU, worst deltas first")
    ax.legend(fontsize=7)
    fig.tight_layout()
    gate.write_with(path, fig.savefig, format="png", dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- tables to paste


def _ref(report: EvalReport) -> dict[str, Any] | None:
    return next((r for r in report.rows if "miou_delta" not in r and r["backend"] == "pytorch"
                 and r["graph"] is None and any("miou_delta" in o for o in report.rows)), None)


def per_class_table(report: EvalReport) -> tuple[list[str], list[list[str]]]:
    """mmseg's per-class table (Class, IoU, Acc) with a column pair per row, and the IoU delta of
    each artefact row against the reference; the prompt line beside each dataset class name."""
    rows, ref = report.rows, _ref(report)
    head = ["Class"]
    for r in rows:
        tag = "" if len(rows) == 1 else f" {r['name']}"
        head += [f"IoU{tag}", f"Acc{tag}"]
        if ref is not None and r is not ref:
            head.append(f"dIoU{tag}")
    head.append("Prompts")
    body = []
    for i, name in enumerate(report.class_names):
        line = [name]
        for r in rows:
            line += [_pts(r["iou"][i]), _pts(r["acc"][i])]
            if ref is not None and r is not ref:
                a, b = r["iou"][i], ref["iou"][i]
                line.append(delta_text(a - b) if a is not None and b is not None else "-")
        line.append(report.classes[i])
        body.append(line)
    return head, body


def summary_table(report: EvalReport) -> tuple[list[str], list[list[str]]]:
    """mmseg's summary (aAcc, mIoU, mAcc) per row, with the mIoU delta and the pixel agreement."""
    head = ["Row", "Backend", "aAcc", "mIoU", "mAcc", "mIoU delta", "Pixel agreement", "Images/s"]
    body = []
    for r in report.rows:
        ips = f"{r['images_per_s']:.2f}" if r.get("images_per_s") else "-"
        body.append([r["name"], r["backend"], _pts(r["aacc"]), _pts(r["miou"]), _pts(r["macc"]),
                     delta_text(r.get("miou_delta")) if "miou_delta" in r else "-",
                     share_text(r.get("pixel_agreement")), ips])
    return head, body


def ascii_table(head: list[str], body: list[list[str]], width: int = 40) -> str:
    """A PrettyTable-like box, as mmseg's logger prints its tables; long cells cut at `width`."""
    cut = [[c if len(c) <= width else c[: width - 3] + "..." for c in line] for line in [head, *body]]
    widths = [max(len(line[j]) for line in cut) for j in range(len(head))]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    fmt = lambda line: "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |"
    return "\n".join([rule, fmt(cut[0]), rule, *[fmt(line) for line in cut[1:]], rule])


def setup_lines(report: EvalReport) -> list[str]:
    """What the numbers were made with, and every difference from the official protocol."""
    s, p = report.setup, report.protocol
    lines = []
    if s:
        lines.append(f"model {s.get('model')}, proxy {s.get('proxy') or '-'}, weights {s.get('weights')}, "
                     f"proxy weights {s.get('proxy_weights') or '-'}, crop {s.get('crop')}")
        lines.append("precision: " + ", ".join(f"{k} {v}" for k, v in s.get("precision", {}).items()))
        lines.append("hyper-parameters: " + ", ".join(f"{k} {v:g}" for k, v in s.get("hyper_parameters", {}).items()))
        lines.append(f"artefact {s.get('artifact_sha256', '')[:16]} (image graph sha256), text graph "
                     f"{str(s.get('text_sha256'))[:16]}")
    lines.append(f"protocol: resize {p.get('resize', 'float')} (short side {p['short_side']}, long side "
                 f"{p['long_side']}), windows {p['crop']} stride {p['stride']}, prob_thd {p['prob_thd']}, "
                 f"reduce_zero_label {p['reduce_zero_label']}")
    lines += [f"differs from the official: {d}" for d in p["differs_from_official"]]
    return lines


def stdout_text(report: EvalReport) -> str:
    head, body = per_class_table(report)
    sh, sb = summary_table(report)
    return "\n".join([f"per class results ({report.dataset}, {report.images} images):", ascii_table(head, body),
                      "Summary:", ascii_table(sh, sb), *setup_lines(report)]) + "\n"


def csv_of(*tables: tuple[list[str], list[list[Any]]]) -> str:
    """Tables (head, body) as CSV, an empty row between two: `--csv` of a benchmark and of the paper row."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for i, (head, body) in enumerate(tables):
        if i:
            w.writerow([])
        w.writerow(head)
        w.writerows(body)
    return buf.getvalue()


def csv_text(report: EvalReport) -> str:
    return csv_of(per_class_table(report), summary_table(report))


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"$<$"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(c, c) for c in text)


def latex_table(head: list[str], body: list[list[str]]) -> str:
    cols = "l" + "r" * (len(head) - 1)
    lines = [f"\\begin{{tabular}}{{{cols}}}", r"\hline", " & ".join(latex_escape(h) for h in head) + r" \\",
             r"\hline"]
    lines += [" & ".join(latex_escape(c) for c in line) + r" \\" for line in body]
    lines += [r"\hline", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def latex_text(report: EvalReport) -> str:
    head, body = per_class_table(report)
    head, body = head[:-1], [line[:-1] for line in body]  # prompts: too wide for a paper's table
    return latex_table(head, body) + "\n" + latex_table(*summary_table(report))


# ---------------------------------------------------------------- fsa eval paper


def paper_table(paper: PaperReport) -> tuple[list[str], list[list[str]]]:
    head = ["Row", "Backend", *[PAPER_COLUMNS[b] for b in PAPER_BENCHMARKS], "Avg."]
    body = [[r["name"], r["backend"], *[_pts(r["cells"].get(b)) for b in PAPER_BENCHMARKS], _pts(r["avg"])]
            for r in paper.rows]
    return head, body


PAPER_COLUMNS = {"voc21": "VOC21", "context60": "Context60", "coco-object": "Object", "voc20": "VOC20",
                 "context59": "Context59", "coco-stuff": "Stuff", "cityscapes": "City", "ade20k": "ADE"}


def paper_markdown(paper: PaperReport) -> str:
    head, body = paper_table(paper)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *["| " + " | ".join(b) + " |" for b in body]]
    if paper.missing:
        lines += ["", "Not found under --root (not run): " + ", ".join(paper.missing)]
    return "\n".join(lines) + "\n"


def paper_csv(paper: PaperReport) -> str:
    return csv_of(paper_table(paper))


def paper_latex(paper: PaperReport) -> str:
    return latex_table(*paper_table(paper))

"""The evaluation's JSON (fractions), Markdown (points) and per-class plot (worst deltas first)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
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
        "iou": [_num(v) for v in s.iou], "confusion": r.cm.tolist(),
        "images_per_s": (r.images_run / r.seconds) if r.images_run and r.seconds > 0 else None,
    }
    if ref is not None and not r.is_reference:
        rs = scores(ref.cm)
        out["miou_delta"] = _num(s.miou - rs.miou)
        out["pixel_agreement"] = (r.agree[0] / r.agree[1]) if r.agree[1] else None
    return out


def build(dataset: str, method: str, protocol: dict[str, Any], classes: list[str], images: int, rows: list[Row],
          extra: dict[str, Any]) -> dict[str, Any]:
    ref = next((r for r in rows if r.is_reference), None)
    return {"dataset": dataset, "method": method, "protocol": protocol, "classes": classes, "images": images,
            "rows": [row_json(r, ref) for r in rows], **extra}


def _pts(v: float | None, sign: bool = False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:+.2f}" if sign else f"{100 * v:.2f}"


def markdown(report: dict[str, Any]) -> str:
    p = report["protocol"]
    lines = [f"# fsa eval: {report['dataset']}, {report['method']} ({report['images']} images)", "",
             f"Protocol: short side {p['short_side']}, long side {p['long_side']}, crop {p['crop']}, "
             f"stride {p['stride']}, prob_thd {p['prob_thd']}, reduce_zero_label {p['reduce_zero_label']}, "
             f"ignore index {p['ignore_index']}.", ""]
    if p["differs_from_official"]:
        lines += ["Differs from the official protocol:", ""] + [f"- {d}" for d in p["differs_from_official"]] + [""]
    lines += ["| row | backend | graph | mIoU | aAcc | mAcc | mIoU delta | pixel agreement | images/s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        ips = f"{r['images_per_s']:.2f}" if r["images_per_s"] else "-"
        lines.append(f"| {r['name']} | {r['backend']} | {r['graph'] or '-'} | {_pts(r['miou'])} | {_pts(r['aacc'])} "
                     f"| {_pts(r['macc'])} | {_pts(r.get('miou_delta'), True)} | {_pts(r.get('pixel_agreement'))} "
                     f"| {ips} |")
    lines += ["", "Per-class IoU (points):", "",
              "| class | " + " | ".join(r["name"] for r in report["rows"]) + " |",
              "|---|" + "---|" * len(report["rows"])]
    for i, c in enumerate(report["classes"]):
        lines.append(f"| {c.split(';')[0]} | " + " | ".join(_pts(r["iou"][i]) for r in report["rows"]) + " |")
    return "\n".join(lines) + "\n"


def class_order(report: dict[str, Any]) -> list[int]:
    """Classes by the worst delta of any artefact row against the reference (else by the first
    row's IoU), lowest first; classes absent everywhere last."""
    rows = report["rows"]
    ref = next((r for r in rows if r["backend"] == "pytorch" and r["graph"] is None and "miou_delta" not in r), None)

    def key(i: int) -> float:
        if ref is not None and len(rows) > 1:
            ds = [r["iou"][i] - ref["iou"][i] for r in rows if r is not ref
                  and r["iou"][i] is not None and ref["iou"][i] is not None]
            return min(ds) if ds else math.inf
        v = rows[0]["iou"][i]
        return v if v is not None else math.inf

    return sorted(range(len(report["classes"])), key=key)


def plot(report: dict[str, Any], path: str) -> None:
    from fsa_deploy.errors import FSAError

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise FSAError(f"--plot {path}: needs matplotlib (pip install matplotlib)") from e
    from fsa_deploy.runtime.artifact import atomic_file

    order = class_order(report)
    rows = report["rows"]
    names = [report["classes"][i].split(";")[0] for i in order]
    width = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(order) + 2), 4.5))
    x = np.arange(len(order))
    for j, r in enumerate(rows):
        vals = [100 * r["iou"][i] if r["iou"][i] is not None else 0.0 for i in order]
        ax.bar(x + j * width, vals, width, label=f"{r['name']} ({r['backend']}): mIoU {_pts(r['miou'])}")
    ax.set_xticks(x + width * (len(rows) - 1) / 2, names, rotation=90, fontsize=7)
    ax.set_ylabel("IoU (points)")
    ax.set_title(f"{report['dataset']}, {report['method']}: per-class IoU, worst deltas first")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)

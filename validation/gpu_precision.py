"""What a GPU computes in fp16, per stage, without TensorRT (`make gpu-check`; a CPU dry run with --device cpu).

For each case (tiny and full size; plain random init and `--real-stats`), on sample-photo crops, the PyTorch
reference in fp32 against:
- `fp32`: the same fp32 model run again, the comparison's floor (exactly 0 on the CPU; CUDA may pick other kernels);
- `half`: the whole model in torch.float16 (true half: every kernel in fp16);
- `split`: the trunk and the proxy in fp16, the last block, the feedback and the tail in fp32 (the export's split);
- `autocast`: torch.autocast(fp16), the official code's own fp16 path (matmuls in fp16, reductions in fp32);
each stage's relative L2 against fp32 and its non-finite count, and the logits' pixel agreement. And where the
graph is small enough to emulate (tiny), the fp16 emulation's prediction (validation.fp16_emulate, both precision
models, on the naive all-fp16 graph): its pixel agreement with fp32 and with the real `half` run on this device,
after the fp32 graph itself is checked against the reference (`graph_rel_l2`, so a prediction is of this model).
Rows are written as they finish: a run cut short by gpu_check.sh's time budget keeps what it measured.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fsa_deploy.cli import OneLineParser
from fsa_deploy.contract import IMAGE_ONNX
from fsa_deploy.errors import FSAError
from fsa_deploy.export.fp16_audit import to_fp16
from fsa_deploy.models.factory import ModelSpec, build_reference, default_hp
from fsa_deploy.models.weights import Weights
from fsa_deploy.runtime import gate
from fsa_deploy.runtime.images import load_image, sample_photos
from fsa_deploy.runtime.pipeline import Geometry, crops_of, resize_image
from fsa_deploy.validation.fp16_emulate import PRECISION_MODELS, run_graph

CASES: dict[str, dict[str, Any]] = {"tiny": dict(model="tiny", proxy="tiny-dino", crop=112),
         "full": dict(model="ViT-B-16", proxy="dino", crop=336)}
MODES = ("half", "split", "autocast")
CONTROL = "fp32"
GRAPH_MATCH = 1e-4  # the fp32 graph's logits against the reference's: above this it is not this model's graph


def spec_of(size: str, real: bool):
    c = CASES[size]
    return ModelSpec(model=c["model"], weights=Weights(seed=0, real_stats=real), proxy=c["proxy"], crop=c["crop"],
                     hp=default_hp(c["model"], c["proxy"]))


def inputs(crop: int, n: int, embed_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    geo = Geometry(crop=crop)
    crops = [crops_of(resize_image(load_image(p), geo), geo)[0][0] for p in sample_photos()[:n]]
    text = torch.nn.functional.normalize(torch.randn(5, embed_dim, generator=torch.Generator().manual_seed(0)), dim=-1)
    return torch.from_numpy(np.stack(crops)).float(), text


def forward(model, image: torch.Tensor, text: torch.Tensor, autocast: bool = False) -> dict[str, torch.Tensor]:
    stages: dict[str, torch.Tensor] = {}
    with torch.no_grad(), torch.autocast(image.device.type, dtype=torch.float16, enabled=autocast):
        stages["logits"] = model.run(image, text, stages)
    return {k: v.detach().float().cpu() for k, v in stages.items() if v.is_floating_point()}


def compare(ref: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> dict[str, Any]:
    out: dict[str, Any] = {"stages": {}}
    for k, a in ref.items():
        b = got.get(k)
        if b is None or b.shape != a.shape:
            continue
        finite = torch.isfinite(b)
        err = torch.linalg.vector_norm(torch.where(finite, b, 0) - a)
        rel = float(err / torch.linalg.vector_norm(a).clamp_min(1e-30))
        out["stages"][k] = {"rel_l2": rel, "nonfinite": int((~finite).sum())}
    la, lb = ref["logits"], got["logits"]
    out["pixels"] = float((la.argmax(1) == lb.argmax(1)).float().mean()) if torch.isfinite(lb).all() else 0.0
    out["nonfinite_logits"] = int((~torch.isfinite(lb)).sum())
    return out


def emulation(ref, image: torch.Tensor, text: torch.Tensor, half_logits: torch.Tensor,
              fp32_logits: torch.Tensor, fp32_graph: Path | None = None) -> dict[str, Any]:
    """The fp16 emulation of the naive all-fp16 ONNX graph, against fp32 and against the real half run.

    fp32_graph: this model's fp32 image graph where one exists (no export); checked against the reference."""
    import onnx  # noqa: PLC0415 - heavy, only here

    from fsa_deploy.export.onnx_export import export_image  # noqa: PLC0415 - pulls in onnx

    with gate.temp_dir("fsa-gpu-precision-") as tmp, torch.no_grad():
        if fp32_graph is None:
            export_image(ref, tmp, "fp32", 8)
            fp32_graph = tmp / IMAGE_ONNX
        feed = {"image": image.numpy(), "text_embeddings": text.numpy()}
        y32 = torch.from_numpy(run_graph(onnx.load(str(fp32_graph)), feed)["logits"])  # no fp16 node: plain fp32
        out: dict[str, Any] = {"graph_rel_l2": float(torch.linalg.vector_norm(y32 - fp32_logits)
                                                     / torch.linalg.vector_norm(fp32_logits).clamp_min(1e-30))}
        if not out["graph_rel_l2"] <= GRAPH_MATCH:
            raise FSAError(f"{fp32_graph}: its fp32 logits differ from the reference's by rel L2 "
                           f"{out['graph_rel_l2']:.3g} (> {GRAPH_MATCH:g}): not this model's graph")
        naive = to_fp16(fp32_graph, [])
    for m in PRECISION_MODELS:
        with np.errstate(all="ignore"):
            y = torch.from_numpy(run_graph(naive, feed, precision=m)["logits"])
        ok = bool(torch.isfinite(y).all())
        out[m] = {"vs_fp32": float((y.argmax(1) == fp32_logits.argmax(1)).float().mean()) if ok else 0.0,
                  "vs_device_half": float((y.argmax(1) == half_logits.argmax(1)).float().mean()) if ok else 0.0,
                  "nonfinite": int((~torch.isfinite(y)).sum())}
    return out


def run_case(size: str, real: bool, device: str, photos: int, emulate: bool,
             fp32_graph: Path | None = None) -> dict[str, Any]:
    ref = build_reference(spec_of(size, real))
    model = ref.model.to(device)
    image, text = inputs(ref.spec.crop, photos, model.embed_dim)
    image, text = image.to(device), text.to(device)
    fp32 = forward(model, image, text)
    row: dict[str, Any] = {"size": size, "weights": "real-stats" if real else "plain", "device": device}
    row[CONTROL] = compare(fp32, forward(model, image, text))
    half = forward(copy.deepcopy(model).set_precision(torch.float16, torch.float16), image, text)
    row["half"] = compare(fp32, half)
    row["split"] = compare(fp32, forward(copy.deepcopy(model).set_precision(torch.float16), image, text))
    row["autocast"] = compare(fp32, forward(model, image, text, autocast=True))
    if emulate:
        ref.model.to("cpu")
        row["emulation"] = emulation(ref, image.cpu(), text.cpu(), half["logits"], fp32["logits"], fp32_graph)
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| case | device | fp32 rerun: worst stage rel L2 | "
             + " | ".join(f"{m} pixels / worst stage rel L2" for m in MODES)
             + " | emulation (fp32-acc / fp16-acc) vs device half |", "|---" * (len(MODES) + 4) + "|"]
    for r in rows:
        cells = [f"{max(v['rel_l2'] for v in r[CONTROL]['stages'].values()):.2e}"]
        for m in MODES:
            c = r[m]
            worst = max(c["stages"].items(), key=lambda kv: kv[1]["rel_l2"])
            cells.append(f"{100 * c['pixels']:.2f}% / {worst[0]} {worst[1]['rel_l2']:.2e}"
                         + (f" ({c['nonfinite_logits']} non-finite)" if c["nonfinite_logits"] else ""))
        e = r.get("emulation")
        em = (" / ".join(f"{100 * e[m]['vs_device_half']:.2f}%" for m in PRECISION_MODELS)
              + f" (fp32 graph {e['graph_rel_l2']:.1e})" if e else "not run (full size)")
        lines.append(f"| {r['size']} {r['weights']} | {r['device']} | " + " | ".join(cells) + f" | {em} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(description=__doc__)
    p.add_argument("--device", default="cuda")
    p.add_argument("--sizes", default="tiny,full")
    p.add_argument("--weights", default="plain,real-stats")
    p.add_argument("--photos", type=int, default=2)
    p.add_argument("--fp32-graph", type=Path, help="the one tiny case's fp32 image.onnx, where one exists "
                   "(skips its export; refused when its logits are not this model's)")
    p.add_argument("--json", required=True)
    p.add_argument("--md", required=True)
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_precision: --device cuda and torch sees no CUDA device", file=sys.stderr)
        return 2
    cases = [(size, w == "real-stats") for size in args.sizes.split(",") for w in args.weights.split(",")]
    if args.fp32_graph is not None and (len(cases) != 1 or cases[0][0] != "tiny" or not args.fp32_graph.is_file()):
        print(f"gpu_precision: --fp32-graph {args.fp32_graph}: needs an existing file and one tiny case "
              f"(--sizes tiny and one --weights)", file=sys.stderr)
        return 2
    rows: list[dict[str, Any]] = []
    try:
        for size, real in cases:
            rows.append(run_case(size, real, args.device, args.photos, emulate=size == "tiny",
                                 fp32_graph=args.fp32_graph))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "emulation"} | {
                m: rows[-1][m]["pixels"] for m in MODES}), file=sys.stderr, flush=True)
            gate.write_json(args.json, {"command": " ".join(sys.argv), "rows": rows})  # a cut-short run keeps these
            gate.write_text(args.md, markdown(rows))
    except FSAError as e:
        print(f"gpu_precision: {e}", file=sys.stderr)
        return 2
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())



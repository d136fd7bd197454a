"""`make bench-real-stats`: the activation statistics of full-size models, --real-stats against plain random init.

For ViT-B-16 and each proxy (DINO B/8, DINOv2 B/14, SAM B, MAE B), on two real photos (the first
window of each, as `fsa dump --activation-stats` takes it), the four statistics of every block, and
whether the last third of the blocks meets the targets (README "Real-weight statistics").
Writes JSON and a Markdown table; heavy (~2-4 GiB, minutes on 2 cores): run it under the shared lock.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def targets_met(entry: dict) -> bool:
    return (100 <= entry["resid_absmax_ratio"] <= 1e4 and 1 <= entry["resid_outlier_channels"] <= 4
            and 0.01 <= entry["high_norm_token_fraction"] <= 0.10 and entry["post_ln_channel_spread"] >= 30
            and entry["attn_max_mean"] >= 5 / entry["tokens"])


def build_parser() -> argparse.ArgumentParser:
    from fsa_deploy.cli import OneLineParser
    from fsa_deploy.ranges import add_ranged

    p = OneLineParser(description=__doc__)
    p.add_argument("--model", default="ViT-B-16")
    p.add_argument("--proxies", default="dino,dinov2,sam,mae")
    add_ranged(p, "--crop", "square crop size (default 336)", default=336)
    p.add_argument("--json", required=True)
    p.add_argument("--md", required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    import torch
    from fsa_deploy.models.activation_stats import model_stats
    from fsa_deploy.models.dump import first_crop
    from fsa_deploy.models.factory import ModelSpec, build_reference, default_hp
    from fsa_deploy.models.weights import Weights
    from fsa_deploy.runtime import gate
    from fsa_deploy.runtime.images import sample_photos

    args = build_parser().parse_args(argv)
    photos = sample_photos()[:2]
    rows, report = [], {"model": args.model, "crop": args.crop, "photos": [Path(x).name for x in photos], "runs": []}
    clip_done = set()
    for proxy in args.proxies.split(","):
        for real in (True, False):
            t0 = time.perf_counter()
            spec = ModelSpec(model=args.model, weights=Weights(seed=0, real_stats=real), proxy=proxy, crop=args.crop,
                             hp=default_hp(args.model, proxy))
            ref = build_reference(spec)
            with torch.no_grad():
                stats = [model_stats(ref.model, first_crop(ph, args.crop)) for ph in photos]
            run = {"proxy": proxy, "real_stats": real, "seconds": round(time.perf_counter() - t0, 1), "stats": stats}
            report["runs"].append(run)
            for part in ("clip", "proxy"):
                if part == "clip" and (real in clip_done):
                    continue
                blocks = stats[0][part]
                last = blocks[len(blocks) - max(1, len(blocks) // 3):]
                ok = all(targets_met(s[part][b["block"]]) for s in stats for b in last)
                name = args.model if part == "clip" else proxy
                for b in last:
                    vals = [s[part][b["block"]] for s in stats]
                    rows.append((name, "real-stats" if real else "plain", b["block"],
                                 *(f"{min(v[k] for v in vals):.3g}-{max(v[k] for v in vals):.3g}" for k in (
                                     "resid_absmax_ratio", "high_norm_token_fraction", "post_ln_channel_spread")),
                                 f"{min(v['attn_max_mean'] * v['tokens'] for v in vals):.3g}", "yes" if ok else "no"))
            clip_done.add(real)
            print(f"{proxy} real_stats={real}: {run['seconds']} s", file=sys.stderr, flush=True)
            del ref
    gate.mkdir(Path(args.json).parent)
    gate.write_text(args.json, json.dumps(report, indent=1) + "\n")
    head = ("| model | init | block | resid_absmax_ratio | high_norm_token_fraction | post_ln_channel_spread "
            "| attn_max_mean x N | last third meets targets |\n|---|---|---|---|---|---|---|---|\n")
    gate.write_text(args.md, head + "".join("| " + " | ".join(map(str, r)) + " |\n" for r in rows))
    print(Path(args.md).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

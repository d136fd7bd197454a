"""`make bench-real-stats`: the activation statistics of full-size models, --real-stats against plain random init.

For ViT-B-16 and each proxy (DINO B/8, DINOv2 B/14 with and without registers, SAM B, MAE B), on two real photos (the
first window of each, as `fsa dump --activation-stats` takes it), the statistics of every block, and whether the last
third of the blocks meets the targets of the recipe --real-stats builds (its own numbers: models/real_stats.py,
docs/METHOD.md): in the trunks it plants high-norm tokens in, their share near the recipe's and their norm ratio near
the recipe's, carried by its massive channels, with attention on them; in the others none; post-LayerNorm channel
spread from the gain outliers everywhere. Writes JSON and a Markdown table; heavy (~2-4 GiB, minutes on 2 cores):
run it under the shared lock.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from fsa_deploy.cli import OneLineParser
from fsa_deploy.models.registry import proxy_spec
from fsa_deploy.ranges import add_ranged
from fsa_deploy.runtime import gate
from fsa_deploy.runtime.images import sample_photos

# How near the recipe a full-size trunk must come (the tiny tests' bounds: tests/test_real_stats.py, as ratios)
SHARE = (1.0, 7.5)  # high-norm token share over the recipe's trigger_fraction (content placement adds flat patches)
NORM_RATIO = (2 / 3, 4 / 3)  # token_norm_ratio over the recipe's
SPREAD = 0.75  # post-LN channel spread over the recipe's smallest gain outlier
ATTENTION = 5.0  # attn_max_mean x tokens: attention on the high-norm tokens, far above uniform (1)


def targets(recipe: Any, planted: bool, entries: list[dict]) -> list[str]:
    """The targets `entries` (one block, one entry per photo) miss; [] when every one is met."""
    missed = []
    spread = SPREAD * recipe.gain_outlier_range[0]
    if min(e["post_ln_channel_spread"] for e in entries) < spread:
        missed.append(f"post-LN spread < {spread:g}")
    if not planted:
        if any(e["high_norm_tokens"] for e in entries):
            missed.append("high-norm tokens where the recipe plants none")
        return missed
    share = sum(e["high_norm_token_fraction"] for e in entries) / len(entries)
    lo, hi = (f * recipe.trigger_fraction for f in SHARE)
    if not lo <= share <= hi:
        missed.append(f"high-norm share {share:.3g} outside {lo:.3g}-{hi:.3g}")
    want = recipe.token_norm_ratio
    if want:
        ratios = [e["token_norm_ratio"] for e in entries if e["high_norm_tokens"]]
        if not ratios or not all(NORM_RATIO[0] * want <= r <= NORM_RATIO[1] * want for r in ratios):
            missed.append(f"norm ratio {ratios} outside {NORM_RATIO[0] * want:.3g}-{NORM_RATIO[1] * want:.3g}")
    most = recipe.massive_channels + 2
    if not all(1 <= e["resid_outlier_channels"] <= most for e in entries if e["high_norm_tokens"]):
        missed.append(f"outlier channels outside 1-{most}")
    if max(e["attn_max_mean"] * e["tokens"] for e in entries) < ATTENTION:
        missed.append(f"attention x N < {ATTENTION:g}")
    return missed


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(description=__doc__)
    p.add_argument("--model", default="ViT-B-16")
    p.add_argument("--proxies", default="dino,dinov2-noreg,dinov2,sam,mae")
    add_ranged(p, "--crop", "square crop size (default 336)", default=336)
    p.add_argument("--json", required=True)
    p.add_argument("--md", required=True)
    return p


def _range(vals: list[dict], key: str, times_tokens: bool = False) -> str:
    xs = [v[key] * (v["tokens"] if times_tokens else 1) for v in vals if v[key] is not None]
    if not xs:
        return "-"
    lo, hi = min(xs), max(xs)
    return f"{lo:.3g}" if f"{lo:.3g}" == f"{hi:.3g}" else f"{lo:.3g}-{hi:.3g}"


def write(args: argparse.Namespace, report: dict[str, Any], rows: list[tuple]) -> None:
    gate.mkdir(Path(args.json).parent)
    gate.write_text(args.json, json.dumps(report, indent=1) + "\n")
    head = ("| model | init | planted | block | resid_absmax_ratio | high_norm_token_fraction | token_norm_ratio "
            "| post_ln_channel_spread | attn_max_mean x N | recipe's targets met |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n")
    gate.write_text(args.md, head + "".join("| " + " | ".join(map(str, r)) + " |\n" for r in rows))


def main(argv: list[str] | None = None) -> int:
    import torch

    from fsa_deploy.models.activation_stats import model_stats
    from fsa_deploy.models.dump import first_crop
    from fsa_deploy.models.factory import ModelSpec, build_reference, default_hp
    from fsa_deploy.models.real_stats import RECIPE, RECIPES
    from fsa_deploy.models.weights import Weights

    args = build_parser().parse_args(argv)
    recipe = RECIPES[RECIPE]
    photos = sample_photos()[:2]
    rows: list[tuple] = []
    report: dict[str, Any] = {"model": args.model, "crop": args.crop, "recipe": RECIPE,
                              "photos": [Path(x).name for x in photos], "runs": []}
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
                family = "clip" if part == "clip" else proxy_spec(proxy).family
                planted = real and family in recipe.families
                blocks = stats[0][part]
                last = blocks[len(blocks) - max(1, len(blocks) // 3):]
                name = args.model if part == "clip" else proxy
                for b in last:
                    vals = [s[part][b["block"]] for s in stats]
                    missed = targets(recipe, planted, vals) if real else []
                    rows.append((name, "real-stats" if real else "plain", "yes" if planted else "no", b["block"],
                                 _range(vals, "resid_absmax_ratio"), _range(vals, "high_norm_token_fraction"),
                                 _range(vals, "token_norm_ratio"), _range(vals, "post_ln_channel_spread"),
                                 _range(vals, "attn_max_mean", times_tokens=True),
                                 ("yes" if not missed else "no: " + "; ".join(missed)) if real else "-"))
                    run.setdefault("missed", {})[f"{part} {b['block']}"] = missed
            clip_done.add(real)
            print(f"{proxy} real_stats={real}: {run['seconds']} s", file=sys.stderr, flush=True)
            del ref
        write(args, report, rows)  # after each proxy: a run cut short keeps what it measured
    print(Path(args.md).read_text())
    missed = [m for run in report["runs"] for m in run.get("missed", {}).values() if m]
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

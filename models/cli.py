"""Model-selection options shared by export, dump and validate; the `fsa dump` verb."""

from __future__ import annotations

import argparse

from fsa_deploy.errors import FSAError
from fsa_deploy.ranges import RANGES, add_ranged
from fsa_deploy.runtime import gate
from fsa_deploy.runtime.text import add_vocabulary_args, vocabulary_from_args
from fsa_deploy.spellings import add_old_spellings


def add_model_args(p: argparse.ArgumentParser) -> None:
    """--model, weights, --attention, --proxy, --crop, --no-fsa and the hyper-parameters."""
    g = p.add_argument_group("model")
    g.add_argument("--model", default="ViT-B-16",
                   help="ViT-B-16, ViT-L-14, ViT-L-14-336, ViT-H-14 or tiny (default ViT-B-16)")
    w = g.add_mutually_exclusive_group()
    w.add_argument("--pretrained", metavar="TAG", help="open_clip pretrained tag (openai, laion2b_...) or "
                   "hf-hub:ORG/NAME, read from the hub cache (offline with HF_HUB_OFFLINE=1)")
    w.add_argument("--checkpoint", metavar="PATH", help="local CLIP file: open_clip's .bin / .safetensors / "
                   "training checkpoint, or OpenAI's TorchScript ViT-*.pt (docs/ENGINES.md: Weights)")
    w.add_argument("--random-init", action="store_true", help="deterministic random weights (see --seed)")
    g.add_argument("--hub-cache", metavar="DIR", help="the model hub's cache folder for --pretrained (default: the "
                   "hub's own)")
    add_ranged(g, "--seed", "seed of --random-init (default 0)", default=0)
    g.add_argument("--real-stats", action="store_true", help="with --random-init: shape the random weights to "
                   "show trained ViTs' outliers (massive activations, high-norm tokens, post-LayerNorm channel "
                   "spread; docs/PRECISION.md)")
    add_ranged(g, "--real-stats-scale", "with --real-stats: multiply every planted magnitude (gain outliers, massive "
               "activations, the attention boost) by X (default 1: the published figures)", default=1.0)
    g.add_argument("--attention", default="proxy", help="proxy, qk, sclip, clearclip or naclip (default proxy)")
    g.add_argument("--proxy", default="dino",
                   help="dino, dinov2, dinov2-noreg, sam, mae or tiny-* (default dino; proxy only)")
    g.add_argument("--proxy-checkpoint", metavar="PATH", help="the proxy's release file as its authors ship it "
                   "(dino_*, dinov2_*, mae_*, sam_vit_b_*.pth) or timm's model.safetensors (docs/ENGINES.md: Weights)")
    add_ranged(g, "--crop", "square crop size, a multiple of the model's patch size (default 336)", default=336)
    g.add_argument("--no-fsa", action="store_true", help="the base method alone")
    for name in ("--lamda", "--beta", "--gamma", "--top-p"):
        add_ranged(g, name, f"override docs/METHOD.md's default ({RANGES[name].why})", default=None)


def spec_from_args(args: argparse.Namespace):
    """The ModelSpec the options describe (FSAError on a bad combination)."""
    from fsa_deploy.models.factory import ModelSpec, default_hp
    from fsa_deploy.models.weights import Weights

    if args.pretrained:
        weights = Weights(pretrained=args.pretrained, cache_dir=args.hub_cache)
    elif args.hub_cache:
        raise FSAError("--hub-cache goes with --pretrained TAG")
    elif args.checkpoint:
        weights = Weights(checkpoint=args.checkpoint)
    elif args.random_init:
        weights = Weights(seed=args.seed, real_stats=bool(getattr(args, "real_stats", False)),
                          real_stats_scale=float(getattr(args, "real_stats_scale", 1.0)))
    else:
        raise FSAError("weights: give --pretrained TAG, --checkpoint PATH or --random-init [--seed N]")
    if getattr(args, "real_stats", False) and not args.random_init:
        raise FSAError("--real-stats goes with --random-init (it shapes random weights)")
    if getattr(args, "real_stats_scale", 1.0) != 1.0 and not getattr(args, "real_stats", False):
        raise FSAError("--real-stats-scale goes with --random-init --real-stats")
    proxy = args.proxy if args.attention == "proxy" else None
    hp = default_hp(args.model, proxy, lamda=args.lamda, beta=args.beta, gamma=args.gamma, top_p=args.top_p)
    return ModelSpec(model=args.model, weights=weights, attention=args.attention, proxy=proxy,
                     proxy_checkpoint=args.proxy_checkpoint, crop=args.crop, fsa=not args.no_fsa, hp=hp)


def add_dump(sub, help_text: str) -> None:
    p = sub.add_parser("dump", help=help_text, description=(
        "Prepare IMAGE as `fsa segment` does, take its first (top-left) window and write every "
        "reference stage of docs/CONTRACT.md, the tail weights and the hyper-parameters to an .npz."))
    p.add_argument("--image", required=True, help="an image file")
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--formulation", choices=("deploy", "literal"), default="deploy")
    add_ranged(p, "--stride", "window stride (default crop // 3)", default=None)
    p.add_argument("--activation-stats", metavar="F.json", help="also write per-block activation statistics of "
                   "the CLIP trunk and the proxy on the same crop ({clip: [...], proxy: [...]}; "
                   "docs/PRECISION.md)")
    add_ranged(p, "--short-side", "resize so the short side is at most this (default the crop size)", default=None)
    add_ranged(p, "--long-side", "resize so the long side is at most this (default crop * 2048 / 336)", default=None)
    add_model_args(p)
    add_vocabulary_args(p)
    add_old_spellings(p, "dump")
    p.set_defaults(func=run_dump)


def run_dump(args: argparse.Namespace) -> int:
    from fsa_deploy.models.dump import dump_stages

    outputs = gate.Outputs()
    outputs.file(args.out, "--out", args.overwrite)  # before the work: a folder, a file under a file, ...
    if not str(args.out).endswith(".npz"):
        raise FSAError(f"--out {args.out}: must end in .npz")
    if args.activation_stats:
        from fsa_deploy.models.activation_stats import check_stats_path

        check_stats_path(args.activation_stats, args.out)
        outputs.file(args.activation_stats, "--activation-stats", args.overwrite)
    dump_stages(spec_from_args(args), vocabulary_from_args(args), args.image, args.out,
                formulation=args.formulation, stride=args.stride, short_side=args.short_side,
                long_side=args.long_side, activation_stats=args.activation_stats)
    print(f"wrote {args.out}" + (f" and {args.activation_stats}" if args.activation_stats else ""))
    return 0

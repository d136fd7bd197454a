"""`--random-init --real-stats` shows trained ViTs' outliers; `fsa dump --activation-stats` measures them.

Recipe real-stats-2 (the default; docs/METHOD.md cites each figure), last block of the 2-block tiny trunks on
four real photos: CLIP and DINOv2 without registers carry high-norm tokens (2-15% of the patches over the four
photos, each image its own, token_norm_ratio 4-8, on the flattest patches), by 2 massive channels, with attention
on them; DINO v1, DINOv2 with registers, SAM and MAE carry none, only the post-LayerNorm channel spread (>= 30)
that every trunk has. `--real-stats-scale X` multiplies the planted magnitudes. real-stats-1 (fixed positions,
every trunk) is still rebuilt for artefacts that recorded it. Plain random init is far below.
"""

from __future__ import annotations

import dataclasses
import json
from functools import lru_cache

import numpy as np
import pytest
import torch
from conftest import TINY_PROXIES, photo_crops, photos, run_cli, tiny_spec

from fsa_deploy.errors import FSAError
from fsa_deploy.models.activation_stats import STAT_KEYS, model_stats
from fsa_deploy.models.factory import build_reference, spec_from_meta
from fsa_deploy.models.weights import Weights, state_digest


def real_spec(proxy: str = "tiny-dino", seed: int = 0, recipe: str | None = None, scale: float = 1.0, **kw):
    return dataclasses.replace(tiny_spec(proxy=proxy, **kw), weights=Weights(seed=seed, real_stats=True,
                                                                             recipe=recipe, real_stats_scale=scale))


@lru_cache(maxsize=8)
def real_ref(proxy: str = "tiny-dino", recipe: str | None = None, scale: float = 1.0):
    return build_reference(real_spec(proxy, recipe=recipe, scale=scale))


@lru_cache(maxsize=1)
def two_crops() -> torch.Tensor:
    return photo_crops(2)


@lru_cache(maxsize=1)
def four_crops() -> torch.Tensor:
    return photo_crops(4)


PLANTED = {"clip", "tiny-dinov2-noreg"}  # real-stats-2: the trunks the papers report high-norm tokens in


def patch_variance_rank(crop: torch.Tensor, patch: int) -> torch.Tensor:
    """Each patch's pixel variance as a rank in [0, 1) among the crop's patches (0: the flattest)."""
    g = crop.shape[-1] // patch
    p = crop[:, :g * patch, :g * patch].reshape(3, g, patch, g, patch).permute(1, 3, 0, 2, 4).reshape(g * g, -1)
    var = p.float().var(dim=1)
    return var.argsort().argsort().float() / len(var)


@pytest.mark.parametrize("proxy", ("tiny-dinov2-noreg", "tiny-dino", "tiny-dinov2"))  # MAE: test_dump_activation_stats
def test_real_stats_2_targets_on_four_photos(proxy):
    ref = real_ref(proxy)
    patch = {"clip": ref.model.patch, "proxy": ref.model.proxy.spec.patch}
    seen: dict[str, list] = {"clip": [], "proxy": []}
    for crop in four_crops():
        stats = model_stats(ref.model, crop)
        for key in ("clip", "proxy"):
            e = stats[key][-1]
            assert e["post_ln_channel_spread"] >= 30, (key, e)
            assert e["high_norm_tokens"] == sorted(e["high_norm_tokens"])
            n = (crop.shape[-1] // patch[key]) ** 2  # patch tokens
            assert len(e["high_norm_tokens"]) == round(e["high_norm_token_fraction"] * n) and all(
                0 <= i < n for i in e["high_norm_tokens"])
            seen[key].append((crop, e))
    for key, entries in seen.items():
        name = "clip" if key == "clip" else proxy
        fractions = [e["high_norm_token_fraction"] for _, e in entries]
        if name not in PLANTED:  # DINO v1 (Darcet et al.: no artefacts), registers, SAM, MAE: nothing planted
            assert max(fractions) == 0 and all(e["resid_outlier_channels"] == 0 for _, e in entries), entries
            continue
        assert 0.02 <= float(np.mean(fractions)) <= 0.15 and len(set(fractions)) > 1, (name, fractions)  # by image
        ratios = [e["token_norm_ratio"] for _, e in entries if e["high_norm_tokens"]]
        assert ratios and all(4 <= r <= 8 for r in ratios), (name, ratios)
        assert all(1 <= e["resid_outlier_channels"] <= 4 for _, e in entries if e["high_norm_tokens"])
        # placed by content: the high-norm tokens sit on the flatter patches of each photo
        ranks = torch.cat([patch_variance_rank(c, patch[key])[e["high_norm_tokens"]] for c, e in entries])
        assert float(ranks.mean()) < 0.35, (name, ranks.tolist())
        # attention concentrates on them where they are (sinks): far above uniform
        assert max(e["attn_max_mean"] for _, e in entries if e["high_norm_tokens"]) >= 5 / entries[0][1]["tokens"]


def test_scale_multiplies_the_planted_magnitudes():
    crop = four_crops()[1]
    base = model_stats(real_ref("tiny-dinov2-noreg").model, crop)
    big = model_stats(real_ref("tiny-dinov2-noreg", scale=3.0).model, crop)
    for key in ("clip", "proxy"):
        a, b = base[key][-1], big[key][-1]
        assert b["high_norm_tokens"] and 2.5 <= b["token_norm_ratio"] / a["token_norm_ratio"] <= 3.5, (a, b)
        assert b["post_ln_channel_spread"] > 2 * a["post_ln_channel_spread"]
    with pytest.raises(FSAError, match="--real-stats-scale"):
        Weights(seed=0, real_stats=True, real_stats_scale=float("inf"))
    with pytest.raises(FSAError, match="--real-stats-scale"):
        Weights(seed=0, real_stats=True, real_stats_scale=0.0)


def assert_targets(entry: dict, where: str) -> None:
    n = entry["tokens"]
    assert 100 <= entry["resid_absmax_ratio"] <= 1e4, (where, entry)
    assert 1 <= entry["resid_outlier_channels"] <= 4, (where, entry)
    assert 0.01 <= entry["high_norm_token_fraction"] <= 0.10, (where, entry)
    assert entry["post_ln_channel_spread"] >= 30, (where, entry)
    assert entry["attn_max_mean"] >= 5 / n, (where, entry)


@pytest.mark.parametrize("proxy", ("tiny-dino",))
def test_real_stats_1_still_rebuilds_its_targets(proxy):
    """Artefacts exported with real-stats-1 rebuild it: fixed positions, every trunk planted."""
    model = real_ref(proxy, recipe="real-stats-1").model
    for i, crop in enumerate(two_crops()):
        stats = model_stats(model, crop)
        assert [e["block"] for e in stats["clip"]] == [0, 1] and len(stats["proxy"]) == 2
        assert_targets(stats["clip"][-1], f"clip, photo {i}")
        assert_targets(stats["proxy"][-1], f"{proxy}, photo {i}")


@pytest.mark.parametrize("proxy", ("tiny-dino", "tiny-sam"))
def test_plain_random_init_is_far_below(proxy):
    from conftest import tiny_reference

    stats = model_stats(tiny_reference("proxy", proxy).model, two_crops()[0])
    for e in (stats["clip"][-1], stats["proxy"][-1]):
        assert e["resid_absmax_ratio"] < 10 and e["resid_outlier_channels"] == 0
        assert e["high_norm_token_fraction"] == 0 and e["post_ln_channel_spread"] < 5
        assert e["attn_max_mean"] < 5 / e["tokens"]


@pytest.mark.parametrize("proxy", TINY_PROXIES)
def test_outputs_finite_and_segmentation_not_degenerate(proxy):
    """Five classes on three photos: finite logits, several classes present, near plain init's labels."""
    from fsa_deploy.models.dump import numpy_encoder
    from fsa_deploy.models.text import openai_templates
    from fsa_deploy.runtime.text import classifier

    ref = real_ref(proxy)
    crops = photo_crops(3).float()
    with torch.no_grad():
        text = torch.from_numpy(classifier(numpy_encoder(ref), ["sky", "tree", "person", "road", "building"],
                                           openai_templates()[:2]))
        logits = ref.model(crops, text)
    assert torch.isfinite(logits).all()
    present = [len(np.unique(lab)) for lab in logits.argmax(1).numpy()]
    assert max(present) >= 2 and sum(present) >= 4, present


def test_deterministic_per_seed_and_recorded():
    a, b = build_reference(real_spec(seed=3)), build_reference(real_spec(seed=3))
    assert state_digest(a.model) == state_digest(b.model)
    assert state_digest(build_reference(real_spec(seed=4)).model) != state_digest(a.model)
    # the real-stats weights are not the plain ones, and meta.json rebuilds them exactly
    from conftest import tiny_reference

    assert state_digest(tiny_reference().model) != state_digest(a.model)
    desc = real_spec(seed=3).describe()
    assert desc["weights"] == {"source": "random-init-real-stats", "seed": 3, "recipe": "real-stats-2"}
    assert desc["proxy_weights"] == desc["weights"]
    again = spec_from_meta(desc)
    assert again.weights.real_stats and state_digest(build_reference(again).model) == state_digest(a.model)
    # the recipe version and the scale travel in meta.json; real-stats-1 is rebuilt as it was
    scaled = real_spec(seed=3, scale=2.5).describe()["weights"]
    assert scaled == {"source": "random-init-real-stats", "seed": 3, "recipe": "real-stats-2", "scale": 2.5}
    assert spec_from_meta(real_spec(seed=3, scale=2.5).describe()).weights.real_stats_scale == 2.5
    old = real_spec(seed=3, recipe="real-stats-1").describe()
    assert old["weights"]["recipe"] == "real-stats-1"
    old_digest = state_digest(build_reference(spec_from_meta(old)).model)  # one build of ~5 s, both checks
    assert old_digest == state_digest(build_reference(real_spec(seed=3, recipe="real-stats-1")).model)
    assert old_digest != state_digest(a.model)


def test_unknown_recipe_and_old_readers_refuse():
    desc = real_spec().describe()
    desc["weights"] = {**desc["weights"], "recipe": "real-stats-99"}
    with pytest.raises(FSAError, match="real-stats-99"):
        spec_from_meta(desc)
    for bad in (float("nan"), -1.0, "2"):
        desc["weights"] = {**desc["weights"], "recipe": "real-stats-2", "scale": bad}
        with pytest.raises(FSAError, match="scale"):
            spec_from_meta(desc)
    # a reader before this change knew only these sources: the new one is not among them
    assert real_spec().describe()["weights"]["source"] not in ("random-init", "pretrained", "checkpoint")
    with pytest.raises(FSAError, match="--real-stats goes with --random-init"):
        Weights(pretrained="openai", real_stats=True)


def fsa(*args) -> tuple[int, str]:
    """The CLI in this process (the subprocess costs seconds of imports): exit code, stderr lines."""
    import contextlib
    import io

    from fsa_deploy.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main([str(a) for a in args])
    return rc, err.getvalue()


def test_cli_refuses_real_stats_without_random_init(tmp_path):
    rc, err = fsa("dump", "--image", photos()[0], "--out", tmp_path / "d.npz", "--model", "tiny",
                  "--checkpoint", tmp_path / "none.bin", "--real-stats", "--crop", "112", "--classes", "sky")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "--real-stats" in err, err
    assert not list(tmp_path.iterdir())


def test_dump_activation_stats(tmp_path):
    """`fsa dump --activation-stats`: the statistics of the dump's crop, real-stats and plain, as measured."""
    out = {}
    for name, extra in (("real", ["--real-stats"]), ("plain", [])):
        args = ("dump", "--image", photos()[0], "--out", tmp_path / f"{name}.npz", "--activation-stats",
                tmp_path / f"{name}.json", "--model", "tiny", "--random-init", *extra, "--proxy", "tiny-mae",
                "--crop", "112", "--classes", "sky,tree")
        if name == "real":  # the installed CLI once, as a user runs it
            proc = run_cli(*args, "--real-stats-scale", "1")
            assert proc.returncode == 0, proc.stderr
        else:
            assert fsa(*args)[0] == 0
        out[name] = json.loads((tmp_path / f"{name}.json").read_text())
    real, plain = out["real"], out["plain"]
    assert set(real) >= {"clip", "proxy"} and len(real["clip"]) == 2 and len(real["proxy"]) == 2
    for e in real["clip"] + real["proxy"]:
        assert set(STAT_KEYS) | {"block"} <= set(e)
    # the same numbers as the module on the same crop (the dump's first window)
    from fsa_deploy.models.dump import first_crop

    direct = model_stats(build_reference(real_spec("tiny-mae")).model, first_crop(photos()[0], 112))
    for key in ("clip", "proxy"):
        for mine, theirs in zip(real[key], direct[key]):
            for k in STAT_KEYS:
                assert mine[k] == pytest.approx(theirs[k], rel=1e-5)
            assert mine["high_norm_tokens"] == theirs["high_norm_tokens"]
            assert (mine["token_norm_ratio"] is None) == (theirs["token_norm_ratio"] is None)
    for key in ("clip", "proxy"):
        assert plain[key][-1]["post_ln_channel_spread"] * 10 < real[key][-1]["post_ln_channel_spread"]
        assert plain[key][-1]["high_norm_tokens"] == [] and plain[key][-1]["token_norm_ratio"] is None
    assert real["proxy"][-1]["high_norm_tokens"] == []  # MAE: none planted
    e = real["clip"][-1]  # CLIP: where the crop has flat patches, high-norm tokens a few times the median
    assert not e["high_norm_tokens"] or 4 <= e["token_norm_ratio"] <= 8, e


def test_dump_activation_stats_bad_name(tmp_path):
    rc, err = fsa("dump", "--image", photos()[0], "--out", tmp_path / "d.npz", "--activation-stats",
                  tmp_path / "s.txt", "--model", "tiny", "--random-init", "--proxy", "tiny-mae", "--crop", "112",
                  "--classes", "sky")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "--activation-stats" in err, err
    assert not list(tmp_path.iterdir())


def test_token_norm_ratio_and_threshold_take_the_median_as_numpy_does():
    """Even counts: the median is the mean of the two middle values (torch's median() would take the lower)."""
    from fsa_deploy.models.activation_stats import Captured, block_stats

    norms = np.array([1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 30.0, 50.0])  # median 2; high-norm (>= 10): 30 and 50
    resid = torch.zeros(1 + len(norms), 4)  # one prefix token, then the patch tokens
    resid[1:, 0] = torch.from_numpy(norms)
    resid[0, 1] = 1.0
    e = block_stats(Captured(resid=resid, ln1=resid, probs=torch.full((1, 9, 9), 1 / 9)), prefix=1)
    assert e["high_norm_tokens"] == [6, 7] and e["high_norm_token_fraction"] == 0.25
    assert e["token_norm_ratio"] == pytest.approx(np.median([30.0, 50.0]) / np.median(norms), rel=1e-6)  # 20

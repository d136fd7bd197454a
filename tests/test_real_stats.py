"""Issue 23: `--random-init --real-stats` shows trained ViTs' outliers; `fsa dump --activation-stats` measures them.

The four targets (on two real photos, last block of the 2-block tiny trunks, CLIP and every tiny
proxy): resid_absmax_ratio in [100, 1e4] carried by 1-4 channels, high_norm_token_fraction in
[1%, 10%], post_ln_channel_spread >= 30, attn_max_mean >= 5 / N. Plain random init is far below.
"""

from __future__ import annotations

import dataclasses
import json
from functools import lru_cache

import numpy as np
import pytest
import torch
from conftest import TINY_PROXIES, photo_crops, photos, run_cli, tiny_spec
from fsa_deploy.models.activation_stats import STAT_KEYS, model_stats
from fsa_deploy.models.factory import build, spec_from_meta
from fsa_deploy.models.weights import Weights, state_digest

from fsa_deploy.errors import FSAError


def real_spec(proxy: str = "tiny-dino", seed: int = 0, **kw):
    return dataclasses.replace(tiny_spec(proxy=proxy, **kw), weights=Weights(seed=seed, real_stats=True))


@lru_cache(maxsize=8)
def real_ref(proxy: str = "tiny-dino"):
    return build(real_spec(proxy))


@lru_cache(maxsize=1)
def two_crops() -> torch.Tensor:
    return photo_crops(2)


def assert_targets(entry: dict, where: str) -> None:
    n = entry["tokens"]
    assert 100 <= entry["resid_absmax_ratio"] <= 1e4, (where, entry)
    assert 1 <= entry["resid_outlier_channels"] <= 4, (where, entry)
    assert 0.01 <= entry["high_norm_token_fraction"] <= 0.10, (where, entry)
    assert entry["post_ln_channel_spread"] >= 30, (where, entry)
    assert entry["attn_max_mean"] >= 5 / n, (where, entry)


@pytest.mark.parametrize("proxy", TINY_PROXIES)
def test_targets_on_two_photos(proxy):
    model = real_ref(proxy).model
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
    a, b = build(real_spec(seed=3)), build(real_spec(seed=3))
    assert state_digest(a.model) == state_digest(b.model)
    assert state_digest(build(real_spec(seed=4)).model) != state_digest(a.model)
    # the real-stats weights are not the plain ones, and meta.json rebuilds them exactly
    from conftest import tiny_reference

    assert state_digest(tiny_reference().model) != state_digest(a.model)
    desc = real_spec(seed=3).describe()
    assert desc["weights"] == {"source": "random-init-real-stats", "seed": 3, "recipe": "real-stats-1"}
    assert desc["proxy_weights"] == desc["weights"]
    again = spec_from_meta(desc)
    assert again.weights.real_stats and state_digest(build(again).model) == state_digest(a.model)


def test_unknown_recipe_and_old_readers_refuse():
    desc = real_spec().describe()
    desc["weights"] = {**desc["weights"], "recipe": "real-stats-99"}
    with pytest.raises(FSAError, match="real-stats-99"):
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
            proc = run_cli(*args)
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

    direct = model_stats(build(real_spec("tiny-mae")).model, first_crop(photos()[0], 112))
    for key in ("clip", "proxy"):
        for mine, theirs in zip(real[key], direct[key]):
            for k in STAT_KEYS:
                assert mine[k] == pytest.approx(theirs[k], rel=1e-5)
    assert_targets(real["clip"][-1], "dump clip")
    assert_targets(real["proxy"][-1], "dump proxy")
    for key in ("clip", "proxy"):
        assert plain[key][-1]["resid_absmax_ratio"] * 20 < real[key][-1]["resid_absmax_ratio"]
        assert plain[key][-1]["post_ln_channel_spread"] * 10 < real[key][-1]["post_ln_channel_spread"]


def test_dump_activation_stats_bad_name(tmp_path):
    rc, err = fsa("dump", "--image", photos()[0], "--out", tmp_path / "d.npz", "--activation-stats",
                  tmp_path / "s.txt", "--model", "tiny", "--random-init", "--proxy", "tiny-mae", "--crop", "112",
                  "--classes", "sky")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "--activation-stats" in err, err
    assert not list(tmp_path.iterdir())

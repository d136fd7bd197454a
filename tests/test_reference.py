"""The PyTorch reference: literal and deploy formulations agree; dump, batching, seeds, bad input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import (
    CONFIGS,
    QUERY_COUNTS,
    REPO,
    assert_one_line_error,
    photo_crops,
    photos,
    rel_l2,
    tiny_reference,
    unit_text,
)

from fsa_deploy.contract import TOPK_MAX_K
from fsa_deploy.models.fsa import (
    ambiguous_entries,
    top_p_keep_bisect,
    top_p_keep_sort,
    top_p_keep_topk,
    top_p_topk_k,
)
from fsa_deploy.models.reference import aligned_stages


@pytest.mark.parametrize("fsa", [True, False], ids=["fsa", "base"])
@pytest.mark.parametrize("attention,proxy", CONFIGS, ids=[p or a for a, p in CONFIGS])
def test_literal_equals_deploy(attention, proxy, fsa):
    ref = tiny_reference(attention, proxy, fsa)
    deploy, literal = ref.model, ref.model.with_formulation("literal")
    crops = photo_crops(2)
    for k in QUERY_COUNTS:
        text = unit_text(k)
        with torch.no_grad():
            lit = literal.stages(crops, text)
            # masks that rounding decides (ties) are resolved the literal way: later stages compare 1:1
            d, al = aligned_stages(deploy, crops, text, lit)
        assert al.top_p_flips == 0 and al.proxy_flips == 0, f"K={k}: unambiguous mask flips {al}"
        err = rel_l2(d["logits"], lit["logits"])
        print(f"{attention}/{proxy} fsa={fsa} K={k}: rel L2 {err:.2e} ({al}, excused)")
        assert err <= 1e-5, f"K={k}: crop logits rel L2 {err:.2e} ({al})"


@pytest.fixture(scope="module", params=[4.0, 1e-3], ids=["wide", "flat"])
def sam_grid(request):
    """(Sim, the sort's keep mask, its ambiguous entries) at N = 4096: made once per spread for both deploy
    rules. One crop's Sim (4096 rows of 4096): the rules decide each row alone (the batch axis is a loop
    over crops, test_batching_changes_nothing), so a second crop only doubled the time."""
    spread = request.param
    g = torch.Generator().manual_seed(0)
    sim = 1.0 / (1.0 + spread * torch.rand(1, 4096, 4096, generator=g))
    sim[:, :, :64] = sim.amax() - 0.03 * spread  # a tie group near the top of every row
    return sim, top_p_keep_sort(sim, 0.45), ambiguous_entries(sim, 0.45)


@pytest.mark.parametrize("rule", [top_p_keep_topk, top_p_keep_bisect], ids=["topk", "bisect"])
def test_top_p_deploy_equals_sort_at_sam_grid(rule, sam_grid):
    """N = 4096 (SAM's 64 x 64 grid): the deploy rules keep what the sort keeps, ties aside.

    `flat` rows (Sim within 1e-3) keep close to p N entries: the most the TopK form can see.
    """
    sim, a, amb = sam_grid
    b = rule(sim.clone(), 0.45)  # a copy: the shared Sim stays as made whatever a rule does to its input
    differ = a != b
    most = int(a.sum(-1).max())
    print(f"N=4096 {rule.__name__}: {int(differ.sum())} flips, {int(amb.sum())} ambiguous, <= {most} kept a row")
    assert most <= top_p_topk_k(4096, 0.45) <= TOPK_MAX_K
    assert int((differ & ~amb).sum()) == 0


@pytest.mark.parametrize("literal", [False, True], ids=["deploy", "literal"])
def test_proxy_rows_with_no_entry_above_the_mean(literal):
    """Every patch alike (beta * mean(S0) > 1): the official mask drops every entry and the row's
    softmax is NaN; ours keeps each row's largest entries, so A is the identity there. Where some
    entry of a row is >= 0 the mask is the official one, entry for entry."""
    from fsa_deploy.models import fsa

    g = torch.Generator().manual_seed(0)
    common = torch.randn(1, 16, 1, 1, generator=g)
    alike = common + 1e-3 * torch.randn(1, 16, 6, 6, generator=g)  # cosines ~ 1: all rows negative
    s1 = fsa.proxy_similarity(alike, 1.2, 3.0, literal)
    assert (s1 < 0).all()
    official = torch.softmax(s1.masked_fill(s1 < 0, float("-inf")), dim=-1)
    assert torch.isnan(official).all()
    a = fsa.proxy_attention(alike, 1.2, 3.0, literal=literal)
    assert torch.isfinite(a).all()
    assert torch.equal(a.argmax(-1), torch.arange(36).view(1, 36)) and (a.amax(-1) > 0.99).all()

    varied = torch.randn(2, 16, 6, 6, generator=g)
    s1 = fsa.proxy_similarity(varied, 1.2, 3.0, literal)
    official = torch.softmax(s1.masked_fill(s1 < 0, float("-inf")), dim=-1)
    assert torch.isfinite(official).all()
    assert torch.equal(fsa.proxy_attention(varied, 1.2, 3.0, literal=literal), official)


def test_batching_changes_nothing():
    """4 crops in one batch equal 4 single-crop runs (per-crop mean of the proxy similarity)."""
    ref = tiny_reference("proxy", "tiny-dino", True)
    crops, text = photo_crops(4), unit_text(21)
    with torch.no_grad():
        batched = ref.model.stages(crops, text)
        single = [ref.model.stages(c[None], text) for c in crops]
        keep = torch.cat([s["keep"] for s in single])
        differ = batched["keep"] != keep
        amb = ambiguous_entries(batched["sim"], ref.spec.hp.top_p)
        print(f"batch of 4 vs singles: {int(differ.sum())} keep flips, {int(amb.sum())} ambiguous entries")
        assert int((differ & ~amb).sum()) == 0
        single_logits = torch.cat([ref.model.stages(c[None], text, keep=batched["keep"][i:i + 1])["logits"]
                                   for i, c in enumerate(crops)])
    assert rel_l2(batched["logits"], single_logits) <= 1e-6


# --- fsa dump, checked by an independent float64 recomputation that reads only the .npz -----------


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - np.max(x, axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def recompute_stages(z: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each stage from the dumped stages before it, in float64, straight from docs/METHOD.md."""
    d = {k: np.asarray(v, dtype=np.float64) if v.dtype != bool else v for k, v in z.items()}
    w, b = d["w.out_proj.weight"], d["w.out_proj.bias"]

    def tail(x):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        x = (x - mu) / np.sqrt(var + d["w.ln_post.eps"])
        return (x * d["w.ln_post.weight"] + d["w.ln_post.bias"]) @ d["w.proj"]

    beta, gamma, lamda, p = (float(d[f"hp.{k}"]) for k in ("beta", "gamma", "lamda", "top_p"))
    text, values = d["text_embeddings"], d["values"]
    out = {}
    feats = d["proxy_features"]
    f = feats.reshape(feats.shape[0], -1)
    f = f / np.linalg.norm(f, axis=0, keepdims=True)
    s0 = f.T @ f
    s1 = (s0 - beta * s0.mean()) * gamma
    floor = np.minimum(s1.max(axis=1, keepdims=True), 0.0)  # a row with no entry >= 0 keeps its largest
    out["attn_proxy"] = _softmax(np.where(s1 < floor, -np.inf, s1))
    out["attn_out1"] = (d["attn_proxy"] @ values) @ w.T + b
    out["patch_logits"] = 20.0 * _normalize(tail(d["attn_out1"])) @ text.T
    out["uniform_logits"] = 35.0 * _normalize(tail(values.mean(0) @ w.T + b)) @ text.T
    out["feedback_probs"] = _softmax(d["patch_logits"] - d["uniform_logits"][None])
    q = d["feedback_probs"]
    logq = np.log(q + 1e-10)
    out["kl"] = np.maximum(0.0, np.einsum("ik,ijk->ij", q, logq[:, None, :] - logq[None, :, :]))
    out["sim"] = 1.0 / (1.0 + d["kl"])
    out["keep"] = top_p_keep_sort(torch.from_numpy(d["sim"]), p).numpy()
    e = d["sim"] * np.exp(lamda * d["sim"])
    out["attn_new"] = _softmax(np.where(z["keep"], e, -np.inf))
    a, a_new = d["attn_proxy"], d["attn_new"]
    ens = (a_new @ a + a @ a_new + a_new) / 3.0
    out["features"] = _normalize(tail((ens @ values) @ w.T + b))
    grid = d["logits"].shape[1:]
    out["logits"] = (d["features"] @ text.T).T.reshape(-1, *grid)
    return out


def test_dump_stages_recomputed_in_float64(tmp_path, run_here):
    out = tmp_path / "stages.npz"
    proc = run_here("dump", "--image", photos()[1], "--out", out, "--model", "tiny", "--random-init",
                   "--proxy", "tiny-dino", "--crop", "112", "--classes", "cat; kitten, grass, sofa, floor, wall")
    assert proc.returncode == 0, proc.stderr
    z = dict(np.load(out))
    for key in ("image", "proxy_features", "values", "text_embeddings", "attn_proxy", "attn_out1", "patch_logits",
                "uniform_logits", "feedback_probs", "kl", "sim", "keep", "attn_new", "features", "logits",
                "w.out_proj.weight", "w.out_proj.bias", "w.ln_post.weight", "w.ln_post.bias", "w.ln_post.eps",
                "w.proj", "hp.beta", "hp.gamma", "hp.lamda", "hp.top_p"):
        assert key in z, f"{key} missing from the dump"
    assert z["image"].shape == (3, 112, 112) and z["logits"].shape == (6, 14, 14)
    again = recompute_stages(z)
    amb = ambiguous_entries(torch.from_numpy(z["sim"]).double(), float(z["hp.top_p"])).numpy()
    flips = (again["keep"] != z["keep"])
    print(f"keep: {int(flips.sum())} flips, {int(amb.sum())} ambiguous entries")
    assert int((flips & ~amb).sum()) == 0
    for name, value in again.items():
        if name == "keep":
            continue
        err = rel_l2(value, z[name])
        print(f"{name}: rel L2 {err:.2e}")
        assert err <= 1e-5, f"stage {name}: rel L2 {err:.2e}"


# --- seeds and bad input ---------------------------------------------------------------------


def _digest(seed: int) -> str:
    code = ("from fsa_deploy.models.factory import build_reference; from conftest import tiny_spec; "
            "from fsa_deploy.models.weights import state_digest;"
            f"r = build_reference(tiny_spec(seed={seed})); print(state_digest(r.clip) + state_digest(r.model.proxy))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO / "tests", capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def _digest_here(seed: int) -> str:
    """`_digest` in this process, after moving torch's global RNG: only the seed may decide."""
    from conftest import tiny_spec

    from fsa_deploy.models.factory import build_reference
    from fsa_deploy.models.weights import state_digest

    torch.manual_seed(1000 + seed)
    r = build_reference(tiny_spec(seed=seed))
    return state_digest(r.clip) + state_digest(r.model.proxy)


def test_random_init_is_deterministic_across_processes():
    """A new interpreter and this one (its own hash seed, its global RNGs moved): the same weights."""
    a, b, c = _digest(3), _digest_here(3), _digest_here(4)
    assert a == b, "same seed, different weights"
    assert b != c, "different seeds, same weights"


@pytest.mark.parametrize("args,needle", [
    (["--model", "ViT-Z-99", "--random-init"], "--model 'ViT-Z-99'"),
    (["--model", "tiny", "--random-init", "--proxy", "tiny-clip"], "--proxy 'tiny-clip'"),
    (["--model", "tiny", "--checkpoint", "/nonexistent/ckpt.pt"], "/nonexistent/ckpt.pt"),
    (["--model", "tiny", "--random-init", "--classes", " , ;"], "--classes"),
    (["--model", "tiny", "--random-init", "--attention", "flash"], "--attention 'flash'"),
    (["--model", "tiny", "--random-init", "--crop", "100"], "--crop 100"),
])
def test_dump_bad_input(tmp_path, run_here, args, needle):
    proc = run_here("dump", "--image", photos()[0], "--out", tmp_path / "x.npz", "--proxy", "tiny-dino", *args)
    assert_one_line_error(proc, needle)
    assert not (tmp_path / "x.npz").exists()


def test_dump_corrupt_checkpoint_and_unreadable_image(tmp_path, run_here):
    bad = tmp_path / "ckpt.pt"
    bad.write_bytes(b"\x80\x02 not a checkpoint")
    proc = run_here("dump", "--image", photos()[0], "--out", tmp_path / "x.npz", "--model", "tiny",
                   "--checkpoint", bad, "--proxy", "tiny-dino")
    assert_one_line_error(proc, str(bad))
    img = tmp_path / "photo.png"
    img.write_text("not an image")
    proc = run_here("dump", "--image", img, "--out", tmp_path / "x.npz", "--model", "tiny", "--random-init",
                   "--proxy", "tiny-dino")
    assert_one_line_error(proc, str(img))
    assert not (tmp_path / "x.npz").exists()


def test_a_twin_at_the_cut_is_ambiguous():
    """Two entries 1.2e-7 apart next to a cut 4e-9 above p, 5e-6 from the last kept (seen on an AMD EPYC
    between ONNX Runtime and torch): Sim moving by <= 1e-6 swaps them and keeps the twin. The flip is
    rounding's, so the twin is ambiguous; entries 5e-6 from the cut are not."""
    n, k = 64, 20
    s = 0.99 - 5e-6 * torch.arange(n, dtype=torch.float64)
    s[k + 1:] -= 5e-6
    s[k + 1] = s[k] - 1.2e-7
    p = float(torch.cumsum(torch.softmax(s, -1), -1)[k]) - 4e-9
    moved = s.clone()
    moved[:k] -= 1e-6
    moved[k + 1] += 2.4e-7
    flips = (top_p_keep_sort(s[None], p) != top_p_keep_sort(moved[None], p))[0]
    assert flips.nonzero().flatten().tolist() == [k + 1]
    assert ambiguous_entries(s[None], p)[0].nonzero().flatten().tolist() == [k, k + 1]

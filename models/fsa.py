"""FSA's attention math (docs/METHOD.md steps 6-14), in two formulations of one function.

`literal`: the official code's math as written (per-head repetition, the N x N x K KL,
sort-based top-p, N^3 ensemble products). It exists as the oracle for tests and
benchmarks. `deploy`: what is exported: head-independent attention once, the KL as a
matmul, top-p from a TopK of the floor(p N) + 1 largest entries (legal in TensorRT up to
N = 8533 at p = 0.45; an unrolled bisection beyond), the ensemble reassociated. Steps 8-13 always run
in fp32 (or fp64 for checks).

Every function takes a batch of crops; every statistic is per crop.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from fsa_deploy.contract import TOPK_MAX_K
from fsa_deploy.models.registry import HyperParams

Tail = Callable[[torch.Tensor], torch.Tensor]  # tokens [.., d] -> features [.., D] (ln_post, proj)
NEG_INF = float("-inf")


# --- step 6: ProxyCLIP attention from the proxy's features --------------------------------------


def proxy_similarity(feats: torch.Tensor, beta: float, gamma: float, literal: bool = False) -> torch.Tensor:
    """F [B, C', H', W'] -> S1 [B, N, N] = (S0 - beta * mean(S0)) * gamma, S0 the cosine similarity.

    The mean is per crop (our decision; the official code takes it over the batch). The
    deploy form uses mean(S0) = |sum_i f_i|^2 / N^2: the same number from a sum over N
    tokens instead of N^2 entries. S1's sign decides the mask, and an fp32 sum of N^2 = 3.1M
    entries (ONNX Runtime's ReduceMean) shifted S1 by up to 3e-5 at N = 1764: enough to
    flip entries that the rounding of the features alone never flips.
    """
    f = F.normalize(feats.flatten(2), dim=1)  # [B, C', N]
    s0 = f.transpose(1, 2) @ f
    if literal:
        mean = s0.mean(dim=(1, 2), keepdim=True)
    else:
        total = f.sum(dim=2)  # [B, C']
        mean = (total * total).sum(dim=1).view(-1, 1, 1) / float(f.shape[-1] ** 2)
    return (s0 - beta * mean) * gamma


def proxy_floor(s1: torch.Tensor) -> torch.Tensor:
    """[B, N, 1]: the mask's threshold per row, 0 as in the official code, or the row's maximum
    when that is negative.

    When beta * mean(S0) exceeds a patch's self-similarity (every patch alike in the proxy's
    eyes: a crop of clear sky or a plain wall; random-init weights), every entry of its row is
    negative, the official row is all -inf and its softmax NaN, and the NaN spreads through the
    feedback to the whole crop. Such a row keeps its largest entries (the patch itself, up to
    rounding) instead: our decision, equal to the official mask wherever that one is finite.
    """
    return s1.amax(dim=-1, keepdim=True).clamp(max=0.0)


def proxy_attention(feats: torch.Tensor, beta: float, gamma: float, keep: torch.Tensor | None = None,
                    literal: bool = False) -> torch.Tensor:
    """A [B, N, N]: row softmax of S1 with entries below `proxy_floor` (0) dropped (`keep` imposes
    the mask: checks)."""
    s1 = proxy_similarity(feats, beta, gamma, literal)
    keep = s1 >= proxy_floor(s1) if keep is None else keep
    return torch.softmax(s1.masked_fill(~keep, NEG_INF), dim=-1)


def proxy_keep_ambiguous(feats: torch.Tensor, beta: float, gamma: float, tol: float = 1e-5) -> torch.Tensor:
    """Entries of the proxy attention's mask that rounding decides: |S1 - floor| <= tol (float64).

    Dropping or keeping such an entry moves its row by up to exp(0) / Z: the analogue, for
    step 6, of a top-p tie.
    """
    s1 = proxy_similarity(feats.double(), beta, gamma)
    return (s1 - proxy_floor(s1)).abs() <= tol


# --- base attentions of the other methods (per head, over CLS + patches) ------------------------


def base_attention(kind: str, q: torch.Tensor, k: torch.Tensor, omega: torch.Tensor | None) -> torch.Tensor:
    """q, k [B, h, L, dh] -> A_h [B, h, L, L] for qk, sclip, clearclip, naclip."""
    s = q.shape[-1] ** -0.5
    if kind == "qk":
        return torch.softmax((q * s) @ k.transpose(-1, -2), dim=-1)
    if kind == "sclip":
        return torch.softmax((q * s) @ q.transpose(-1, -2), -1) + torch.softmax((k * s) @ k.transpose(-1, -2), -1)
    if kind == "clearclip":
        return torch.softmax((q * s) @ q.transpose(-1, -2), dim=-1)
    if kind == "naclip":
        assert omega is not None, "naclip needs its neighbourhood term"
        return torch.softmax((k * s) @ k.transpose(-1, -2) + omega, dim=-1)
    raise ValueError(f"unknown attention {kind!r}")


def naclip_omega(grid: tuple[int, int], sigma: float) -> torch.Tensor:
    """Omega [1 + g*g, 1 + g*g]: a Gaussian of patch-grid distance, 0 on the CLS row and column."""
    ys, xs = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    pos = torch.stack([ys.flatten(), xs.flatten()], dim=1).double()
    d2 = torch.cdist(pos, pos).square()
    omega = torch.zeros(1 + pos.shape[0], 1 + pos.shape[0], dtype=torch.float64)
    omega[1:, 1:] = torch.exp(-d2 / (2 * sigma**2))
    return omega.float()


# --- steps 8-10: feedback probabilities ---------------------------------------------------------


def class_logits(tokens: torch.Tensor, tail: Tail, text: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * cos(proj(ln_post(tokens)), T): [.., d] -> [.., K]."""
    return scale * (F.normalize(tail(tokens), dim=-1) @ text.transpose(0, 1))


def feedback_probs(z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Q = softmax over queries of (z - u); z [B, N, K], u [B, 1, K]."""
    return torch.softmax(z - u, dim=-1)


# --- step 11: KL and similarity ------------------------------------------------------------------


def kl_deploy(q: torch.Tensor, eps: float) -> torch.Tensor:
    """KL_ij = rowsum(Q log Q)_i - (Q log Q^T)_ij, clamped at 0: no N x N x K tensor."""
    logq = torch.log(q + eps)
    return ((q * logq).sum(-1, keepdim=True) - q @ logq.transpose(1, 2)).clamp_min(0.0)


def kl_literal(q: torch.Tensor, eps: float) -> torch.Tensor:
    """The official N x N x K form."""
    logq = torch.log(q + eps)
    return torch.sum(q.unsqueeze(2) * (logq.unsqueeze(2) - logq.unsqueeze(1)), dim=3).clamp_min(0.0)


def similarity(kl: torch.Tensor) -> torch.Tensor:
    return 1.0 / (1.0 + kl)


# --- step 12: top-p pruning ---------------------------------------------------------------------


def top_p_keep_sort(sim: torch.Tensor, p: float) -> torch.Tensor:
    """The official rule: sort, softmax, inclusive cumsum <= p, always the first; scattered back."""
    sorted_sim, order = torch.sort(sim, dim=-1, descending=True)
    keep_sorted = torch.cumsum(torch.softmax(sorted_sim, dim=-1), dim=-1) <= p
    keep_sorted[..., 0] = True
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)




def top_p_topk_k(n: int, p: float) -> int:
    """How many sorted entries decide the cut: floor(p N) + 1, at most N.

    The c kept entries are the c largest, so their mass is at least c / N; it is <= p, so
    c <= p N. The (c + 1)-th value is never needed: the cut is the c-th.
    """
    return min(n, int(p * n) + 1)


def top_p_keep_topk(sim: torch.Tensor, p: float) -> torch.Tensor:
    """The sort rule on the top floor(p N) + 1 entries only, the cut applied as a threshold.

    keep j iff Sim_ij >= the smallest kept sorted value: the sort's decision except inside
    a tie group at the cut (kept whole here; the sort keeps an arbitrary prefix of it). The
    cumulative mass is compared with p * Z rather than normalised, so one softmax is saved.
    """
    hi = sim.amax(dim=-1, keepdim=True)
    # cum[0] = exp(0) = 1: a budget of at least 1 keeps the first, and only it when p Z < 1
    budget = (p * torch.exp(sim - hi).sum(dim=-1, keepdim=True)).clamp_min(1.0)
    top = torch.topk(sim, top_p_topk_k(sim.shape[-1], p), dim=-1).values
    inside = torch.cumsum(torch.exp(top - hi), dim=-1) <= budget  # a prefix of the sorted row
    cut = top.masked_fill(~inside, float("inf")).amin(dim=-1, keepdim=True)  # no integer index math
    return sim >= cut


def top_p_keep_bisect(sim: torch.Tensor, p: float, steps: int = 32) -> torch.Tensor:
    """Keep j iff the softmax mass of all entries >= Sim_ij is <= p (the row max always).

    For N past TensorRT's TopK limit. mass(t) falls as t rises, so the cut is found by
    bisection on t between the row's min and max; 32 steps bring fp32 bounds to adjacent
    floats for Sim in (2^-9, 1]. Every step is a compare, a masked sum and a select (a multiply
    by the mask costs 35% less than a Where on the CPU); about 3x the TopK form's time.
    """
    hi = sim.amax(dim=-1, keepdim=True)
    lo = sim.amin(dim=-1, keepdim=True)
    e = torch.exp(sim - hi)
    budget = p * e.sum(dim=-1, keepdim=True)  # mass(t) <= p  <=>  masked sum <= p * Z
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        inside = (e * (sim >= mid)).sum(dim=-1, keepdim=True) <= budget
        hi = torch.where(inside, mid, hi)
        lo = torch.where(inside, lo, mid)
    return sim >= hi


def top_p_keep(sim: torch.Tensor, p: float) -> torch.Tensor:
    """The deploy top-p: TopK where TensorRT allows its K, the bisection past it."""
    if top_p_topk_k(sim.shape[-1], p) <= TOPK_MAX_K:
        return top_p_keep_topk(sim, p)
    return top_p_keep_bisect(sim, p)


# --- step 13: re-weighting ------------------------------------------------------------------------


def feedback_attention(sim: torch.Tensor, keep: torch.Tensor, lamda: float) -> torch.Tensor:
    """A_new = row softmax of Sim * exp(lamda * Sim) over kept entries."""
    e = sim * torch.exp(lamda * sim)
    return torch.softmax(e.masked_fill(~keep, NEG_INF), dim=-1)


def feedback(
    o1: torch.Tensor, u: torch.Tensor, tail: Tail, text: torch.Tensor, hp: HyperParams, literal: bool,
    stages: dict[str, torch.Tensor] | None = None, keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """Steps 8-13: O1 [B, N, d] and U [B, 1, d] (after out_proj) -> A_new [B, N, N].

    Runs in the dtype of `o1` (the caller casts to fp32 / fp64 for this block). A given
    `keep` mask replaces the pruning's: checks compare the later stages under one mask.
    """
    z = class_logits(o1, tail, text, hp.patch_scale)
    # [B, K], and on the path to Q: a stage tensor that only feeds the stage list would be
    # pruned as dead by graph tools (ModelOpt's Q/DQ pass does), and --stages would miss it
    uu = class_logits(u[:, 0], tail, text, hp.uniform_scale)
    q = feedback_probs(z, uu.unsqueeze(1))
    kl = (kl_literal if literal else kl_deploy)(q, hp.kl_eps)
    sim = similarity(kl)
    if keep is None:
        keep = top_p_keep_sort(sim, hp.top_p) if literal else top_p_keep(sim, hp.top_p)
    attn_new = feedback_attention(sim, keep, hp.lamda)
    if stages is not None:
        stages.update(patch_logits=z, uniform_logits=uu, feedback_probs=q, kl=kl, sim=sim, keep=keep,
                      attn_new=attn_new)
    return attn_new


# --- step 14: ensemble ----------------------------------------------------------------------------


def ensemble_deploy(attn_new: torch.Tensor, attn: torch.Tensor, v: torch.Tensor, av: torch.Tensor) -> torch.Tensor:
    """A_ens V = (A_new (A V) + A (A_new V) + A_new V) / 3, with `av` = A V already known.

    attn_new [B, N, N] broadcasts over heads when attn / v carry a head axis.
    """
    w = attn_new @ v
    return (attn_new @ av + attn @ w + w) / 3.0


def ensemble_literal(attn_new: torch.Tensor, attn: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The official form: materialise A_ens = (A_new A + A A_new + A_new) / 3, then A_ens V."""
    return ((attn_new @ attn + attn @ attn_new + attn_new) / 3.0) @ v


def ambiguous_entries(sim: torch.Tensor, p: float, tol: float = 1e-5, value_tol: float = 4e-6) -> torch.Tensor:
    """Entries whose keep decision is not defined by the math alone (docs/METHOD.md).

    Ambiguous: tied with another entry of its row at the cut; or its inclusive softmax mass,
    recomputed in float64, within `tol` of p; or (our addition) within `value_tol` of an entry
    on the other side of the cut, or close enough to its neighbours that moving its Sim by
    `value_tol` moves its inclusive mass across p: two fp32 computations of Sim (batched vs
    single, torch vs an engine) differ by ~1e-6, enough to swap two near-equal entries at the cut.
    Returns a bool mask [.., N, N]. Costs a sort per row: for checks, not for graphs.
    """
    s = sim.double()
    sorted_s, order = torch.sort(s, dim=-1, descending=True)
    desc = -sorted_s.contiguous()  # ascending, for searchsorted
    weight = torch.softmax(sorted_s, dim=-1)
    cum = torch.cumsum(weight, dim=-1)
    # mass of all entries >= a value: the cumsum at the last member of its tie group
    last = torch.searchsorted(desc, desc, right=True) - 1
    first = torch.searchsorted(desc, desc, right=False)
    group_mass = cum.gather(-1, last)
    mass_before = torch.where(first > 0, cum.gather(-1, (first - 1).clamp_min(0)), torch.zeros_like(cum))
    near = (group_mass - p).abs() <= tol
    tied_at_cut = (last > first) & (mass_before <= p + tol) & (group_mass > p - tol)
    # the cut: the last kept and the first dropped value of each row
    kept = (cum <= p).sum(-1, keepdim=True).clamp(1, s.shape[-1] - 1)
    v_last, v_next = sorted_s.gather(-1, kept - 1), sorted_s.gather(-1, kept)
    close_cut = ((v_last - v_next) <= value_tol) & (sorted_s >= v_next - value_tol) & (sorted_s <= v_last + value_tol)
    # the decision of an entry whose Sim moves by value_tol: its inclusive mass then lies between the
    # mass above s + value_tol (plus its own) and the mass down to s - value_tol; when p is inside, a
    # neighbour at the cut can swap places with it (seen on an AMD EPYC: two entries 1.2e-7 apart
    # next to a cut 4e-9 above p, the gap to the last kept 4.2e-6)
    above = torch.searchsorted(desc, desc - value_tol, right=False)  # entries with Sim > s + value_tol
    mass_lo = torch.where(above > 0, cum.gather(-1, (above - 1).clamp_min(0)), torch.zeros_like(cum)) + weight
    mass_hi = cum.gather(-1, torch.searchsorted(desc, desc + value_tol, right=True) - 1)
    swing = (mass_lo <= p + tol) & (mass_hi > p - tol)
    amb_sorted = near | tied_at_cut | close_cut | swing
    return torch.zeros_like(amb_sorted).scatter(-1, order, amb_sorted)

"""GRPO advantages, loss aggregation and rewards against loop-based reference formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon

from ambig.losses import group_advantages, grpo_loss
from ambig.model.prompt import format_cot
from ambig.rewards import (
    REWARDS,
    build_reward,
    combined_reward,
    distribution_reward,
    format_reward,
    max_reward,
)

CLASSES = ["neutral", "happy", "sad", "angry"]
EPS_LOW, EPS_HIGH = 0.2, 0.28


# ---------------------------------------------------------------- advantages


def ref_advantages(r: np.ndarray, g: int, scale: str, eps: float) -> np.ndarray:
    out = np.zeros_like(r)
    for start in range(0, len(r), g):
        grp = r[start : start + g]
        centred = grp - grp.mean()
        if scale == "group":
            centred = centred / (np.std(grp, ddof=1) + eps)
        elif scale == "batch":
            centred = centred / (np.std(r, ddof=1) + eps)
        out[start : start + g] = centred
    return out


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("eps", [1e-4, 0.5])
def test_group_advantages_match_reference(scale, eps):
    rng = np.random.default_rng(0)
    r = rng.normal(size=12)
    got = group_advantages(torch.tensor(r, dtype=torch.float64), 4, scale=scale, eps=eps)
    np.testing.assert_allclose(got.numpy(), ref_advantages(r, 4, scale, eps), rtol=1e-10, atol=1e-12)


def test_equal_rewards_give_zero_advantages():
    r = torch.tensor([0.7, 0.7, 0.7, 0.1, 0.9, 0.5])
    for scale in ("group", "batch", "none"):
        adv = group_advantages(r, 3, scale=scale)
        assert torch.all(adv[:3] == 0)
        assert torch.all(torch.isfinite(adv))


def test_group_advantages_errors():
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="group.*batch.*none"):
        group_advantages(torch.zeros(4), 2, scale="rank")


# ---------------------------------------------------------------- loss


def ref_grpo(logps, old, ref, adv, mask, beta, loss_type, max_len):
    """Loop-based reference over sequences and tokens, in float64 Python scalars."""
    B, T = len(logps), len(logps[0])
    per_seq_sums, per_seq_counts = [], []
    ks, clips, ratios = [], [], []
    for b in range(B):
        s, n = 0.0, 0
        for t in range(T):
            if mask[b][t] == 0:
                continue
            ratio = math.exp(logps[b][t] - old[b][t])
            a = adv[b]
            clipped = min(max(ratio, 1 - EPS_LOW), 1 + EPS_HIGH)
            term = -min(ratio * a, clipped * a)
            d = ref[b][t] - logps[b][t]
            k3 = math.exp(d) - d - 1
            term += beta * k3
            s += term
            n += 1
            ks.append(k3)
            ratios.append(ratio)
            clips.append(float((ratio < 1 - EPS_LOW and a < 0) or (ratio > 1 + EPS_HIGH and a > 0)))
        per_seq_sums.append(s)
        per_seq_counts.append(n)
    total, count = sum(per_seq_sums), sum(per_seq_counts)
    if loss_type == "grpo":
        loss = sum(s / max(n, 1) for s, n in zip(per_seq_sums, per_seq_counts, strict=True)) / B
    elif loss_type in ("bnpo", "dapo"):
        loss = total / max(count, 1)
    else:
        loss = total / (B * max_len)
    stats = {"kl": np.mean(ks), "clip_fraction": np.mean(clips), "ratio_mean": np.mean(ratios)}
    return loss, stats


def random_batch(seed=0, B=5, T=7):
    g = torch.Generator().manual_seed(seed)
    logps = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    old = logps + 0.4 * torch.randn(B, T, generator=g, dtype=torch.float64)
    ref = logps + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    mask = (torch.rand(B, T, generator=g) > 0.3).double()
    mask[0, 0] = 1.0
    mask[2] = 0.0  # an all-padding row
    return logps, old, ref, adv, mask


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_grpo_loss_matches_reference(loss_type, beta):
    logps, old, ref, adv, mask = random_batch()
    loss, stats = grpo_loss(
        logps, old, ref, adv, mask, epsilon_low=EPS_LOW, epsilon_high=EPS_HIGH, beta=beta,
        loss_type=loss_type, max_completion_length=9,
    )  # fmt: skip
    want, want_stats = ref_grpo(
        logps.tolist(), old.tolist(), ref.tolist(), adv.tolist(), mask.tolist(), beta, loss_type, 9
    )
    assert loss.item() == pytest.approx(want, rel=1e-10, abs=1e-12)
    for k, v in want_stats.items():
        assert stats[k].item() == pytest.approx(v, rel=1e-10, abs=1e-12), k
    assert 0 < stats["clip_fraction"].item() < 1  # the random batch exercises both branches


def test_k3_zero_when_policy_equals_ref():
    logps, old, _, adv, mask = random_batch(1)
    loss0, _ = grpo_loss(logps, old, logps.clone(), adv, mask, epsilon_low=EPS_LOW,
                         epsilon_high=EPS_HIGH, beta=0.0, loss_type="grpo")  # fmt: skip
    loss1, stats = grpo_loss(logps, old, logps.clone(), adv, mask, epsilon_low=EPS_LOW,
                             epsilon_high=EPS_HIGH, beta=0.04, loss_type="grpo")  # fmt: skip
    assert stats["kl"].item() == 0.0
    assert loss0.item() == loss1.item()


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_on_policy_loss_is_minus_aggregated_advantage(loss_type, beta):
    logps, _, ref, adv, mask = random_batch(2)
    loss, stats = grpo_loss(
        logps, logps.clone(), ref, adv, mask, epsilon_low=EPS_LOW, epsilon_high=EPS_HIGH, beta=beta,
        loss_type=loss_type, max_completion_length=7,
    )  # fmt: skip
    assert stats["ratio_mean"].item() == pytest.approx(1.0)
    assert stats["clip_fraction"].item() == 0.0
    per_token = -adv[:, None] * mask + beta * (torch.exp(ref - logps) - (ref - logps) - 1) * mask
    B = mask.shape[0]
    if loss_type == "grpo":
        want = sum(per_token[b].sum() / max(mask[b].sum(), 1) for b in range(B)) / B
    elif loss_type == "dr_grpo":
        want = per_token.sum() / (B * 7)
    else:
        want = per_token.sum() / mask.sum()
    assert loss.item() == pytest.approx(float(want), rel=1e-10)


def test_gradient_flows_to_logps_only():
    logps, old, ref, adv, mask = random_batch(3)
    tensors = [t.clone().requires_grad_(True) for t in (logps, old, ref, adv)]
    loss, stats = grpo_loss(*tensors, mask, epsilon_low=EPS_LOW, epsilon_high=EPS_HIGH, beta=0.04,
                            loss_type="grpo")  # fmt: skip
    loss.backward()
    assert tensors[0].grad is not None and tensors[0].grad.abs().sum() > 0
    assert tensors[0].grad[2].abs().sum() == 0  # the all-padding row
    assert all(t.grad is None for t in tensors[1:])
    assert all(not v.requires_grad for v in stats.values())


def test_grpo_loss_errors():
    logps, old, ref, adv, mask = random_batch()
    kw = {"epsilon_low": EPS_LOW, "epsilon_high": EPS_HIGH, "beta": 0.0}
    with pytest.raises(ValueError, match="max_completion_length"):
        grpo_loss(logps, old, ref, adv, mask, loss_type="dr_grpo", **kw)
    with pytest.raises(ValueError, match="grpo.*dapo"):
        grpo_loss(logps, old, ref, adv, mask, loss_type="sum", **kw)


# ---------------------------------------------------------------- rewards


def test_distribution_reward_matches_scipy():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), size=6)
    q = rng.dirichlet(np.ones(4), size=6)
    p[0] = [1, 0, 0, 0]
    got = distribution_reward(torch.tensor(p), torch.tensor(q)).numpy()
    want = np.array([1 - jensenshannon(a, b, base=2) ** 2 for a, b in zip(p, q, strict=True)])
    np.testing.assert_allclose(got, want, atol=1e-9)
    assert distribution_reward(torch.tensor(p), torch.tensor(p)).numpy() == pytest.approx(1.0)


GOOD = format_cot("sigh, low voice", "a loss is mentioned", "slow, quiet", "mostly sad") + "\nAnswer: sad"
BROKEN = "Keywords: sigh\nI think the speaker is sad.\nAnswer: sad"


def test_format_reward():
    assert format_reward([GOOD, BROKEN, GOOD + "\nAnswer: happy"], CLASSES).tolist() == [1.0, 0.0, 0.0]


def test_combined_and_max_reward():
    p = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    q = torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.0, 0.0, 1.0, 0.0]])
    total, parts = combined_reward(p, q, [BROKEN, GOOD], CLASSES, w_dist=1.0, w_fmt=0.5)
    dist = distribution_reward(p, q)
    assert torch.allclose(parts["distribution"], dist)
    assert parts["format"].tolist() == [0.0, 1.0]
    assert torch.allclose(total, dist + 0.5 * torch.tensor([0.0, 1.0]))
    assert total[1].item() == pytest.approx(max_reward(1.0, 0.5)) == 1.5
    total2, _ = combined_reward(p, q, [BROKEN, GOOD], CLASSES, w_dist=2.0, w_fmt=0.0)
    assert torch.allclose(total2, 2 * dist)


def test_reward_registry():
    assert {"distribution", "format"} <= set(REWARDS)
    assert build_reward(["format"]) == {"format": format_reward}
    with pytest.raises(ValueError, match="registered"):
        build_reward(["length"])

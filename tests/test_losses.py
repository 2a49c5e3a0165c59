"""Training-loss helpers checked against scipy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import entropy

from ambig.losses import NonFiniteLossError, check_finite, kl_divergence


def test_kl_matches_scipy_entropy():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(5), size=16)
    p[0] = [0.0, 0.0, 1.0, 0.0, 0.0]
    p[1] = [0.5, 0.0, 0.5, 0.0, 0.0]
    logits = torch.tensor(rng.normal(size=(16, 5)), dtype=torch.float64)
    log_q = torch.log_softmax(logits, -1)
    got = kl_divergence(torch.tensor(p), log_q)
    want = entropy(p, log_q.exp().numpy(), axis=1)
    assert got.shape == (16,)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)


def test_kl_batch_dims():
    rng = np.random.default_rng(1)
    p = torch.tensor(rng.dirichlet(np.ones(3), size=(2, 4)))
    log_q = torch.log_softmax(torch.tensor(rng.normal(size=(2, 4, 3))), -1)
    got = kl_divergence(p, log_q)
    assert got.shape == (2, 4)
    want = entropy(p.numpy().reshape(-1, 3), log_q.exp().numpy().reshape(-1, 3), axis=1).reshape(2, 4)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)


def test_gradient_finite_with_zeros_in_p_and_neg_inf_log_q():
    p = torch.tensor([[0.0, 0.3, 0.7], [1.0, 0.0, 0.0]], dtype=torch.float64)
    log_q = torch.tensor(
        [[-float("inf"), np.log(0.4), np.log(0.6)], [0.0, -float("inf"), -float("inf")]],
        dtype=torch.float64,
        requires_grad=True,
    )
    loss = kl_divergence(p, log_q)
    want = [0.3 * np.log(0.3 / 0.4) + 0.7 * np.log(0.7 / 0.6), 0.0]
    np.testing.assert_allclose(loss.detach().numpy(), want, rtol=1e-12, atol=1e-15)
    loss.sum().backward()
    assert torch.isfinite(log_q.grad).all()
    # d/dlog_q of -sum p log_q is -p: zero where p is zero.
    np.testing.assert_allclose(log_q.grad.numpy(), -p.numpy())


def test_gradient_through_log_softmax_with_masked_logits():
    p = torch.tensor([[0.0, 0.25, 0.75, 0.0]])
    logits = torch.tensor([[-float("inf"), 0.3, -0.2, 1.0]], requires_grad=True)
    kl = kl_divergence(p, torch.log_softmax(logits, -1))
    assert torch.isfinite(kl).all()
    kl.sum().backward()
    assert torch.isfinite(logits.grad).all()
    q = torch.softmax(logits.detach(), -1)
    # Gradient of KL(p || softmax(z)) w.r.t. z is q - p.
    torch.testing.assert_close(logits.grad, q - p)


def test_kl_inf_when_q_zero_where_p_positive():
    p = torch.tensor([[0.5, 0.5]])
    log_q = torch.tensor([[0.0, -float("inf")]])
    assert torch.isinf(kl_divergence(p, log_q)).all()


def test_kl_shape_mismatch():
    with pytest.raises(ValueError, match="shapes differ"):
        kl_divergence(torch.ones(2, 3) / 3, torch.zeros(2, 4))


def test_check_finite_passes_and_raises():
    check_finite(torch.tensor(1.5), {"ce": torch.tensor(1.0), "kl": torch.tensor(0.5)}, "step 3")
    nan, inf = float("nan"), float("inf")
    parts = {"ce": torch.tensor(1.0), "kl": torch.tensor(nan), "dpo": torch.tensor([1.0, inf])}
    with pytest.raises(NonFiniteLossError, match="kl") as info:
        check_finite(torch.tensor(float("nan")), parts, "step 7, utts ['Ses01F_a01']")
    msg = str(info.value)
    assert "kl=nan" in msg and "dpo" in msg and "ce" not in msg.split("context")[0].split("parts")[1]
    assert "step 7" in msg and "Ses01F_a01" in msg
    assert issubclass(NonFiniteLossError, FloatingPointError)
    with pytest.raises(FloatingPointError, match="none of the parts"):
        check_finite(torch.tensor(float("inf")), {"ce": torch.tensor(1.0)}, "step 8")

"""Metrics checked against independent (scipy / sklearn / numpy) formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr
from scipy.stats import entropy
from sklearn.metrics import r2_score

from ambig import metrics as M


def _data(n: int = 40, k: int = 4, seed: int = 0, zeros: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(k, 0.7), size=n)
    q = rng.dirichlet(np.full(k, 1.3), size=n)
    if zeros:
        # Zeros in p (one and two classes), in q, in both, one-hot rows.
        p[0] = [0.5, 0.5] + [0.0] * (k - 2)
        p[1] = [1.0] + [0.0] * (k - 1)
        q[2] = [0.0, 0.3] + [0.7 / (k - 2)] * (k - 2)
        p[3] = [0.0, 0.6] + [0.4 / (k - 2)] * (k - 2)
        q[3] = [0.0, 0.2] + [0.8 / (k - 2)] * (k - 2)
        q[4] = [0.0] * (k - 1) + [1.0]
        p[5] = q[5] = [0.0, 1.0] + [0.0] * (k - 2)
    return p, q


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def test_js_matches_scipy_and_bounds():
    p, q = _data()
    got = M.js_divergence(_t(p), _t(q)).numpy()
    want = np.array([jensenshannon(a, b, base=2) ** 2 for a, b in zip(p, q, strict=True)])
    np.testing.assert_allclose(got, want, atol=1e-10)
    assert got.shape == (len(p),)
    assert (got >= 0).all() and (got <= 1).all()
    # Disjoint supports give the maximum, 1.
    disjoint = M.js_divergence(_t(np.array([[1.0, 0.0]])), _t(np.array([[0.0, 1.0]])))
    assert disjoint.item() == pytest.approx(1.0)
    np.testing.assert_allclose(M.js_divergence(_t(p), _t(p)).numpy(), 0.0, atol=1e-12)


def test_kl_matches_scipy_with_zeros_in_p():
    p, _ = _data()
    _, q = _data(seed=1, zeros=False)  # q strictly positive
    got = M.kl_divergence(_t(p), _t(q)).numpy()
    np.testing.assert_allclose(got, entropy(p, q, axis=1), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got, rel_entr(p, q).sum(axis=1), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(M.kl_divergence(_t(p), _t(p)).numpy(), 0.0, atol=1e-12)


def test_kl_finite_when_q_has_zero_where_p_positive():
    p = _t(np.array([[0.5, 0.5]]))
    q = _t(np.array([[1.0, 0.0]]))
    got = M.kl_divergence(p, q).item()
    want = 0.5 * np.log(0.5 / 1.0) + 0.5 * np.log(0.5 / 1e-12)
    assert np.isfinite(got)
    assert got == pytest.approx(want, rel=1e-9)


def test_bc_brier_accuracy_match_numpy():
    p, q = _data()
    tp, tq = _t(p), _t(q)
    np.testing.assert_allclose(M.bhattacharyya_coefficient(tp, tq).numpy(), np.sqrt(p * q).sum(1), atol=1e-12)
    np.testing.assert_allclose(M.bhattacharyya_coefficient(tp, tp).numpy(), 1.0, atol=1e-12)
    k = p.shape[1]
    np.testing.assert_allclose(M.brier(tp, tq).numpy(), ((q - p) ** 2).sum(1) / k, atol=1e-12)
    want_acc = (np.argmax(q, 1) == np.argmax(p, 1)).astype(float)
    np.testing.assert_array_equal(M.argmax_correct(tp, tq).numpy(), want_acc)


def test_accuracy_ties_take_first_index():
    p = _t(np.array([[0.4, 0.4, 0.2], [0.2, 0.4, 0.4]]))
    q = _t(np.array([[0.9, 0.05, 0.05], [0.1, 0.1, 0.8]]))
    np.testing.assert_array_equal(M.argmax_correct(p, q).numpy(), [1.0, 0.0])


def test_brier_matches_sklearn_binary():
    from sklearn.metrics import brier_score_loss

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, size=30)
    prob1 = rng.uniform(size=30)
    p = np.stack([1 - y, y], 1).astype(float)
    q = np.stack([1 - prob1, prob1], 1)
    # Two-class (1/K) sum_k (q-p)^2 equals (prob1 - y)^2, sklearn's binary Brier.
    assert M.brier(_t(p), _t(q)).mean().item() == pytest.approx(brier_score_loss(y, prob1), rel=1e-10)


def test_r2_matches_sklearn_variance_weighted():
    p, q = _data()
    got = M.r2_variance_weighted(_t(p), _t(q)).item()
    assert got == pytest.approx(r2_score(p, q, multioutput="variance_weighted"), rel=1e-10)
    assert M.r2_variance_weighted(_t(p), _t(p)).item() == pytest.approx(1.0)
    mean_pred = np.broadcast_to(p.mean(0), p.shape)
    assert M.r2_variance_weighted(_t(p), _t(mean_pred)).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("splits", [[40], [1, 7, 13, 19], [25, 3, 12]])
def test_distribution_metrics_batched_equals_whole(splits):
    p, q = _data()
    metric = M.DistributionMetrics(num_classes=4)
    start = 0
    for size in splits:
        metric.update(_t(p[start : start + size]).float(), _t(q[start : start + size]).float())
        start += size
    assert start == len(p)
    out = metric.compute()
    assert set(out) == {"js", "bc", "r2", "brier", "kl", "accuracy", "n"}
    assert set(M.METRIC_DIRECTIONS) == set(out) - {"n"}
    want = {
        "js": np.mean([jensenshannon(a, b, base=2) ** 2 for a, b in zip(p, q, strict=True)]),
        "bc": np.sqrt(p * q).sum(1).mean(),
        "r2": r2_score(p, q, multioutput="variance_weighted"),
        "brier": ((q - p) ** 2).mean(1).mean(),
        "kl": np.mean([np.sum(rel_entr(a, np.maximum(b, 1e-12))) for a, b in zip(p, q, strict=True)]),
        "accuracy": (np.argmax(q, 1) == np.argmax(p, 1)).mean(),
        "n": len(p),
    }
    for key, value in want.items():
        # Inputs went through float32, so compare at float32 resolution (KL can be large: relative).
        assert float(out[key]) == pytest.approx(value, rel=1e-5, abs=1e-6), key
    # And exactly (float64 path) against the module's plain functions on the whole set.
    tp, tq = _t(p), _t(q)
    metric64 = M.DistributionMetrics(num_classes=4)
    start = 0
    for size in splits:
        metric64.update(tp[start : start + size], tq[start : start + size])
        start += size
    out64 = metric64.compute()
    whole = {
        "js": M.js_divergence(tp, tq).mean(),
        "bc": M.bhattacharyya_coefficient(tp, tq).mean(),
        "r2": M.r2_variance_weighted(tp, tq),
        "brier": M.brier(tp, tq).mean(),
        "kl": M.kl_divergence(tp, tq).mean(),
        "accuracy": M.argmax_correct(tp, tq).mean(),
    }
    for key, value in whole.items():
        assert float(out64[key]) == pytest.approx(float(value), abs=1e-6), key


def test_single_metric_classes_and_reset():
    p, q = _data()
    tp, tq = _t(p), _t(q)
    for cls, key in [
        (M.JSDivergence, "js"),
        (M.BhattacharyyaCoefficient, "bc"),
        (M.R2VarianceWeighted, "r2"),
        (M.BrierScore, "brier"),
    ]:
        m = cls(num_classes=4)
        m.update(tp[:10], tq[:10])
        m.update(tp[10:], tq[10:])
        full = M.DistributionMetrics(num_classes=4)
        full.update(tp, tq)
        assert float(m.compute()) == pytest.approx(float(full.compute()[key]), abs=1e-12)
    full.reset()
    full.update(tp[:5], tq[:5])
    assert float(full.compute()["n"]) == 5


@pytest.mark.parametrize(
    "p, q, match",
    [
        ([[0.5, 0.6]], [[0.5, 0.5]], "p row 0 sums to 1.1"),
        ([[0.5, 0.5], [0.2, 0.7]], [[0.5, 0.5], [0.5, 0.5]], "p row 1 sums to 0.9"),
        ([[0.5, 0.5]], [[0.3, 0.3]], "q row 0 sums"),
        ([[1.2, -0.2]], [[0.5, 0.5]], "p row 0 has negative"),
        ([[0.5, 0.5], [float("nan"), 0.5]], [[0.5, 0.5], [0.5, 0.5]], "p row 1 has non-finite"),
        ([[0.5, 0.5]], [[float("inf"), 0.0]], "q row 0 has non-finite"),
        ([[0.5, 0.5]], [[0.2, 0.3, 0.5]], "shapes differ"),
    ],
)
def test_validation_errors(p, q, match):
    metric = M.DistributionMetrics(num_classes=2)
    with pytest.raises(ValueError, match=match):
        metric.update(torch.tensor(p), torch.tensor(q))
    with pytest.raises(ValueError, match=match):
        M.validate_distributions(torch.tensor(p), torch.tensor(q))


def test_validation_accepts_within_atol_and_checks_num_classes():
    M.validate_distributions(torch.tensor([[0.5, 0.50005]]))
    with pytest.raises(ValueError, match="sums to"):
        M.validate_distributions(torch.tensor([[0.5, 0.50005]]), atol=1e-5)
    with pytest.raises(ValueError, match="2-D"):
        M.validate_distributions(torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="expected 3 classes"):
        M.DistributionMetrics(num_classes=3).update(torch.tensor([[0.5, 0.5]]), torch.tensor([[0.5, 0.5]]))


def test_prior_js_is_the_mean_js_of_the_training_mean_against_scipy():
    rng = np.random.default_rng(0)
    train, test = rng.dirichlet(np.ones(4), size=30), rng.dirichlet(np.ones(4), size=12)
    mean = train.mean(0)
    expected = np.mean([jensenshannon(p, mean, base=2) ** 2 for p in test])
    assert M.prior_js(torch.tensor(train), torch.tensor(test)) == pytest.approx(expected, abs=1e-9)

"""Distribution-level evaluation metrics (see METHOD.md, "Metrics").

``p`` is the human (annotator) distribution, ``q`` the predicted one; both ``(N, K)`` float
tensors whose rows sum to 1. Per-row functions return ``(N,)``; ``r2_variance_weighted`` is
set-level. :class:`DistributionMetrics` accumulates everything with sum-reduced states only,
so it is safe under distributed evaluation.
"""

from __future__ import annotations

import math

import torch
import torchmetrics
from torch import Tensor

__all__ = [
    "METRIC_DIRECTIONS",
    "BhattacharyyaCoefficient",
    "BrierScore",
    "DistributionMetrics",
    "JSDivergence",
    "R2VarianceWeighted",
    "argmax_correct",
    "bhattacharyya_coefficient",
    "brier",
    "js_divergence",
    "kl_divergence",
    "r2_variance_weighted",
    "validate_distributions",
]

METRIC_DIRECTIONS: dict[str, str] = {
    "js": "down",
    "bc": "up",
    "r2": "up",
    "brier": "down",
    "kl": "down",
    "accuracy": "up",
}

_EPS = 1e-12
_LN2 = math.log(2.0)


def validate_distributions(p: Tensor, q: Tensor | None = None, atol: float = 1e-4) -> None:
    """Raise ``ValueError`` unless ``p`` (and ``q``) are ``(N, K)`` rows of probabilities.

    Checks: 2-D, equal shapes, finite, non-negative, each row sums to 1 within ``atol``.
    Messages give the first bad row index (and its sum).
    """
    tensors = {"p": p} if q is None else {"p": p, "q": q}
    if q is not None and p.shape != q.shape:
        raise ValueError(f"p and q shapes differ: {tuple(p.shape)} vs {tuple(q.shape)}")
    for name, t in tensors.items():
        if t.ndim != 2:
            raise ValueError(f"{name} must be 2-D (N, K), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating tensor, got {t.dtype}")
        t = t.detach()
        bad = ~torch.isfinite(t).all(dim=1)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"{name} row {i} has non-finite entries: {t[i].tolist()}")
        bad = (t < 0).any(dim=1)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"{name} row {i} has negative entries: {t[i].tolist()}")
        sums = t.to(torch.float64).sum(dim=1)
        bad = (sums - 1.0).abs() > atol
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"{name} row {i} sums to {sums[i].item():.7g}, not 1 (atol={atol})")


def _kl_rows(p: Tensor, q: Tensor) -> Tensor:
    """sum_k p log(p / q) with 0 log 0 = 0; q must be > 0 wherever p > 0."""
    positive = p > 0
    safe_p = torch.where(positive, p, torch.ones_like(p))
    safe_q = torch.where(positive, q, torch.ones_like(q))
    return torch.where(positive, p * (torch.log(safe_p) - torch.log(safe_q)), torch.zeros_like(p)).sum(-1)


def kl_divergence(p: Tensor, q: Tensor) -> Tensor:
    """Forward KL(p || q) per row, in nats; ``0 log 0 = 0``; ``q`` clamped at 1e-12 before the log."""
    return _kl_rows(p, q.clamp_min(_EPS))


def js_divergence(p: Tensor, q: Tensor) -> Tensor:
    """Jensen-Shannon divergence per row, log base 2, in [0, 1] (clamped against rounding)."""
    m = 0.5 * (p + q)
    js = 0.5 * (_kl_rows(p, m) + _kl_rows(q, m)) / _LN2
    return js.clamp(0.0, 1.0)


def prior_js(train_p: Tensor, test_p: Tensor) -> float:
    """Mean JS of predicting the training set's mean distribution for every test clip: the score of a model
    that hears nothing, the baseline a trained model's test JS is read against."""
    prior = train_p.mean(0, keepdim=True).expand_as(test_p)
    return float(js_divergence(test_p, prior).mean())


def bhattacharyya_coefficient(p: Tensor, q: Tensor) -> Tensor:
    """Bhattacharyya coefficient ``sum_k sqrt(p_k q_k)`` per row."""
    return torch.sqrt(p * q).sum(-1)


def brier(p: Tensor, q: Tensor) -> Tensor:
    """Multi-class Brier score per row: ``(1/K) sum_k (q_k - p_k)^2``."""
    return ((q - p) ** 2).mean(-1)


def argmax_correct(p: Tensor, q: Tensor) -> Tensor:
    """1.0 where ``argmax q`` equals the plurality of ``p`` (ties: first index), else 0.0."""
    return (q.argmax(-1) == p.argmax(-1)).to(p.dtype if p.is_floating_point() else torch.float32)


def r2_variance_weighted(p: Tensor, q: Tensor) -> Tensor:
    """Set-level ``1 - sum (p-q)^2 / sum (p - mean_n p)^2`` (sklearn ``variance_weighted`` R2).

    NaN when the human distributions have zero variance over the set.
    """
    ss_res = ((p - q) ** 2).sum()
    ss_tot = ((p - p.mean(0, keepdim=True)) ** 2).sum()
    return 1.0 - ss_res / ss_tot


class DistributionMetrics(torchmetrics.Metric):
    """Accumulates JS, BC, R2, Brier, KL and accuracy over batches of ``(p, q)``.

    All states are float64 sums with ``dist_reduce_fx="sum"``. ``compute()`` returns a dict
    with keys ``js, bc, r2, brier, kl, accuracy`` (means over rows; ``r2`` set-level) and ``n``.
    Inputs are validated (rows must sum to 1 within ``atol``) and cast to float64.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(self, num_classes: int, atol: float = 1e-4, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.atol = atol
        for name in ("sum_js", "sum_bc", "sum_brier", "sum_kl", "sum_correct", "n"):
            self.add_state(name, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("sum_p", "sum_p2", "sum_sq_err"):
            self.add_state(name, default=torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, p: Tensor, q: Tensor) -> None:
        validate_distributions(p, q, atol=self.atol)
        if p.shape[1] != self.num_classes:
            raise ValueError(f"expected {self.num_classes} classes, got {p.shape[1]}")
        p = p.detach().to(device=self.sum_p.device, dtype=torch.float64)
        q = q.detach().to(device=self.sum_p.device, dtype=torch.float64)
        self.sum_js += js_divergence(p, q).sum()
        self.sum_bc += bhattacharyya_coefficient(p, q).sum()
        self.sum_brier += brier(p, q).sum()
        self.sum_kl += kl_divergence(p, q).sum()
        self.sum_correct += argmax_correct(p, q).sum()
        self.n += p.shape[0]
        self.sum_p += p.sum(0)
        self.sum_p2 += (p * p).sum(0)
        self.sum_sq_err += ((p - q) ** 2).sum(0)

    def compute(self) -> dict[str, Tensor]:
        n = self.n
        ss_tot = (self.sum_p2 - self.sum_p**2 / n).sum()
        return {
            "js": self.sum_js / n,
            "bc": self.sum_bc / n,
            "r2": 1.0 - self.sum_sq_err.sum() / ss_tot,
            "brier": self.sum_brier / n,
            "kl": self.sum_kl / n,
            "accuracy": self.sum_correct / n,
            "n": n.clone(),
        }


class _SingleDistributionMetric(DistributionMetrics):
    _key: str

    def compute(self) -> Tensor:  # type: ignore[override]
        return super().compute()[self._key]


class JSDivergence(_SingleDistributionMetric):
    """Mean JS divergence (base 2)."""

    _key = "js"
    higher_is_better = False


class BhattacharyyaCoefficient(_SingleDistributionMetric):
    """Mean Bhattacharyya coefficient."""

    _key = "bc"
    higher_is_better = True


class R2VarianceWeighted(_SingleDistributionMetric):
    """Set-level variance-weighted R2."""

    _key = "r2"
    higher_is_better = True


class BrierScore(_SingleDistributionMetric):
    """Mean multi-class Brier score."""

    _key = "brier"
    higher_is_better = False

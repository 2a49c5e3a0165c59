"""How N trajectories' read-outs become one predicted distribution (pure tensor functions).

Each takes the read-outs of one clip's N trajectories, q (N, K), rows on the simplex, and returns (K,).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check(q: Tensor) -> None:
    if q.dim() != 2 or q.shape[0] < 1:
        raise ValueError(f"read-outs must be (N >= 1, K), got shape {tuple(q.shape)}")


def mean_readout(q: Tensor) -> Tensor:
    """Self-consistency: the mean of the N read-outs."""
    _check(q)
    return q.mean(0)


def vote(q: Tensor) -> Tensor:
    """Frequencies of the N trajectories' answers (each one's argmax; ties go to the first class)."""
    _check(q)
    counts = torch.bincount(q.argmax(-1), minlength=q.shape[1]).to(q.dtype)
    return counts / q.shape[0]


def likelihood_weights(logps: Tensor, lengths: Tensor, temperature: float) -> Tensor:
    """softmax(length-normalised log-likelihood / temperature) over the N trajectories."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if (lengths <= 0).any():
        raise ValueError("every trajectory needs at least one scored token")
    return torch.softmax(logps / lengths / temperature, dim=0)


def best_index(scores: Tensor) -> int:
    """The trajectory with the highest score (ties: the first). A NaN score is refused: it would win or lose
    every comparison silently."""
    if scores.dim() != 1 or scores.shape[0] < 1 or torch.isnan(scores).any():
        raise ValueError(f"need N >= 1 scores without NaN, got {scores}")
    return int(torch.argmax(scores))


def best_of(q: Tensor, scores: Tensor) -> Tensor:
    """The read-out of the single trajectory with the highest score (best-of-N, verifier best-of-N)."""
    _check(q)
    if scores.shape != (q.shape[0],):
        raise ValueError(f"need {q.shape[0]} scores, got shape {tuple(scores.shape)}")
    return q[best_index(scores)]


def weighted(q: Tensor, weights: Tensor) -> Tensor:
    """sum_i w_i q_i with weights normalised to 1 (weighted best-of-N, verifier)."""
    _check(q)
    if weights.shape != (q.shape[0],) or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"need {q.shape[0]} non-negative weights with a positive sum, got {weights}")
    return (weights / weights.sum()).to(q.dtype) @ q

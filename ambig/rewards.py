"""GRPO rewards (METHOD.md, "GRPO"): ``w_dist * (1 - JS(p, q)) + w_fmt * [CoT format followed]``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ambig.metrics import js_divergence, validate_distributions
from ambig.model.prompt import parse_cot

__all__ = [
    "REWARDS",
    "build_reward",
    "combined_reward",
    "distribution_reward",
    "format_reward",
    "max_reward",
    "register",
]

REWARDS: dict[str, Callable[..., Tensor]] = {}


def register(name: str) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Decorator adding a reward function to :data:`REWARDS` under ``name`` (names are unique)."""

    def wrap(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        if name in REWARDS:
            raise ValueError(f"reward {name!r} is already registered")
        REWARDS[name] = fn
        return fn

    return wrap


@register("distribution")
def distribution_reward(p: Tensor, q: Tensor) -> Tensor:
    """``1 - JS(p, q)`` per row (base 2, in [0, 1]); ``p`` human, ``q`` predicted, both ``(N, K)``."""
    validate_distributions(p, q)
    return 1.0 - js_divergence(p, q)


@register("format")
def format_reward(texts: Sequence[str], classes: Sequence[str]) -> Tensor:
    """1.0 per full trajectory (CoT and answer line) that :func:`parse_cot` finds well formed, else 0."""
    return torch.tensor([1.0 if parse_cot(t, classes).well_formed else 0.0 for t in texts])


def combined_reward(
    p: Tensor,
    q: Tensor,
    texts: Sequence[str],
    classes: Sequence[str],
    *,
    w_dist: float,
    w_fmt: float,
    answered: Tensor | None = None,
    unanswered_reward: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``w_dist * distribution + w_fmt * format`` per rollout, with both components returned.

    ``answered`` (N,) bool: rollouts that wrote the answer prefix within their budget. The others have no
    read-out (their ``q`` rows are ignored, NaN allowed) and get ``unanswered_reward`` as their distribution
    term, so a rollout cannot earn a read-out's reward without answering.
    """
    if len(texts) != p.shape[0]:
        raise ValueError(f"{len(texts)} texts for {p.shape[0]} distributions")
    if answered is None:
        answered = torch.ones(p.shape[0], dtype=torch.bool)
    answered = answered.to(device=p.device, dtype=torch.bool)
    if answered.shape != p.shape[:1]:
        raise ValueError(f"answered has shape {tuple(answered.shape)} for {p.shape[0]} rollouts")
    dist = torch.full((p.shape[0],), float(unanswered_reward), dtype=q.dtype, device=p.device)
    if answered.any():
        dist[answered] = distribution_reward(p[answered], q[answered]).to(dist.dtype)
    fmt = format_reward(texts, classes).to(device=dist.device, dtype=dist.dtype)
    return w_dist * dist + w_fmt * fmt, {"distribution": dist, "format": fmt}


def max_reward(w_dist: float, w_fmt: float) -> float:
    """The largest reward the formula can give (the GRPOz gold trajectory's reward)."""
    return w_dist + w_fmt


def build_reward(names: Sequence[str]) -> dict[str, Callable[..., Tensor]]:
    """The registered reward functions for ``names``, in order; unknown names raise ``ValueError``."""
    unknown = [n for n in names if n not in REWARDS]
    if unknown:
        raise ValueError(f"unknown reward(s) {unknown}; registered: {sorted(REWARDS)}")
    return {n: REWARDS[n] for n in names}

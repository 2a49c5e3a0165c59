"""Pure tensor loss helpers used by the training strategies (see METHOD.md, "Divergences")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ADVANTAGE_SCALES",
    "GRPO_LOSS_TYPES",
    "NonFiniteLossError",
    "check_finite",
    "dpo_loss",
    "group_advantages",
    "grpo_loss",
    "kl_divergence",
    "sequence_logps",
]


class NonFiniteLossError(FloatingPointError):
    """Raised when a training loss is NaN or infinite."""


def kl_divergence(p: Tensor, log_q: Tensor) -> Tensor:
    """Forward KL(p || q) in nats over the last dim, ``0 log 0 = 0``.

    ``p`` is the human distribution (target, no gradient expected); ``log_q`` the model's
    log-probabilities (e.g. a log-softmax output), through which the gradient flows.
    Entries with ``p_k = 0`` contribute exactly 0 to the value and 0 to the gradient, even
    where ``log_q`` is ``-inf``. An entry with ``p_k > 0`` and ``log_q = -inf`` gives ``+inf``.
    Shape ``(..., K) -> (...)``.
    """
    if p.shape != log_q.shape:
        raise ValueError(f"p and log_q shapes differ: {tuple(p.shape)} vs {tuple(log_q.shape)}")
    positive = p > 0
    # Mask log_q before the product so neither the forward nor the backward sees 0 * -inf.
    safe_log_q = torch.where(positive, log_q, torch.zeros_like(log_q))
    return (torch.xlogy(p, p) - p * safe_log_q).sum(dim=-1)


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
) -> Tensor:
    """Per-pair sigmoid DPO loss (TRL's `sigmoid`): ``-log sigmoid(beta * ((pc - rc) - (pr - rr)))``.

    Each argument is a sequence log-probability per pair, shape ``(N,)``; returns ``(N,)``.
    """
    margin = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    return -F.logsigmoid(beta * margin)


def sequence_logps(logits: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
    """Sum of ``log pi(ids[t] | ids[<t])`` over the positions where ``mask`` is 1: ``(B, L, V) -> (B,)``.

    ``logits``, ``ids`` and ``mask`` are aligned with the inputs (the logits at ``t`` predict ``ids[t+1]``),
    so ``mask`` is 1 on the completion tokens themselves and 0 on prompt and padding.
    """
    target = ids[:, 1:]
    keep = mask[:, 1:].bool()
    logits = logits[:, :-1].float()
    token = logits.gather(-1, target.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    return torch.where(keep, token, torch.zeros_like(token)).sum(-1)


def _describe(t: Tensor) -> str:
    t = t.detach()
    if t.numel() == 1:
        return f"{t.item()}"
    bad = int((~torch.isfinite(t)).sum().item())
    return f"{bad} of {t.numel()} entries non-finite"


def check_finite(loss: Tensor, parts: dict[str, Tensor], context: str) -> None:
    """Raise :class:`NonFiniteLossError` if ``loss`` is NaN/inf.

    The message names the non-finite entries of ``parts`` (e.g. ``{"ce": ..., "kl": ...}``) and
    carries ``context`` (e.g. the step and utterance ids).
    """
    loss = torch.as_tensor(loss)
    if bool(torch.isfinite(loss.detach()).all()):
        return
    bad = []
    for name, value in parts.items():
        value = torch.as_tensor(value)
        if not bool(torch.isfinite(value.detach()).all()):
            bad.append(f"{name}={_describe(value)}")
    which = ", ".join(bad) if bad else "none of the parts (" + ", ".join(parts) + ") is non-finite"
    raise NonFiniteLossError(
        f"non-finite loss {_describe(loss)}; non-finite parts: {which}; context: {context}"
    )


ADVANTAGE_SCALES = ("group", "batch", "none")
GRPO_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")


def group_advantages(rewards: Tensor, group_size: int, scale: str = "group", eps: float = 1e-4) -> Tensor:
    """GRPO advantages ``r - mean_group(r)``, optionally divided by a std (METHOD.md, "GRPO").

    ``rewards`` is ``(N,)`` laid out group after group (``N % group_size == 0``). ``scale``:
    ``"group"`` divides by the group's Bessel-corrected std + ``eps`` (as TRL), ``"batch"`` by the
    std of all ``N`` rewards + ``eps``, ``"none"`` leaves the centred rewards. A group whose
    rewards are all equal gets zero advantages. Returns ``(N,)``.
    """
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"unknown advantage scale {scale!r}; options: {list(ADVANTAGE_SCALES)}")
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be 1-D (N,), got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    if scale == "group" and group_size < 2:
        raise ValueError("scale='group' needs group_size >= 2 (the Bessel-corrected std is undefined)")
    grouped = rewards.view(-1, group_size)
    centred = (grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1)
    if scale == "group":
        std = grouped.std(dim=1, unbiased=True).repeat_interleave(group_size)
        return centred / (std + eps)
    if scale == "batch":
        if rewards.numel() < 2:
            raise ValueError("scale='batch' needs at least 2 rewards")
        return centred / (rewards.std(unbiased=True) + eps)
    return centred


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def grpo_loss(
    logps: Tensor,
    old_logps: Tensor,
    ref_logps: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    *,
    epsilon_low: float,
    epsilon_high: float,
    beta: float,
    loss_type: str,
    max_completion_length: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped-surrogate GRPO loss with an optional k3 KL penalty, aggregated as TRL (one process).

    ``logps``, ``old_logps``, ``ref_logps`` and ``mask`` (0/1) are per completion token ``(B, T)``;
    ``advantages`` is ``(B,)``. Per token: ``-min(ratio A, clip(ratio, 1-eps_low, 1+eps_high) A)
    + beta k3`` with ``ratio = exp(logps - old_logps)`` and ``k3 = exp(ref - logps) - (ref - logps)
    - 1`` (no importance correction of the KL). Only ``logps`` receives gradient; the others are
    detached. ``loss_type``: ``grpo`` (mean over each sequence's tokens, then over sequences),
    ``bnpo`` and ``dapo`` (sum over the batch's active tokens / their count), ``dr_grpo``
    (sum / (B * max_completion_length); the length must be given). ``ref_logps`` may be ``None``
    only when ``beta == 0``.

    Returns the scalar loss and detached stats: ``kl`` (masked mean k3; 0 without ``ref_logps``),
    ``clip_fraction`` (masked share of tokens where the clip binds: ratio below ``1-eps_low`` with
    ``A < 0`` or above ``1+eps_high`` with ``A > 0``) and ``ratio_mean`` (masked mean ratio).
    """
    if loss_type not in GRPO_LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; options: {list(GRPO_LOSS_TYPES)}")
    if loss_type == "dr_grpo" and max_completion_length is None:
        raise ValueError("loss_type='dr_grpo' needs max_completion_length (set it explicitly)")
    if ref_logps is None and beta != 0:
        raise ValueError(f"beta={beta} needs ref_logps")
    shapes = {"old_logps": old_logps, "mask": mask} | ({} if ref_logps is None else {"ref_logps": ref_logps})
    for name, t in shapes.items():
        if t.shape != logps.shape:
            raise ValueError(f"{name} shape {tuple(t.shape)} differs from logps {tuple(logps.shape)}")
    if logps.ndim != 2 or advantages.shape != logps.shape[:1]:
        raise ValueError(
            f"need logps (B, T) and advantages (B,), got {tuple(logps.shape)} and {tuple(advantages.shape)}"
        )
    mask = mask.detach().to(logps.dtype)
    adv = advantages.detach().to(logps.dtype).unsqueeze(1)
    ratio = torch.exp(logps - old_logps.detach())
    clipped = torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    k3 = None
    if ref_logps is not None:
        delta = ref_logps.detach() - logps
        k3 = torch.exp(delta) - delta - 1.0
        if beta != 0:
            per_token = per_token + beta * k3

    masked = per_token * mask
    if loss_type == "grpo":
        loss = (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type in ("bnpo", "dapo"):
        loss = masked.sum() / mask.sum().clamp(min=1.0)
    else:
        loss = masked.sum() / (logps.shape[0] * max_completion_length)

    with torch.no_grad():
        low = (ratio < 1.0 - epsilon_low) & (adv < 0)
        high = (ratio > 1.0 + epsilon_high) & (adv > 0)
        stats = {
            "kl": _masked_mean(k3, mask) if k3 is not None else torch.zeros((), dtype=logps.dtype),
            "clip_fraction": _masked_mean((low | high).to(logps.dtype), mask),
            "ratio_mean": _masked_mean(ratio, mask),
        }
    return loss, stats

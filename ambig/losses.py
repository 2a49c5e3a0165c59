"""Pure tensor loss helpers used by the training strategies (see METHOD.md, "Divergences")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["NonFiniteLossError", "check_finite", "dpo_loss", "kl_divergence", "sequence_logps"]


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

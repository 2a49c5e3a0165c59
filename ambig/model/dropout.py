"""Switch dropout off in a model (`strategy.disable_dropout`, on by default for DPO, GRPO and GRPOz).

Rollouts are sampled and the reference is scored in eval mode, so with dropout on in the policy's training
passes the three would score one model three ways: DPO's margin would be noise at step 0 (policy = reference)
and GRPO's first ratio would not be 1. TRL disables dropout by default for the same reason. Every
`nn.Dropout` (LoRA's included) gets p = 0 and every attention layer's float `attention_dropout` 0.
"""

from __future__ import annotations

from torch import nn


def disable_dropout(model: nn.Module) -> int:
    """Set every dropout probability in `model` to 0; returns how many were non-zero."""
    changed = 0
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            changed += module.p != 0
            module.p = 0.0
        rate = getattr(module, "attention_dropout", None)
        if isinstance(rate, float):
            changed += rate != 0
            module.attention_dropout = 0.0
    return int(changed)

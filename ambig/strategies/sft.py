"""`strategy=sft`: L = lambda_ce * CE(y*) + lambda_kl * KL(p || q(x, y*)), y* teacher-forced."""

from __future__ import annotations

import torch

from ambig.losses import kl_divergence
from ambig.strategies.base import AmbigModule


class SFTStrategy(AmbigModule):
    def __init__(self, model, builder, **kwargs):
        super().__init__(model, builder, **kwargs)
        self.lambda_ce = float(self.loss_cfg["lambda_ce"])
        self.lambda_kl = float(self.loss_cfg["lambda_kl"])

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.teacher_forced(batch)
        ce = self.token_ce(logits, batch["labels"])
        kl = kl_divergence(batch["p"], self.answer_log_q(logits, batch)).mean()
        loss = self.lambda_ce * ce + self.lambda_kl * kl
        return loss, {"ce": ce.detach(), "kl": kl.detach()}

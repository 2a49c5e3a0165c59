"""`strategy=dpo`: on-policy DPO with ambiguity-aware negatives (METHOD.md, "DPO (on-policy)").

Per utterance the policy samples M rollouts and each gets its read-out q_j; a rollout with JS(p, q_j) > tau
is a negative, the curated CoT y* is the positive:

    L = -log sigmoid(beta * [(logp(y+) - logp_ref(y+)) - (logp(y-) - logp_ref(y-))])
        + lambda_kl * KL(p || q(x, y+)) + lambda_ce * CE(y+)

with logp the sum of the completion's token log-probs given the prompt and the audio.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ambig.losses import dpo_loss, kl_divergence
from ambig.metrics import js_divergence
from ambig.model.dropout import disable_dropout as switch_off_dropout
from ambig.model.inputs import completion_batch
from ambig.rollout import Decoded, completions
from ambig.scoring import sequence_logps_of, target_logits, target_mask
from ambig.strategies.base import AmbigModule
from ambig.strategies.reference import ReferencePolicy

NEGATIVES = ("worst", "all_above_tau")


def select_negatives(js: Tensor, tau: float, mode: str) -> list[tuple[int, int]]:
    """(utterance, rollout) index pairs of the negatives, given the rollouts' JS to p, shape (B, M).

    `worst`: each utterance's highest-JS rollout, if its JS exceeds tau (ties: the first). `all_above_tau`:
    every rollout above tau. An utterance none of whose rollouts exceeds tau has no pair.
    """
    if mode not in NEGATIVES:
        raise ValueError(f"negatives={mode!r}: choose one of {', '.join(NEGATIVES)}")
    above = js > tau
    if mode == "worst":
        worst = js.argmax(-1).tolist()
        return [(u, j) for u, j in enumerate(worst) if above[u, j]]
    return [(u, j) for u, j in above.nonzero().tolist()]


def rows_of(batch: dict, index: list[int]) -> dict:
    """The batch's rows `index` (repeats allowed): its tensors, its encoded audio (shared by all rows) and the
    names of its audio inputs."""
    at = torch.as_tensor(index, dtype=torch.long)
    rows = {k: v[at.to(v.device)] for k, v in batch.items() if torch.is_tensor(v)}
    for shared in ("encoded_audio", "audio_keys"):
        if shared in batch:
            rows[shared] = batch[shared]
    return rows


class DPOStrategy(AmbigModule):
    def __init__(
        self,
        model,
        builder,
        *,
        beta: float,
        lambda_kl: float,
        lambda_ce: float,
        num_rollouts: int,
        tau: float,
        negatives: str,
        rollout: dict,
        encode_once: bool,
        reference: str,
        disable_dropout: bool = True,
        **kwargs,
    ):
        super().__init__(model, builder, **kwargs)
        self.encode_once = bool(encode_once)
        self.reference = ReferencePolicy(model, reference, "dpo")
        if disable_dropout:  # policy passes as deterministic as the sampling and reference passes
            switch_off_dropout(model)
        if negatives not in NEGATIVES:
            raise ValueError(f"strategy.negatives={negatives!r}: choose one of {', '.join(NEGATIVES)}")
        if int(num_rollouts) < 1 or beta <= 0 or min(lambda_kl, lambda_ce) < 0 or not 0 <= tau <= 1:
            raise ValueError(
                "strategy=dpo needs num_rollouts >= 1, beta > 0, lambda_kl/lambda_ce >= 0 and tau in [0, 1]; "
                f"got {num_rollouts=}, {beta=}, {lambda_kl=}, {lambda_ce=}, {tau=}"
            )
        self.beta = float(beta)
        self.lambda_kl = float(lambda_kl)
        self.lambda_ce = float(lambda_ce)
        self.num_rollouts = int(num_rollouts)
        self.tau = float(tau)
        self.negatives = negatives
        self.rollout = {
            "max_new_tokens": int(rollout["max_new_tokens"]),
            "temperature": float(rollout["temperature"]),
            "top_p": float(rollout["top_p"]),
        }

    # ---- rollouts ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_rollouts(self, batch: dict) -> Decoded:
        """M rollouts per utterance from the current policy (dropout off), utterance-major."""
        return self.policy_rollouts(batch, self.num_rollouts, **self.rollout)

    def rollout_js(self, batch: dict, rollouts: Decoded) -> Tensor:
        """JS(p, q_j) per utterance and rollout, (B, M). A rollout that never wrote the answer prefix within
        its budget has no read-out and counts as the worst possible answer, JS 1."""
        answered = rollouts.answered.to(rollouts.log_q.device)
        q = torch.where(answered[:, None], rollouts.log_q.exp().float(), torch.ones_like(rollouts.log_q))
        q = q / q.sum(-1, keepdim=True)
        p = batch["p"].to(q.device).repeat_interleave(self.num_rollouts, dim=0)
        js = torch.where(answered, js_divergence(p, q), torch.ones_like(q[:, 0]))
        return js.view(-1, self.num_rollouts)

    # ---- log-probs --------------------------------------------------------------------------------------
    def policy_logps(self, seqs: dict) -> Tensor:
        """Summed completion log-probs (B,) under the policy; `seqs` as `completion_batch` builds it (the
        output head runs on the completion's positions only)."""
        scored = target_logits(self.model, seqs, seqs["completion_mask"])
        return sequence_logps_of(scored, seqs["input_ids"], seqs["completion_mask"])

    def reference_logps(self, seqs: dict) -> Tensor:
        """The same under pi_ref (`strategy.reference`: ambig.strategies.reference)."""
        with self.reference.active():
            return self.policy_logps(seqs)

    # ---- loss -------------------------------------------------------------------------------------------
    def training_loss(self, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        batch = self.shared_audio(batch)
        rollouts = self.sample_rollouts(batch)
        return self.preference_loss(batch, rollouts, self.rollout_js(batch, rollouts))

    def preference_loss(self, batch: dict, rollouts: Decoded, js: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss given the batch's rollouts and their JS (B, M); fixed rollouts give a fixed objective."""
        n_utt = len(batch["ids"])
        scored = self.teacher_forced(batch)
        ce = self.token_ce(scored, batch["labels"])
        kl = kl_divergence(batch["p"], self.answer_log_q(scored, batch)).mean()
        pairs = select_negatives(js, self.tau, self.negatives)
        with_negative = len({u for u, _ in pairs})

        device = ce.device

        def scalar(x: float) -> Tensor:
            return torch.tensor(float(x), device=device)

        parts = {
            "ce": ce.detach(),
            "kl": kl.detach(),
            "negatives/share": scalar(with_negative / n_utt),
            "negatives/none": scalar(n_utt - with_negative),  # utterances without a negative in this batch
            "negatives/pairs": scalar(len(pairs)),
            "rollouts/js_mean": js.mean(),
            "rollouts/js_min": js.min(),
            "rollouts/js_max": js.max(),
            "rollouts/above_tau": (js > self.tau).float().mean(),
            **{k: v.to(device) for k, v in self.rollout_stats(rollouts).items()},
        }
        dpo = torch.zeros((), device=device)
        if pairs:
            dpo, pair_parts = self._dpo_term(batch, scored, rollouts, pairs, n_utt)
            parts.update(pair_parts)
            parts["negatives/mean_js"] = torch.stack([js[u, j] for u, j in pairs]).mean()
        loss = dpo + self.lambda_kl * kl + self.lambda_ce * ce
        parts["dpo"] = dpo.detach()
        return loss, parts

    def _dpo_term(self, batch, scored, rollouts, pairs, n_utt):
        utt = [u for u, _ in pairs]
        chosen = {**batch, "completion_mask": target_mask(batch)}
        # The teacher-forced forward that gave CE and KL also gives log pi(y+).
        policy_chosen = sequence_logps_of(scored, batch["input_ids"], chosen["completion_mask"])
        tokens = completions(rollouts, self.builder)
        rejected = completion_batch(
            self.builder, rows_of(batch, utt), [tokens[u * self.num_rollouts + j] for u, j in pairs]
        )
        policy_rejected = self.policy_logps(rejected)
        ref_chosen = self.reference_logps(chosen)
        ref_rejected = self.reference_logps(rejected)
        at = torch.as_tensor(utt, device=policy_chosen.device)
        losses = dpo_loss(policy_chosen[at], policy_rejected, ref_chosen[at], ref_rejected, self.beta)
        # Each utterance weighs the same: its pairs are averaged (all_above_tau may give several), then the
        # sum over utterances is divided by all of them, so one without a negative adds 0 to the DPO term
        # (METHOD.md: it contributes only KL and CE) and the term scales with the share that has one.
        count = torch.zeros(n_utt, device=at.device).index_add(0, at, torch.ones_like(losses))
        per_utt = torch.zeros(n_utt, device=at.device).index_add(0, at, losses) / count.clamp(min=1)
        chosen_rewards = self.beta * (policy_chosen[at] - ref_chosen[at]).detach()
        rejected_rewards = self.beta * (policy_rejected - ref_rejected).detach()
        return per_utt.sum() / n_utt, {
            "rewards/chosen": chosen_rewards.mean(),
            "rewards/rejected": rejected_rewards.mean(),
            "rewards/margin": (chosen_rewards - rejected_rewards).mean(),
            "rewards/accuracy": (chosen_rewards > rejected_rewards).float().mean(),
            "logps/chosen": policy_chosen[at].detach().mean(),
            "logps/rejected": policy_rejected.detach().mean(),
        }

"""`strategy=grpo` / `strategy=grpoz`: GRPO with the ambiguity reward (METHOD.md, "GRPO", "GRPOz").

Per utterance the policy samples G rollouts; each gets its read-out q_i and the reward

    r_i = w_dist * (1 - JS(p, q_i)) + w_fmt * [the rollout's own text follows the CoT format]

GRPOz appends the curated CoT y* (teacher-forced target: CoT, answer prefix, majority answer word, end token)
to each group as one more member with the largest reward the formula gives (w_dist + w_fmt). Advantages are
the group-normalised rewards; the loss is TRL's clipped surrogate with a k3 KL to the reference policy
(`strategy.reference`: ambig.strategies.reference), per completion token, aggregated as `loss_type` says.

num_iterations (mu): with mu == 1 the old policy is the current one (ratio 1, old log-probs = the policy's,
detached). With mu > 1 the datamodule yields each training batch mu times in a row (`batch_repeats`); the
first time, its rollouts, advantages and old log-probs (computed at sampling time) are kept, and the next
mu - 1 times the same rollouts are scored again by the updated policy, as TRL reuses a generation batch. Every
utterance is still sampled once per epoch; an epoch has mu times as many optimizer steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ambig.losses import ADVANTAGE_SCALES, GRPO_LOSS_TYPES, group_advantages, grpo_loss
from ambig.model.dropout import disable_dropout as switch_off_dropout
from ambig.model.inputs import audio_token_id, completion_batch
from ambig.rewards import combined_reward, max_reward
from ambig.rollout import Decoded, completions, expand
from ambig.scoring import completion_logps, scored_start, target_mask
from ambig.strategies.base import AmbigModule
from ambig.strategies.reference import ReferencePolicy


@dataclass
class Rollouts:
    """One batch's groups, ready for the loss: group after group, G rollouts then (GRPOz) the gold member."""

    ids: list[str]
    seqs: dict  # completion_batch over the expanded prompts
    mask: Tensor  # (N, T) completion tokens, aligned with ambig.scoring.completion_logps
    rewards: Tensor  # (N,)
    advantages: Tensor  # (N,)
    group_size: int
    stats: dict[str, Tensor]
    old_logps: Tensor | None = None  # (N, T), set at sampling time when mu > 1
    uses: int = 0


class GRPOStrategy(AmbigModule):
    def __init__(
        self,
        model,
        builder,
        *,
        num_generations: int,
        epsilon_low: float,
        epsilon_high: float,
        beta: float,
        loss_type: str,
        scale_rewards: str,
        num_iterations: int,
        w_dist: float,
        w_fmt: float,
        include_gold: bool,
        rollout: dict,
        max_completion_length: int,
        encode_once: bool,
        reference: str,
        unanswered_reward: float = 0.0,
        disable_dropout: bool = True,
        gold_answer_word: bool = True,
        **kwargs,
    ):
        super().__init__(model, builder, **kwargs)
        self.encode_once = bool(encode_once)
        self.reference = ReferencePolicy(model, reference, kwargs.get("name", "grpo"))
        if disable_dropout:  # sampling, policy, old and reference passes: one deterministic model
            switch_off_dropout(model)
        if not float(unanswered_reward) <= 1.0:
            raise ValueError(
                f"strategy.unanswered_reward={unanswered_reward}: a rollout that never answers cannot earn "
                "more than a perfect answer's distribution reward (1)"
            )
        self.unanswered_reward = float(unanswered_reward)
        # GRPOz: whether the gold member's answer word counts in the token loss (its CoT always does)
        self.gold_answer_word = bool(gold_answer_word)
        if loss_type not in GRPO_LOSS_TYPES:
            raise ValueError(f"strategy.loss_type={loss_type!r}: choose one of {', '.join(GRPO_LOSS_TYPES)}")
        if scale_rewards not in ADVANTAGE_SCALES:
            raise ValueError(
                f"strategy.scale_rewards={scale_rewards!r}: choose one of {', '.join(ADVANTAGE_SCALES)}"
            )
        group_size = int(num_generations) + int(bool(include_gold))
        if int(num_generations) < 1 or group_size < 2 or int(num_iterations) < 1:
            raise ValueError(
                "strategy=grpo needs num_generations >= 1, a group of at least 2 (generations + gold) and "
                f"num_iterations >= 1; got {num_generations=}, {include_gold=}, {num_iterations=}"
            )
        if min(epsilon_low, epsilon_high, beta, w_dist, w_fmt) < 0 or int(max_completion_length) < 1:
            raise ValueError(
                "strategy=grpo needs epsilon_low/high, beta, w_dist, w_fmt >= 0 and max_completion_length > 0"
            )
        self.num_generations = int(num_generations)
        self.include_gold = bool(include_gold)
        self.group_size = group_size
        self.epsilon_low = float(epsilon_low)
        self.epsilon_high = float(epsilon_high)
        self.beta = float(beta)
        self.loss_type = loss_type
        self.scale_rewards = scale_rewards
        self.num_iterations = int(num_iterations)
        self.batch_repeats = self.num_iterations
        self.w_dist = float(w_dist)
        self.w_fmt = float(w_fmt)
        self.max_completion_length = int(max_completion_length)
        self.rollout = {
            "max_new_tokens": int(rollout["max_new_tokens"]),
            "temperature": float(rollout["temperature"]),
            "top_p": float(rollout["top_p"]),
        }
        self._cache: Rollouts | None = None  # mu > 1: the rollouts being reused

    # ---- rollouts ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_rollouts(self, batch: dict) -> Decoded:
        """G rollouts per utterance from the current policy (dropout off), utterance-major."""
        return self.policy_rollouts(batch, self.num_generations, **self.rollout)

    def build_groups(self, batch: dict, decoded: Decoded) -> Rollouts:
        """Rewards, advantages and completion rows of the batch's groups, given its sampled rollouts."""
        n_utt, g = len(batch["ids"]), self.num_generations
        q = decoded.log_q.exp().float()
        q = q / q.sum(-1, keepdim=True)
        p = batch["p"].to(q.device).repeat_interleave(g, dim=0)
        rewards, parts = combined_reward(
            p,
            q,
            decoded.texts,
            self.builder.classes,
            w_dist=self.w_dist,
            w_fmt=self.w_fmt,
            answered=decoded.answered,
            unanswered_reward=self.unanswered_reward,
        )
        tokens = completions(decoded, self.builder)
        rewards = rewards.view(n_utt, g)
        groups = [tokens[u * g : (u + 1) * g] for u in range(n_utt)]
        if self.include_gold:
            # y*: the teacher-forced target of the batch (CoT, answer prefix, answer word, end token).
            keep = target_mask(batch)
            for u in range(n_utt):
                groups[u] = groups[u] + [batch["input_ids"][u][keep[u]].tolist()]
            gold = torch.full((n_utt, 1), max_reward(self.w_dist, self.w_fmt), device=rewards.device)
            rewards = torch.cat([rewards, gold.to(rewards.dtype)], dim=1)
        rewards = rewards.reshape(-1)
        advantages = group_advantages(rewards, self.group_size, scale=self.scale_rewards)
        seqs = completion_batch(
            self.builder, expand(batch, self.group_size), [t for grp in groups for t in grp]
        )
        stats = {
            "reward/mean": rewards.mean(),
            "reward/std": rewards.std() if rewards.numel() > 1 else torch.zeros(()),
            "reward/distribution_mean": parts["distribution"].mean(),
            "reward/distribution_std": parts["distribution"].std() if g * n_utt > 1 else torch.zeros(()),
            "reward/format_mean": parts["format"].mean(),
            "reward/format_std": parts["format"].std() if g * n_utt > 1 else torch.zeros(()),
            "rollouts/well_formed": parts["format"].mean(),
            **self.rollout_stats(decoded),
            "completion_length": torch.tensor(sum(map(len, decoded.tokens)) / len(decoded.tokens)),
        }
        if self.include_gold:
            stats["gold_advantage"] = advantages.view(n_utt, self.group_size)[:, -1].mean()
        mask = seqs["completion_mask"][:, scored_start(seqs["completion_mask"]) + 1 :].clone()
        if self.include_gold and not self.gold_answer_word:
            # The gold completion ends (answer word, end token) at the right edge: leave the word out, as SFT
            # leaves it out of CE when the KL term supervises that position.
            mask[self.group_size - 1 :: self.group_size, -2] = 0
        return Rollouts(
            ids=list(batch["ids"]),
            seqs=seqs,
            mask=mask,
            rewards=rewards,
            advantages=advantages,
            group_size=self.group_size,
            stats={k: v.detach().float() for k, v in stats.items()},
        )

    # ---- log-probs --------------------------------------------------------------------------------------
    def policy_token_logps(self, seqs: dict) -> Tensor:
        """Per-token log-probs (N, T) of the completions of `seqs` (as `completion_batch` builds it) under the
        policy's sampling distribution, softmax(logits / rollout temperature) without the audio placeholder
        `generate` never emits: what the rollouts were drawn from (TRL divides by the temperature too). The
        output head runs on the completion positions only."""
        suppressed = (audio_token_id(self.builder),)
        logps, _ = completion_logps(self.model, seqs, self.rollout["temperature"], suppressed)
        return logps

    def reference_token_logps(self, seqs: dict) -> Tensor:
        """The same under pi_ref (`strategy.reference`: ambig.strategies.reference)."""
        with self.reference.active():
            return self.policy_token_logps(seqs)

    # ---- loss -------------------------------------------------------------------------------------------
    def next_rollouts(self, batch: dict) -> Rollouts:
        """Fresh groups for `batch`, or (mu > 1) the ones sampled for it while they have uses left."""
        cache = self._cache
        if cache is not None and cache.ids == list(batch["ids"]) and cache.uses < self.num_iterations:
            return cache
        batch = self.shared_audio(batch)
        groups = self.build_groups(batch, self.sample_rollouts(batch))
        if self.num_iterations > 1:
            with torch.no_grad():
                groups.old_logps = self.policy_token_logps(groups.seqs)
            self._cache = groups
        return groups

    def training_loss(self, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        return self.grpo_objective(self.next_rollouts(batch))

    def grpo_objective(self, groups: Rollouts) -> tuple[Tensor, dict[str, Tensor]]:
        """The GRPO loss on fixed groups; counts one use of them (mu > 1)."""
        logps = self.policy_token_logps(groups.seqs)
        old = groups.old_logps if groups.old_logps is not None else logps.detach()
        ref = self.reference_token_logps(groups.seqs) if self.beta != 0 else None
        mask = groups.mask.to(logps.device)
        loss, stats = grpo_loss(
            logps,
            old,
            ref,
            groups.advantages.to(logps.device),
            mask,
            epsilon_low=self.epsilon_low,
            epsilon_high=self.epsilon_high,
            beta=self.beta,
            loss_type=self.loss_type,
            max_completion_length=self.max_completion_length,
        )
        groups.uses += 1
        parts = {k: v.to(logps.device) for k, v in groups.stats.items()}
        parts.update({k: v.detach() for k, v in stats.items()})
        parts["rollouts/reused"] = torch.tensor(float(groups.uses > 1), device=logps.device)
        parts["grpo"] = loss.detach()
        return loss, parts

"""ambig.scoring: the output head on the scored positions only gives the losses and gradients of the model's
full logits; scored log-probs are those of the distribution the rollouts were sampled from."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_dpo import LORA_SAVE, logps_of, make_dpo, perturb_trainable
from test_grpo import make_grpo

from ambig.generation import pinned, pinned_config
from ambig.losses import kl_divergence
from ambig.model.inputs import IGNORE, audio_token_id, completion_batch
from ambig.model.load import load_model
from ambig.rollout import completions, decode
from ambig.scoring import full_logits, target_logits, target_mask, token_logps


@pytest.fixture(scope="module")
def moved(tiny_cfg_factory):
    """A LoRA model with trainable embeddings, head and projector (as model=tiny), moved off its init."""
    torch.manual_seed(0)
    model, _ = load_model(tiny_cfg_factory(lora=LORA_SAVE))
    perturb_trainable(model)
    return model.eval()


def grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def test_sft_loss_and_gradients_equal_the_full_logits_formula(moved, builder, examples, make_sft):
    sft = make_sft(moved, builder)
    batch = builder(examples[:4])
    loss, parts = sft.training_loss(batch)
    loss.backward()
    ours = grads(moved)
    # The same objective written on the model's own logits at every position (F.cross_entropy, the KL at
    # the answer position), as it was computed before the head was restricted to the target.
    logits = full_logits(moved, batch)
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=IGNORE)
    at = logits[torch.arange(4), batch["answer_index"]][:, builder.class_ids]
    kl = kl_divergence(batch["p"], torch.log_softmax(at, -1)).mean()
    (ce + kl).backward()
    theirs = grads(moved)
    torch.testing.assert_close(parts["ce"], ce.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(parts["kl"], kl.detach(), atol=1e-5, rtol=1e-5)
    assert ours.keys() == theirs.keys() and len(ours) > 10
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], atol=1e-5, rtol=1e-4, msg=name)


def test_the_head_runs_on_the_scored_positions_only(moved, builder, examples):
    batch = builder(examples[:3])
    tails = [[5, 6, 7], list(range(20, 31)), [9]]
    seqs = completion_batch(builder, batch, tails)
    scored = target_logits(moved, seqs, seqs["completion_mask"])
    assert scored.logits.shape[1] == 11 < seqs["input_ids"].shape[1] - 50  # the longest completion, no prompt
    full = full_logits(moved, seqs)
    torch.testing.assert_close(scored.logits, full[:, scored.start : -1], atol=1e-5, rtol=0)
    # The teacher-forced target with the answer position: from the target's start on, nothing earlier.
    chosen = builder(examples[:3])
    kept = target_logits(moved, chosen, target_mask(chosen), extra=chosen["answer_index"])
    assert kept.logits.shape[1] == int(target_mask(chosen).sum(1).max())


def test_dpo_sequence_logps_equal_the_full_logits_ones(moved, builder, examples):
    strategy = make_dpo(moved, builder)
    batch = builder(examples[:3])
    seqs = completion_batch(builder, batch, [[5, 6, 7], list(range(20, 40)), [9]])
    # A sequence's log-prob is a float32 sum of up to 20 token log-probs (about -140 for the long row), whose
    # spacing there is 1.5e-5: an absolute tolerance alone is below float32's resolution: CI once saw 1.53e-5.
    # rtol=1e-6 is 8 float32 epsilons of the sum; a wrong position or token shifts it by whole nats.
    with torch.no_grad():
        torch.testing.assert_close(strategy.policy_logps(seqs), logps_of(moved, seqs), atol=1e-5, rtol=1e-6)


def test_grpo_scores_the_distribution_the_rollouts_were_sampled_from(moved, builder, examples):
    """At temperature 0.7 the policy's per-token log-probs equal log-softmax of generate's own processed
    scores (temperature applied, the audio placeholder suppressed) at the sampled tokens."""
    strategy = make_grpo(moved, builder, rollout={"max_new_tokens": 10, "temperature": 0.7, "top_p": 1.0})
    batch = builder.for_evaluation()(examples[:2])
    config = pinned_config(
        max_new_tokens=10, do_sample=True, temperature=0.7, top_p=1.0, pad_token_id=builder.pad_id,
        eos_token_id=builder.end_id, suppress_tokens=[audio_token_id(builder)],
    )  # fmt: skip
    config.output_scores = True
    torch.manual_seed(0)
    with torch.no_grad(), pinned(moved, config):
        out = moved.generate(
            input_ids=batch["prompt_ids"],
            attention_mask=batch["prompt_mask"],
            input_features=batch["input_features"],
            feature_attention_mask=batch["feature_attention_mask"],
            generation_config=config,
        )
    sampled = out.sequences[:, batch["prompt_ids"].shape[1] :]
    sampling = torch.log_softmax(torch.stack(out.scores, 1).float(), -1)
    sampling = sampling.gather(-1, sampled[..., None]).squeeze(-1)  # (B, T): log p_sample(token t)
    rows = [r[: r.index(builder.end_id) + 1] if builder.end_id in r else r for r in sampled.tolist()]
    seqs = completion_batch(builder, batch, rows)
    with torch.no_grad():
        ours = strategy.policy_token_logps(seqs)
    mask = seqs["completion_mask"][:, -ours.shape[1] :].bool()
    for b, row in enumerate(rows):
        torch.testing.assert_close(ours[b][mask[b]], sampling[b, : len(row)], atol=1e-5, rtol=1e-5)
    # At temperature 1 the scores would differ: the test sees the temperature.
    with torch.no_grad():
        plain = make_grpo(moved, builder).policy_token_logps(seqs)
    assert (plain[mask] - ours[mask]).abs().max() > 1e-2


def test_token_logps_divide_by_the_temperature_and_leave_suppressed_tokens_out():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 7, generator=gen)
    targets = torch.tensor([[0, 1, 2], [3, 4, 6]])
    expected = torch.log_softmax(logits / 0.5, -1).gather(-1, targets[..., None]).squeeze(-1)
    torch.testing.assert_close(token_logps(logits, targets, 0.5), expected)
    masked = logits.clone()
    masked[..., 5] = float("-inf")
    expected = torch.log_softmax(masked, -1).gather(-1, targets[..., None]).squeeze(-1)
    torch.testing.assert_close(token_logps(logits, targets, suppressed=(5,)), expected)
    with pytest.raises(ValueError, match="temperature"):
        token_logps(logits, targets, 0.0)


def test_rollouts_are_scored_as_completions(moved, builder, examples):
    """A rollout's completion ends with the end-of-turn token unless the budget cut it."""
    batch = builder.for_evaluation()(examples[:3])
    out = decode(moved, batch, builder, max_new_tokens=3)
    for row, done, cut in zip(completions(out, builder), out.tokens, out.truncated.tolist(), strict=True):
        assert row == (done if cut else done + [builder.end_id])

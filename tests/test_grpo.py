"""strategy=grpo / grpoz: per-token log-probs with the audio, ratio 1 at mu = 1, the GRPOz gold member, k3 at
a fresh adapter, the mu > 1 cache, and whole runs."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from conftest import ADAMW, AMBIGUITY_LOSS
from test_train import make_cfg

from ambig.losses import sequence_logps
from ambig.model.inputs import completion_batch
from ambig.model.load import load_model
from ambig.rollout import completions, expand
from ambig.strategies.grpo import GRPOStrategy, token_logps
from ambig.train import run

OPTIM, LOSS = ADAMW, AMBIGUITY_LOSS


def make_grpo(model, builder, **overrides):
    kwargs = {
        "num_generations": 2,
        "epsilon_low": 0.2,
        "epsilon_high": 0.2,
        "beta": 0.04,
        "loss_type": "grpo",
        "scale_rewards": "group",
        "num_iterations": 1,
        "w_dist": 1.0,
        "w_fmt": 0.5,
        "include_gold": False,
        "rollout": {"max_new_tokens": 8, "temperature": 1.0, "top_p": 1.0},
        "encode_once": True,
        "max_completion_length": 8,
        **overrides,
    }
    return GRPOStrategy(
        model, builder, optim=OPTIM, decoding={"max_new_tokens": 8}, loss=LOSS, name="grpo", **kwargs
    )


@pytest.fixture(scope="module")
def fresh_lora(tiny_cfg_factory):
    torch.manual_seed(0)
    return load_model(tiny_cfg_factory(lora=True))[0]


def test_token_logps_sum_to_sequence_logps():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=gen)
    ids = torch.randint(0, 11, (3, 7), generator=gen)
    mask = torch.tensor([[0, 0, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 1, 1], [0, 1, 1, 1, 1, 1, 1]])
    per_token = token_logps(logits, ids)
    assert per_token.shape == (3, 6)
    torch.testing.assert_close((per_token * mask[:, 1:]).sum(-1), sequence_logps(logits, ids, mask))


def test_refuses_a_model_without_lora(tiny_base, builder):
    with pytest.raises(ValueError, match="LoRA"):
        make_grpo(tiny_base[0], builder)


def test_rollout_logps_see_the_audio(tiny_lora, builder, examples):
    model, _ = tiny_lora
    strategy = make_grpo(model, builder)
    batch = builder(examples[:2])
    seqs = completion_batch(builder, batch, [[5, 6, 7, 8]] * 2)
    other = {**seqs, "input_features": seqs["input_features"] + torch.randn_like(seqs["input_features"])}
    with torch.no_grad():
        a = strategy.policy_token_logps(seqs)
        b = strategy.policy_token_logps(other)
    mask = seqs["completion_mask"][:, 1:].bool()
    assert not torch.allclose(a[mask], b[mask])


def test_mu_one_ratio_is_one_and_fresh_adapter_has_zero_kl(fresh_lora, builder, examples):
    strategy = make_grpo(fresh_lora, builder, include_gold=True)
    strategy.model.train()
    batch = builder(examples[:2])
    torch.manual_seed(0)
    groups = strategy.build_groups(batch, strategy.sample_rollouts(batch))
    assert groups.mask.shape[0] == 2 * 3
    loss, parts = strategy.grpo_objective(groups)
    assert torch.isfinite(loss)
    assert parts["ratio_mean"].item() == pytest.approx(1.0)
    assert parts["clip_fraction"].item() == 0.0
    # LoRA B starts at 0 and the modules_to_save copies equal the originals: policy == reference, k3 == 0.
    # (dropout is on in train mode, so compare in eval mode)
    strategy.model.eval()
    _, parts = strategy.grpo_objective(groups)
    assert parts["kl"].abs().item() < 1e-5
    loss.backward()


def test_grpoz_gold_member_leads_its_group(tiny_lora, builder, examples):
    model, _ = tiny_lora
    strategy = make_grpo(model, builder, include_gold=True, num_generations=3)
    batch = builder(examples[:3])
    torch.manual_seed(1)
    groups = strategy.build_groups(batch, strategy.sample_rollouts(batch))
    rewards = groups.rewards.view(3, 4)
    adv = groups.advantages.view(3, 4)
    assert torch.allclose(rewards[:, -1], torch.full((3,), 1.5))
    assert (rewards[:, :-1] <= 1.5).all()
    assert (adv[:, -1] >= adv[:, :-1].max(1).values).all()
    # The gold member's completion is the teacher-forced target.
    gold_rows = groups.seqs["input_ids"].view(3, 4, -1)[:, -1]
    gold_mask = groups.seqs["completion_mask"].view(3, 4, -1)[:, -1].bool()
    for u, rec in enumerate(e.record for e in examples[:3]):
        before, answer = builder.target_pieces(rec)
        assert gold_rows[u][gold_mask[u]].tolist() == before + [answer, builder.end_id]


def test_rollout_rows_match_their_prompts(tiny_lora, builder, examples):
    model, _ = tiny_lora
    strategy = make_grpo(model, builder)
    batch = builder(examples[:2])
    torch.manual_seed(2)
    decoded = strategy.sample_rollouts(batch)
    groups = strategy.build_groups(batch, decoded)
    expected = completion_batch(
        builder, expand(batch, 2), completions(decoded, builder, strategy.rollout["max_new_tokens"])
    )
    assert torch.equal(groups.seqs["input_ids"], expected["input_ids"])
    assert "gold_advantage" not in groups.stats
    for key in ("reward/mean", "reward/format_mean", "rollouts/well_formed", "completion_length"):
        assert key in groups.stats


def test_mu_above_one_reuses_rollouts_for_the_repeated_batch(tiny_cfg_factory, builder, examples):
    torch.manual_seed(0)
    model = load_model(tiny_cfg_factory(lora=True))[0].train()
    strategy = make_grpo(model, builder, num_iterations=2)
    assert strategy.batch_repeats == 2  # the datamodule yields each batch twice in a row
    first, second = builder(examples[:2]), builder(examples[2:4])
    torch.manual_seed(3)
    g1 = strategy.next_rollouts(first)
    assert g1.old_logps is not None
    strategy.grpo_objective(g1)
    assert strategy.next_rollouts(first) is g1  # the repeat: same rollouts, scored by the updated policy
    _, parts = strategy.grpo_objective(g1)
    assert parts["rollouts/reused"] == 1
    g2 = strategy.next_rollouts(first)  # mu uses spent: a third arrival samples again
    assert g2 is not g1
    g3 = strategy.next_rollouts(second)  # another batch never gets the cached rollouts
    assert g3 is not g2 and g3.ids == second["ids"]


def test_mu_above_one_changes_the_policy_between_uses(tiny_cfg_factory, builder, examples):
    """Second use of the rollouts: old log-probs stay those of sampling time, the ratio moves off 1."""
    torch.manual_seed(0)
    model = load_model(tiny_cfg_factory(lora=True))[0].eval()  # no dropout: ratio is exactly 1 at first
    strategy = make_grpo(model, builder, num_iterations=2)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    torch.manual_seed(1)
    groups = strategy.next_rollouts(builder(examples[:2]))
    old = groups.old_logps.clone()
    loss, parts = strategy.grpo_objective(groups)
    torch.testing.assert_close(parts["ratio_mean"], torch.tensor(1.0))
    loss.backward()
    opt.step()
    _, parts = strategy.grpo_objective(groups)
    assert torch.equal(groups.old_logps, old)
    assert abs(float(parts["ratio_mean"]) - 1.0) > 1e-6


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("AMBIG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("AMBIG_RUNS_DIR", str(tmp_path / "runs"))
    return tmp_path


@pytest.mark.parametrize("name", ["grpo", "grpoz"])
def test_grpo_runs_end_to_end_on_the_synthetic_corpus(isolated, name):
    metrics = run(
        make_cfg(f"strategy={name}", "strategy.num_generations=2", "decoding.max_new_tokens=8"),
        isolated / "run",
    )
    assert metrics["strategy"] == name and 0 <= metrics["js"] <= 1 and metrics["n"] > 0
    rows = list(csv.DictReader((isolated / "run" / "logs" / "metrics.csv").open()))
    logged = {k for row in rows for k, v in row.items() if v}
    for key in (
        "loss",
        "grpo",
        "kl",
        "clip_fraction",
        "reward/mean",
        "reward/distribution_mean",
        "reward/format_mean",
        "rollouts/well_formed",
        "completion_length",
    ):
        assert f"train/{key}" in logged
    assert ("train/gold_advantage" in logged) == (name == "grpoz")
    assert json.loads((isolated / "run" / "metrics.json").read_text())["strategy"] == name

"""strategy=grpo / grpoz: per-token log-probs with the audio, ratio 1 at mu = 1, the GRPOz gold member, k3 at
a fresh adapter, the mu > 1 cache, and whole runs."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from conftest import ADAMW, AMBIGUITY_LOSS
from fixtures.corpus_runs import fixture_cfg
from test_grpo_losses import ref_grpo
from test_train import make_cfg

from ambig.losses import sequence_logps
from ambig.model.inputs import audio_token_id, completion_batch
from ambig.model.load import load_model
from ambig.rollout import completions, expand, sample
from ambig.scoring import full_logits, scored_start, token_logps
from ambig.strategies.grpo import GRPOStrategy
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
        "reference": "base",
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


@pytest.fixture(scope="module")
def moved_lora(tiny_cfg_factory):
    """A LoRA model whose adapter is off its zero init (policy != reference), in eval mode."""
    torch.manual_seed(0)
    model = load_model(tiny_cfg_factory(lora=True))[0]
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def answered_rollouts(strategy, batch):
    """The strategy's rollouts for `batch`, each read out as if it had answered (the fallback read-out):
    the tiny random model never writes "Answer:" in a few tokens, and these tests need rewards that differ."""
    decoded = sample(
        strategy.model, batch, strategy.builder, n=strategy.num_generations, fallback=True, **strategy.rollout
    )
    decoded.answered[:] = True
    return decoded


def full_token_logps(model, seqs, builder, temperature=1.0):
    """Per-token log-probs of every position from the model's whole logits, the audio placeholder left out as
    sampling leaves it out, cut to the completion columns (what ambig.scoring computes from the completion
    positions only)."""
    with torch.no_grad():
        logits = full_logits(model, seqs)[:, :-1].float() / temperature
    audio = audio_token_id(builder)
    logits[..., audio] = float("-inf")
    every = torch.log_softmax(logits, -1).gather(-1, seqs["input_ids"][:, 1:, None]).squeeze(-1)
    every = torch.where(seqs["input_ids"][:, 1:] == audio, 0.0, every)  # prompt audio slots: never scored
    return every[:, scored_start(seqs["completion_mask"]) :]


def test_token_logps_sum_to_sequence_logps():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=gen)
    ids = torch.randint(0, 11, (3, 7), generator=gen)
    mask = torch.tensor([[0, 0, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 1, 1], [0, 1, 1, 1, 1, 1, 1]])
    per_token = token_logps(logits[:, :-1], ids[:, 1:])
    assert per_token.shape == (3, 6)
    torch.testing.assert_close((per_token * mask[:, 1:]).sum(-1), sequence_logps(logits, ids, mask))
    # In chunks of one row (the memory-bounded path), with and without gradients: the same values.
    grad_logits = logits.clone().requires_grad_()
    chunked = token_logps(grad_logits[:, :-1], ids[:, 1:], chunk_elements=1)
    torch.testing.assert_close(chunked, per_token)
    (chunked * mask[:, 1:]).sum().backward()
    reference = logits.clone().requires_grad_()
    sequence_logps(reference, ids, mask).sum().backward()
    torch.testing.assert_close(grad_logits.grad, reference.grad)


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
    mask = seqs["completion_mask"][:, scored_start(seqs["completion_mask"]) + 1 :].bool()
    assert mask.sum().item() == 8 and a.shape == mask.shape
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
    expected = completion_batch(builder, expand(batch, 2), completions(decoded, builder))
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
    strategy.sample_rollouts = lambda batch: answered_rollouts(strategy, batch)  # rewards that differ
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


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_every_loss_type_through_the_strategy_matches_trls_formula(moved_lora, builder, examples, loss_type):
    """The strategy's loss on fixed groups equals the loop-based formula (test_grpo_losses.ref_grpo) fed with
    log-probs computed here from the model: the policy's, and the reference's with the adapter off."""
    model = moved_lora
    strategy = make_grpo(model, builder, include_gold=True, loss_type=loss_type, beta=0.1)
    batch = builder(examples[:2])
    torch.manual_seed(4)
    groups = strategy.build_groups(batch, answered_rollouts(strategy, batch))
    with torch.no_grad():
        loss, parts = strategy.grpo_objective(groups)
        seqs = groups.seqs
        logps = full_token_logps(model, seqs, builder)
        with model.disable_adapter():
            ref = full_token_logps(model, seqs, builder)
    assert logps.shape == groups.mask.shape
    assert (logps - ref).abs().max() > 1e-4  # the adapter matters, so the KL term is not trivially 0
    expected, stats = ref_grpo(
        logps.double().tolist(),
        logps.double().tolist(),  # mu = 1: old = current
        ref.double().tolist(),
        groups.advantages.double().tolist(),
        groups.mask.tolist(),
        0.1,
        loss_type,
        strategy.max_completion_length,
    )
    assert float(loss) == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert float(parts["kl"]) == pytest.approx(stats["kl"], rel=1e-4, abs=1e-7)


def test_seeded_steps_on_a_fixed_toy_batch_raise_its_mean_reward(tiny_cfg_factory, builder, examples):
    """On fixed sampled groups, a few GRPO steps move probability towards the better rollouts: the
    policy-weighted mean reward of each group's rollouts (weights = softmax of sequence log-probs) rises."""
    torch.manual_seed(0)
    model = load_model(tiny_cfg_factory(lora=True))[0].eval()  # eval: no dropout, deterministic steps
    strategy = make_grpo(model, builder, num_generations=4, beta=0.0)
    batch = builder(examples[:2])
    torch.manual_seed(5)
    groups = strategy.build_groups(batch, answered_rollouts(strategy, batch))
    rewards = groups.rewards.view(2, 4)
    assert (rewards.max(1).values - rewards.min(1).values > 1e-4).all()  # something to prefer in each group

    def weighted_reward() -> float:
        with torch.no_grad():
            logps = (strategy.policy_token_logps(groups.seqs) * groups.mask).sum(-1).view(2, 4)
        return float((logps.softmax(-1) * rewards).sum(-1).mean())

    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    seen = [weighted_reward()]
    for _ in range(3):
        loss, _ = strategy.grpo_objective(groups)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen.append(weighted_reward())
    assert all(b > a for a, b in zip(seen, seen[1:], strict=False)), seen


@pytest.mark.parametrize("name", ["grpo", "grpoz"])
def test_grpo_runs_end_to_end_on_the_synthetic_corpus(isolated, name):
    metrics = run(
        make_cfg(
            f"strategy={name}",
            "strategy.num_generations=2",
            "decoding.max_new_tokens=8",
            "decoding.refuse_short_budget=false",
        ),
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


@pytest.mark.parametrize("dataset", ["iemocap", "crema_d"])
@pytest.mark.parametrize("name", ["grpo", "grpoz"])
def test_grpo_runs_on_the_corpus_fixtures(isolated, dataset, name):
    cfg = fixture_cfg(isolated, dataset, f"strategy={name}", "strategy.num_generations=2")
    metrics = run(cfg, isolated / "run")
    assert metrics["dataset"] == dataset and metrics["strategy"] == name and metrics["n"] > 0
    assert 0 <= metrics["js"] <= 1


@pytest.mark.slow
def test_grpoz_starts_from_an_sft_run_and_mu_two_doubles_the_steps(isolated):
    sft = run(make_cfg(), isolated / "sft")
    common = (
        "strategy=grpoz",
        "strategy.num_generations=2",
        "decoding.max_new_tokens=8",
        "decoding.refuse_short_budget=false",
        "logger=csv",
    )
    common += ("trainer.limit_train_batches=null",)  # every training batch, so the count shows the repeats
    once = run(make_cfg(*common, f"init_from={isolated / 'sft'}"), isolated / "mu1")
    twice = run(
        make_cfg(*common, f"init_from={isolated / 'sft'}", "strategy.num_iterations=2"), isolated / "mu2"
    )
    assert once["initialised_from"] == twice["initialised_from"] == sft["best_checkpoint"]

    def steps(run_dir):
        rows = list(csv.DictReader((run_dir / "logs" / "metrics.csv").open()))
        return max(int(r["step"]) for r in rows if r.get("train/loss")), rows

    (n1, _), (n2, rows) = steps(isolated / "mu1"), steps(isolated / "mu2")
    assert n2 + 1 == 2 * (n1 + 1)  # each batch serves two optimizer steps
    reused = [float(r["train/rollouts/reused"]) for r in rows if r.get("train/rollouts/reused")]
    assert 0.0 in reused and 1.0 in reused

    # The default reference (init) is the SFT model the run started from, so the first step's KL is that of
    # LoRA dropout alone; with reference=base it is the distance to the untrained model.
    run(make_cfg(*common, f"init_from={isolated / 'sft'}", "strategy.reference=base"), isolated / "base_ref")

    def first_kl(run_dir):
        rows = list(csv.DictReader((run_dir / "logs" / "metrics.csv").open()))
        return float(min((r for r in rows if r.get("train/kl")), key=lambda r: int(r["step"]))["train/kl"])

    assert first_kl(isolated / "mu1") < first_kl(isolated / "base_ref") / 2


# ---- what a rollout that never answers earns; dropout -----------------------------------------------------


def test_an_unanswered_rollout_earns_the_unanswered_reward_and_no_read_out(tiny_lora, builder, examples):
    model, _ = tiny_lora
    strategy = make_grpo(model, builder, unanswered_reward=0.2, w_fmt=0.5)
    batch = builder(examples[:2])
    calls = []
    head = model.get_base_model().lm_head
    handle = head.register_forward_hook(lambda mod, args, out: calls.append(out.shape[1]))
    torch.manual_seed(0)
    try:
        decoded = strategy.sample_rollouts(batch)  # 8 tokens: the random model never writes "Answer:"
    finally:
        handle.remove()
    assert not decoded.answered.any() and not decoded.fallback.any()
    assert torch.isnan(decoded.log_q).all()
    steps = max(len(t) + (not cut) for t, cut in zip(decoded.tokens, decoded.truncated.tolist(), strict=True))
    assert len(calls) == steps  # one head call per generated token: no read-out forward after them
    groups = strategy.build_groups(batch, decoded)
    torch.testing.assert_close(groups.rewards, torch.full((4,), 0.2))
    assert groups.stats["rollouts/answered"] == 0 and groups.stats["reward/distribution_mean"] == 0.2
    # A rollout that answered keeps its read-out's reward beside one that did not.
    decoded.answered[0] = True
    decoded.log_q[0] = torch.log(torch.tensor([0.7, 0.1, 0.1, 0.1]))
    groups = strategy.build_groups(batch, decoded)
    p = batch["p"][0]
    m = (p + torch.tensor([0.7, 0.1, 0.1, 0.1])) / 2
    js = 0.5 * sum(a * torch.log2(a / b) for a, b in zip(p, m, strict=True) if a > 0)
    js = js + 0.5 * sum(
        a * torch.log2(a / b) for a, b in zip(torch.tensor([0.7, 0.1, 0.1, 0.1]), m, strict=True)
    )
    assert float(groups.rewards[0]) == pytest.approx(1 - float(js), abs=1e-5)
    torch.testing.assert_close(groups.rewards[1:], torch.full((3,), 0.2))


def test_unanswered_reward_above_a_perfect_answer_is_refused(tiny_lora, builder):
    with pytest.raises(ValueError, match="unanswered_reward=1.5"):
        make_grpo(tiny_lora[0], builder, unanswered_reward=1.5)


@pytest.mark.parametrize("disable_dropout", [True, False])
def test_without_dropout_the_first_reused_step_has_ratio_one_and_no_kl(tiny_cfg_factory, builder, examples,
                                                                        disable_dropout):  # fmt: skip
    """num_iterations 2, train mode, LoRA dropout 0.05 in the config, reference = the initial weights: the old
    log-probs (taken at sampling time) and the reference are the policy itself at the first step, so the ratio
    is 1 and k3 is 0 exactly when dropout is off everywhere; with it on in the policy pass they are not."""
    torch.manual_seed(0)
    model = load_model(tiny_cfg_factory(lora=True))[0]
    perturb = torch.Generator().manual_seed(3)
    with torch.no_grad():  # an adapter off its zero init, so dropout on it changes the outputs
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=perturb))
    strategy = make_grpo(model, builder, num_iterations=2, reference="init", disable_dropout=disable_dropout)
    strategy.sample_rollouts = lambda batch: answered_rollouts(strategy, batch)
    model.train()
    strategy.reference.snapshot()
    torch.manual_seed(1)
    groups = strategy.next_rollouts(builder(examples[:2]))
    _, parts = strategy.grpo_objective(groups)
    if disable_dropout:
        assert float(parts["ratio_mean"]) == pytest.approx(1.0, abs=1e-6)
        assert float(parts["kl"]) == pytest.approx(0.0, abs=1e-7)
    else:
        assert abs(float(parts["ratio_mean"]) - 1.0) > 1e-5 or float(parts["kl"]) > 1e-6


@pytest.mark.parametrize("counted", [True, False])
def test_the_gold_answer_word_counts_only_when_asked(tiny_lora, builder, examples, counted):
    model, _ = tiny_lora
    strategy = make_grpo(model, builder, include_gold=True, gold_answer_word=counted)
    batch = builder(examples[:2])
    torch.manual_seed(1)
    groups = strategy.build_groups(batch, strategy.sample_rollouts(batch))
    ids = groups.seqs["input_ids"][:, -groups.mask.shape[1] :]  # the tokens the mask columns score
    for u, rec in enumerate(e.record for e in examples[:2]):
        gold = u * groups.group_size + groups.group_size - 1
        _, answer = builder.target_pieces(rec)
        assert int(ids[gold, -2]) == answer and int(ids[gold, -1]) == builder.end_id
        assert bool(groups.mask[gold, -2]) == counted  # the answer word
        assert groups.mask[gold, -1] == 1 and groups.mask[gold, :-2].sum() > 50  # end token and CoT count
        # Sampled rollouts keep all their tokens.
        sampled = groups.seqs["completion_mask"][u * groups.group_size, -groups.mask.shape[1] :]
        assert torch.equal(groups.mask[u * groups.group_size], sampled)

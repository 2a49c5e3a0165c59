"""strategy=dpo: the loss against TRL's formula, sequence log-probs and their masks, the reference policy,
rollout sampling and read-out, negative selection, a training step, init_from, and whole runs."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from conftest import ADAMW, AMBIGUITY_LOSS
from fixtures.corpus_runs import fixture_cfg
from test_train import make_cfg
from transformers import LogitsProcessor, LogitsProcessorList

from ambig.checkpoints import load_init
from ambig.losses import dpo_loss, sequence_logps
from ambig.model.inputs import audio_token_id, completion_batch
from ambig.model.load import load_model
from ambig.rollout import completions, expand, sample
from ambig.scoring import full_logits, target_mask
from ambig.strategies.dpo import DPOStrategy, rows_of, select_negatives
from ambig.train import run

LORA_SAVE = {
    "r": 8,
    "alpha": 16,
    "dropout": 0.05,
    "target_modules": r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
    "modules_to_save": ["embed_tokens", "lm_head", "multi_modal_projector"],  # as conf/model/tiny.yaml
}
OPTIM, LOSS = ADAMW, AMBIGUITY_LOSS


def make_dpo(model, builder, **overrides):
    kwargs = {
        "beta": 0.1,
        "lambda_kl": 1.0,
        "lambda_ce": 1.0,
        "num_rollouts": 2,
        "tau": 0.1,
        "negatives": "worst",
        "rollout": {"max_new_tokens": 8, "temperature": 1.0, "top_p": 1.0},
        "encode_once": True,
        "reference": "base",
        **overrides,
    }
    return DPOStrategy(
        model, builder, optim=OPTIM, decoding={"max_new_tokens": 8}, loss=LOSS, name="dpo", **kwargs
    )


def logps_of(model, seqs: dict) -> torch.Tensor:
    with torch.no_grad():
        return sequence_logps(full_logits(model, seqs), seqs["input_ids"], seqs["completion_mask"])


def perturb_trainable(model, scale: float = 0.05) -> None:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=gen))


# ---- pure functions ------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.01, 0.1, 0.5, 2.0])
def test_dpo_loss_matches_trl_sigmoid_formula(beta):
    gen = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(64, generator=gen, dtype=torch.float64) * 20 for _ in range(4))
    z = beta * ((pc - rc) - (pr - rr))
    expected = -torch.log(1 / (1 + torch.exp(-z)))  # -log sigmoid, written out
    torch.testing.assert_close(dpo_loss(pc, pr, rc, rr, beta), expected)
    assert torch.allclose(dpo_loss(pc, pr, pc, pr, beta), torch.full((64,), math.log(2), dtype=torch.float64))


def test_sequence_logps_is_a_masked_sum_of_next_token_log_probs():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=gen)
    ids = torch.randint(0, 11, (3, 7), generator=gen)
    mask = torch.tensor([[0, 0, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 1, 1], [0, 1, 1, 1, 1, 1, 1]])
    logp = torch.log_softmax(logits, -1)
    expected = torch.tensor(
        [sum(logp[b, t - 1, ids[b, t]].item() for t in range(1, 7) if mask[b, t]) for b in range(3)]
    )
    torch.testing.assert_close(sequence_logps(logits, ids, mask), expected)
    # Logits at positions that predict a prompt or padding token never count.
    noisy = logits.clone()
    noisy[:, :-1][mask[:, 1:] == 0] += 100 * torch.randn(int((mask[:, 1:] == 0).sum()), 11, generator=gen)
    torch.testing.assert_close(sequence_logps(noisy, ids, mask), expected)


def test_select_negatives_worst_all_above_tau_and_none():
    js = torch.tensor([[0.05, 0.30, 0.20], [0.01, 0.02, 0.09], [0.50, 0.11, 0.50]])
    assert select_negatives(js, 0.1, "worst") == [(0, 1), (2, 0)]
    assert select_negatives(js, 0.1, "all_above_tau") == [(0, 1), (0, 2), (2, 0), (2, 1), (2, 2)]
    assert select_negatives(js, 0.6, "worst") == [] == select_negatives(js, 0.6, "all_above_tau")
    with pytest.raises(ValueError, match="worst, all_above_tau"):
        select_negatives(js, 0.1, "best")


# ---- batches and masks ---------------------------------------------------------------------------------


def test_completion_batch_masks_only_the_completion(builder, examples):
    batch = builder(examples[:3])
    tails = [[5, 6, 7], [8], [9, 10, 11, 12, 13]]
    seqs = completion_batch(builder, batch, tails)
    mask = seqs["completion_mask"]
    assert mask.sum(1).tolist() == [3, 1, 5]
    assert seqs["input_ids"][mask.bool()].tolist() == [t for tail in tails for t in tail]
    assert not (mask.bool() & ~seqs["attention_mask"].bool()).any()
    # The teacher-forced CoT target is the same kind of completion: same ids, same mask.
    chosen = []
    for r in batch["ids"]:
        before, answer = builder.target_pieces(next(e.record for e in examples if e.record.id == r))
        chosen.append(before + [answer, builder.end_id])
    again = completion_batch(builder, batch, chosen)
    assert torch.equal(again["input_ids"], batch["input_ids"])
    assert torch.equal(again["completion_mask"].bool(), target_mask(batch))
    assert target_mask(batch).sum(1).tolist() == [len(c) for c in chosen]


def test_padding_does_not_change_a_sequence_log_prob(tiny_lora, builder, examples):
    model, _ = tiny_lora
    batch = builder(examples[:3])
    tails = [[5, 6, 7], list(range(20, 60)), [9]]  # row 1 is long: rows 0 and 2 get left padding
    together = completion_batch(builder, batch, tails)
    both = logps_of(model, together)
    for i in (0, 2):
        alone = completion_batch(builder, rows_of(batch, [i]), [tails[i]])
        assert alone["input_ids"].shape[1] < together["input_ids"].shape[1]
        torch.testing.assert_close(logps_of(model, alone)[0], both[i], atol=1e-5, rtol=0)


# ---- reference policy ----------------------------------------------------------------------------------


def test_reference_is_the_model_without_its_adapter(tiny_cfg_factory, tiny_base, builder, examples):
    torch.manual_seed(0)
    model, _ = load_model(tiny_cfg_factory(lora=LORA_SAVE))
    perturb_trainable(model)  # LoRA B starts at 0: make the adapter (and the modules_to_save copies) matter
    strategy = make_dpo(model, builder)
    strategy.eval()
    batch = builder(examples[:2])
    seqs = completion_batch(builder, batch, [[5, 6, 7, 8], [9, 10]])
    ref = strategy.reference_logps(seqs)
    base, _ = tiny_base
    expected = logps_of(base, seqs)
    policy = logps_of(strategy.model, seqs)
    torch.testing.assert_close(ref, expected, atol=1e-5, rtol=0)
    assert (policy - expected).abs().min() > 1e-2
    assert not ref.requires_grad


# ---- rollouts ------------------------------------------------------------------------------------------


def test_sample_reuses_the_batch_features_and_reads_out_every_rollout(tiny_lora, builder, examples):
    model, _ = tiny_lora
    batch = builder(examples[:2])
    wide = expand(batch, 3)
    assert wide["ids"] == [batch["ids"][0]] * 3 + [batch["ids"][1]] * 3
    for key in ("input_features", "feature_attention_mask", "prompt_ids", "prompt_mask", "p"):
        assert torch.equal(wide[key][3:6], batch[key][1:2].expand_as(wide[key][3:6]))
    torch.manual_seed(0)
    out = sample(model, batch, builder, n=3, max_new_tokens=2, temperature=1.0, top_p=1.0)
    # Two tokens cannot hold a trajectory and "Answer:": every row is read after one extra forward.
    assert out.log_q.shape == (6, len(builder.classes)) and torch.isfinite(out.log_q).all()
    assert out.answered.tolist() == [False] * 6 and out.fallback.tolist() == [True] * 6
    torch.testing.assert_close(out.log_q.exp().sum(-1), torch.ones(6))
    ended = completions(out, builder)
    for row, full, cut in zip(out.tokens, ended, out.truncated.tolist(), strict=True):
        assert cut == (len(row) == 2)  # no end-of-turn token within the budget
        assert full == (row if cut else row + [builder.end_id])


# ---- the loss ------------------------------------------------------------------------------------------


def test_one_step_lowers_the_loss_on_fixed_rollouts(tiny_cfg_factory, builder, examples):
    torch.manual_seed(0)
    model, _ = load_model(tiny_cfg_factory(lora=True))
    strategy = make_dpo(model, builder, tau=0.0, negatives="all_above_tau")
    strategy.eval()  # no dropout: the loss is a fixed function of the weights
    batch = builder(examples[:3])
    rollouts = strategy.sample_rollouts(batch)
    js = strategy.rollout_js(batch, rollouts)
    assert js.shape == (3, 2)
    before, parts = strategy.preference_loss(batch, rollouts, js)
    # Zero-initialised LoRA: policy == reference, so every pair's DPO loss is log 2 and rewards are 0.
    assert parts["negatives/pairs"] == 6 and parts["negatives/share"] == 1.0
    assert parts["dpo"].item() == pytest.approx(math.log(2), abs=1e-5)
    assert parts["rewards/margin"].item() == pytest.approx(0.0, abs=1e-6)
    torch.testing.assert_close(before, parts["dpo"] + parts["kl"] + parts["ce"])
    opt = torch.optim.AdamW([p for p in strategy.parameters() if p.requires_grad], lr=1e-3)
    before.backward()
    opt.step()
    after, parts_after = strategy.preference_loss(batch, rollouts, js)
    assert after.item() < before.item()
    assert parts_after["rewards/margin"] > 0 and parts_after["dpo"] < math.log(2)


def test_no_negative_leaves_kl_and_ce(tiny_lora, builder, examples):
    model, _ = tiny_lora
    strategy = make_dpo(model, builder, tau=1.0)
    batch = builder(examples[:2])
    rollouts = strategy.sample_rollouts(batch)
    loss, parts = strategy.preference_loss(batch, rollouts, strategy.rollout_js(batch, rollouts))
    assert parts["dpo"] == 0 and parts["negatives/none"] == 2 and "rewards/margin" not in parts
    torch.testing.assert_close(loss.detach(), parts["kl"] + parts["ce"])


def test_dpo_refuses_a_model_without_lora(tiny_base, builder):
    with pytest.raises(ValueError, match="LoRA"):
        make_dpo(tiny_base[0], builder)


# ---- init_from -----------------------------------------------------------------------------------------


def test_load_init_picks_best_then_last_and_loads_trainable_weights(tiny_cfg_factory, builder, tmp_path):
    torch.manual_seed(0)
    source = make_dpo(load_model(tiny_cfg_factory(lora=True))[0], builder)
    perturb_trainable(source)
    trained = {n: p.detach().clone() for n, p in source.named_parameters() if p.requires_grad}
    run_dir = tmp_path / "sft-run"
    (run_dir / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="best-"):
        load_init(source, run_dir)
    torch.save({"state_dict": {"model.nope": torch.zeros(1)}}, run_dir / "checkpoints" / "last.ckpt")
    with pytest.raises(ValueError, match="none of its 1 weights"):
        load_init(source, run_dir)
    torch.save({"state_dict": trained}, run_dir / "checkpoints" / "best-epoch0-step2.ckpt")
    target = make_dpo(load_model(tiny_cfg_factory(lora=True))[0], builder)
    assert load_init(target, run_dir) == run_dir / "checkpoints" / "best-epoch0-step2.ckpt"
    for name, param in target.named_parameters():
        if param.requires_grad:
            assert torch.equal(param, trained[name])
    with pytest.raises(FileNotFoundError, match="no such"):
        load_init(target, tmp_path / "missing")


# ---- whole runs ----------------------------------------------------------------------------------------


def test_dpo_runs_end_to_end_on_the_synthetic_corpus(isolated):
    metrics = run(
        make_cfg(
            "strategy=dpo",
            "strategy.num_rollouts=2",
            "decoding.max_new_tokens=8",
            "decoding.refuse_short_budget=false",
        ),
        isolated / "run",
    )
    assert metrics["strategy"] == "dpo" and 0 <= metrics["js"] <= 1 and metrics["n"] > 0
    rows = list(csv.DictReader((isolated / "run" / "logs" / "metrics.csv").open()))
    logged = {k for row in rows for k, v in row.items() if v}
    for key in ("dpo", "kl", "ce", "negatives/share", "rollouts/js_mean", "rollouts/answered"):
        assert f"train/{key}" in logged
    assert json.loads((isolated / "run" / "metrics.json").read_text())["strategy"] == "dpo"


def test_dpo_starts_from_an_sft_run_with_init_from(isolated):
    sft = run(make_cfg(), isolated / "sft")
    dpo = run(
        make_cfg(
            "strategy=dpo",
            "strategy.num_rollouts=2",
            "decoding.max_new_tokens=8",
            "decoding.refuse_short_budget=false",
            f"init_from={isolated / 'sft'}",
        ),
        isolated / "dpo",
    )
    assert dpo["initialised_from"] == sft["best_checkpoint"] and dpo["initialised_from"].endswith(".ckpt")


@pytest.mark.parametrize("dataset", ["iemocap", "crema_d"])
def test_dpo_runs_on_the_corpus_fixtures(isolated, dataset):
    cfg = fixture_cfg(isolated, dataset, "strategy=dpo", "strategy.num_rollouts=2")
    metrics = run(cfg, isolated / "run")
    assert metrics["dataset"] == dataset and metrics["strategy"] == "dpo" and metrics["n"] > 0


class Boost(LogitsProcessor):
    """Makes one token the most likely at every step."""

    def __init__(self, token):
        self.token = token

    def __call__(self, input_ids, scores):
        scores[:, self.token] += 1e4
        return scores


def test_rollouts_never_write_the_audio_placeholder(tiny_lora, builder, examples):
    model, _ = tiny_lora
    batch = builder(examples[:2])
    audio = audio_token_id(builder)

    class Tempted:  # the model's own forward; generation pushed towards the audio token
        def __call__(self, **kwargs):
            return model(**kwargs)

        def __getattr__(self, name):  # the model's own parts (output head, inner model)
            return getattr(model, name)

        def generate(self, **kwargs):
            return model.generate(**kwargs, logits_processor=LogitsProcessorList([Boost(audio)]))

    torch.manual_seed(0)
    out = sample(Tempted(), batch, builder, n=2, max_new_tokens=4, temperature=1.0, top_p=1.0)
    assert not any(audio in row for row in out.tokens) and torch.isfinite(out.log_q).all()
    with pytest.raises(ValueError, match="audio placeholder"):
        completion_batch(builder, batch, [[audio], [5]])


# ---- rollouts that never answer; dropout ---------------------------------------------------------------


def test_an_unanswered_rollout_is_a_negative_of_js_one(tiny_lora, builder, examples):
    model, _ = tiny_lora
    strategy = make_dpo(model, builder)
    batch = builder(examples[:2])
    torch.manual_seed(0)
    rollouts = strategy.sample_rollouts(batch)  # 8 tokens: no "Answer:", so no read-out
    assert not rollouts.answered.any() and torch.isnan(rollouts.log_q).all()
    js = strategy.rollout_js(batch, rollouts)
    torch.testing.assert_close(js, torch.ones(2, 2))
    rollouts.answered[0] = True
    rollouts.log_q[0] = torch.log(batch["p"][0].clamp(min=1e-9))  # answered with the human distribution
    js = strategy.rollout_js(batch, rollouts)
    assert float(js[0, 0]) == pytest.approx(0.0, abs=1e-4) and float(js[0, 1]) == 1.0
    assert select_negatives(js, 0.1, "worst") == [(0, 1), (1, 0)]


@pytest.mark.parametrize("disable_dropout", [True, False])
def test_margin_is_zero_at_step_zero_without_dropout(tiny_cfg_factory, builder, examples, disable_dropout):
    """Policy = reference (reference=init at the start) in train mode with LoRA dropout in the config: the
    DPO margin is exactly 0 and the loss log 2 when dropout is off; with it on the margin is noise."""
    torch.manual_seed(0)
    model, _ = load_model(tiny_cfg_factory(lora=LORA_SAVE))
    perturb_trainable(model)  # an adapter off its zero init, so dropout on it changes the outputs
    strategy = make_dpo(model, builder, reference="init", tau=0.0, disable_dropout=disable_dropout)
    model.train()
    strategy.reference.snapshot()
    batch = builder(examples[:3])
    torch.manual_seed(1)
    rollouts = strategy.sample_rollouts(batch)
    _, parts = strategy.preference_loss(batch, rollouts, strategy.rollout_js(batch, rollouts))
    margin = float(parts["rewards/margin"])
    if disable_dropout:
        assert margin == pytest.approx(0.0, abs=1e-6) and float(parts["dpo"]) == pytest.approx(math.log(2))
    else:
        assert abs(margin) > 1e-4

"""The Qwen2.5-Omni thinker through the strategies: its audio tower run once per clip (encode_once) gives
its own forward's numbers, DPO / GRPO steps with it, and whole runs (`ambig.evaluate`, SFT) on the tiny
thinker."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import ADAMW, AMBIGUITY_LOSS
from hydra import compose, initialize_config_dir
from test_train import FAST, ROOT, make_cfg

from ambig.evaluate import evaluate
from ambig.model.audio_encoding import audio_tower_frozen, with_encoded_audio
from ambig.model.inputs import completion_batch
from ambig.model.load import load_model
from ambig.rollout import decode, expand, prefill
from ambig.scoring import full_logits
from ambig.strategies.dpo import DPOStrategy
from ambig.strategies.grpo import GRPOStrategy
from ambig.train import run

# The tiny thinker narrowed as in tests/conftest.py, so whole runs stay fast.
NARROW = [
    "model=tiny_omni",
    "model.tiny.hidden_size=64",
    "model.tiny.intermediate_size=128",
    "model.tiny.num_hidden_layers=2",
]


@pytest.fixture(scope="module")
def moved_omni(tiny_omni_cfg_factory):
    """The tiny thinker with LoRA moved off its zero init (policy != reference), in eval mode."""
    torch.manual_seed(0)
    model = load_model(tiny_omni_cfg_factory(lora=True))[0]
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def omni_batch(omni_builder, examples):
    assert len({len(e.audio) for e in examples[:4]}) > 1  # clips of different lengths
    return omni_builder(examples[:4])


# ---- encode_once ------------------------------------------------------------------------------------------


def test_encoded_audio_gives_the_thinkers_own_logits(moved_omni, omni_builder, omni_batch):
    assert audio_tower_frozen(moved_omni)
    encoded = with_encoded_audio(moved_omni, omni_batch)
    assert "input_features" not in encoded
    assert encoded["encoded_audio"].hidden.shape[0] == 4
    assert encoded["encoded_audio"].hidden.shape[-1] == moved_omni.config.text_config.hidden_size
    with torch.no_grad():
        own = full_logits(moved_omni, omni_batch)
        cached = full_logits(moved_omni, encoded)
        with moved_omni.disable_adapter():
            own_ref = full_logits(moved_omni, omni_batch)
    torch.testing.assert_close(cached, own, atol=1e-5, rtol=0)
    assert (own - own_ref).abs().max() > 1e-3  # the adapter matters, so the comparison means something
    # Rows of a group point at their clip.
    tails = [[omni_builder.end_id], [omni_builder.newline_ids[0], omni_builder.end_id]] * 4
    own_rows = completion_batch(omni_builder, expand(omni_batch, 2), tails)
    shared_rows = completion_batch(omni_builder, expand(encoded, 2), tails)
    with torch.no_grad():
        torch.testing.assert_close(
            full_logits(moved_omni, shared_rows),
            full_logits(moved_omni, own_rows),
            atol=1e-5,
            rtol=0,
        )


def test_shared_prefill_decodes_as_each_row_alone(moved_omni, omni_builder, omni_batch):
    alone = decode(moved_omni, expand(omni_batch, 2), omni_builder, max_new_tokens=6)
    shared = decode(
        moved_omni,
        expand(omni_batch, 2),
        omni_builder,
        max_new_tokens=6,
        past_key_values=prefill(moved_omni, omni_batch, 2),
    )
    encoded = with_encoded_audio(moved_omni, omni_batch)
    from_encoded = decode(moved_omni, expand(encoded, 2), omni_builder, max_new_tokens=6)
    for other in (shared, from_encoded):
        assert other.tokens == alone.tokens
        torch.testing.assert_close(other.log_q, alone.log_q, atol=1e-5, rtol=0)


# ---- DPO / GRPO steps -------------------------------------------------------------------------------------

ROLLOUT = {"max_new_tokens": 6, "temperature": 1.0, "top_p": 1.0}


@pytest.mark.parametrize("encode_once", [True, False])
def test_grpo_and_dpo_steps_on_the_thinker(tiny_omni_cfg_factory, omni_builder, examples, encode_once):
    torch.manual_seed(0)
    model = load_model(tiny_omni_cfg_factory(lora=True))[0]
    common = {"optim": ADAMW, "decoding": {"max_new_tokens": 6}, "loss": AMBIGUITY_LOSS}
    grpo = GRPOStrategy(
        model, omni_builder, name="grpo", num_generations=2, epsilon_low=0.2, epsilon_high=0.2, beta=0.04,
        loss_type="grpo", scale_rewards="group", num_iterations=1, w_dist=1.0, w_fmt=0.5, include_gold=True,
        rollout=ROLLOUT, encode_once=encode_once, reference="init", max_completion_length=6, **common,
    )  # fmt: skip
    dpo = DPOStrategy(
        model, omni_builder, name="dpo", beta=0.1, num_rollouts=2, tau=0.0, negatives="worst",
        lambda_kl=1.0, lambda_ce=1.0, rollout=ROLLOUT, encode_once=encode_once, reference="init", **common,
    )  # fmt: skip
    batch = omni_builder(examples[:2])
    for strategy in (grpo, dpo):
        strategy.on_fit_start()
        assert strategy.shared_audio(batch).keys() >= (
            {"encoded_audio"} if encode_once else {"input_features"}
        )
        loss, parts = strategy.training_loss(batch)
        assert torch.isfinite(loss) and all(torch.isfinite(v).all() for v in parts.values())
        loss.backward()
        grads = [p.grad for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
        assert any(g is not None and g.abs().sum() > 0 for g in grads)
        model.zero_grad()


# ---- whole runs -------------------------------------------------------------------------------------------


def test_evaluate_the_tiny_thinker_writes_finite_metrics_and_predictions(isolated):
    """python -m ambig.evaluate model=tiny_omni dataset=synthetic fold=1 tts=cot_greedy, in process."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "evaluate",
            overrides=[
                *FAST,
                *NARROW,
                "dataset=synthetic",
                "fold=1",
                "tts=cot_greedy",
                "decoding.max_new_tokens=8",
                "decoding.refuse_short_budget=false",
            ],
        )
    metrics = evaluate(cfg, isolated / "eval")
    saved = json.loads((isolated / "eval" / "metrics.json").read_text())
    assert saved["model"] == metrics["model"] == "tiny_omni" and saved["tts"]["name"] == "cot_greedy"
    for key in ("js", "bc", "r2", "brier", "kl", "accuracy"):
        assert math.isfinite(saved[key]), key
    assert 0 <= saved["js"] <= 1 and saved["n"] > 0
    rows = [json.loads(x) for x in (isolated / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == saved["n"]
    assert all(abs(sum(r["q"]) - 1) < 1e-5 and isinstance(r["cot"], str) for r in rows)
    assert saved["compute"]["generated_tokens_per_clip"] > 0


def test_sft_trains_the_tiny_thinker_for_two_batches(isolated):
    metrics = run(make_cfg(*NARROW, "strategy=sft"), isolated / "sft")
    assert metrics["model"] == "tiny_omni" and metrics["strategy"] == "sft" and 0 <= metrics["js"] <= 1
    state = torch.load(isolated / "sft" / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["global_step"] == 2
    saved = state["state_dict"]
    assert saved and all("lora_" in k or "modules_to_save" in k for k in saved)
    assert any("embed_tokens" in k for k in saved) and not any(".visual." in k for k in saved)
    # model=tiny_omni trains its random audio tower (model.train_audio_tower): the checkpoint carries it
    assert any(".audio_tower.modules_to_save." in k for k in saved)

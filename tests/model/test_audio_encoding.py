"""The audio tower run once per clip (ambig.model.audio_encoding) and the shared prompt prefill
(ambig.rollout.prefill) give what the model's own per-row forward gives, gradients included."""

from __future__ import annotations

import pytest
import torch

from ambig.model.audio_encoding import (
    audio_tower_frozen,
    embed_with_audio,
    encode_audio,
    with_encoded_audio,
)
from ambig.model.inputs import completion_batch
from ambig.model.load import load_model
from ambig.rollout import decode, expand, prefill, sample
from ambig.scoring import full_logits

SAVE = ["embed_tokens", "lm_head", "multi_modal_projector"]  # as conf/model/tiny.yaml


@pytest.fixture(scope="module")
def saved_lora(tiny_cfg_factory):
    """LoRA + trainable embeddings, head and projector (the tiny config), adapter moved off its zero init."""
    torch.manual_seed(0)
    cfg = tiny_cfg_factory(lora=True)
    cfg.lora.modules_to_save = SAVE
    model = load_model(cfg)[0]
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def batch(builder, examples):
    lengths = {len(e.audio) for e in examples[:4]}
    assert len(lengths) > 1, "the test batch should mix clip lengths (padding in the audio tower)"
    return builder(examples[:4])


def test_the_audio_tower_is_frozen_in_the_shipped_lora_setting(saved_lora):
    assert audio_tower_frozen(saved_lora)


def test_encoded_audio_gives_the_models_own_logits(saved_lora, batch):
    encoded = with_encoded_audio(saved_lora, batch)
    assert "input_features" not in encoded and encoded["encoded_audio"].hidden.shape[0] == 4
    with torch.no_grad():
        own = full_logits(saved_lora, batch)
        cached = full_logits(saved_lora, encoded)
        with saved_lora.disable_adapter():
            own_ref = full_logits(saved_lora, batch)
            cached_ref = full_logits(saved_lora, encoded)
    torch.testing.assert_close(cached, own, atol=1e-5, rtol=0)
    torch.testing.assert_close(cached_ref, own_ref, atol=1e-5, rtol=0)
    assert (own - own_ref).abs().max() > 1e-3  # the adapter matters, so the reference check means something


def test_rows_point_at_their_clip(saved_lora, builder, batch):
    """Rows of a group share their clip's encoding through clip_index; their logits equal per-row features."""
    encoded = with_encoded_audio(saved_lora, batch)
    tails = [[builder.end_id], [builder.newline_ids[0], builder.end_id], [builder.end_id]] * 4
    own = completion_batch(builder, expand(batch, 3), tails)
    shared = completion_batch(builder, expand(encoded, 3), tails)
    assert shared["clip_index"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    with torch.no_grad():
        torch.testing.assert_close(
            full_logits(saved_lora, shared),
            full_logits(saved_lora, own),
            atol=1e-5,
            rtol=0,
        )


def test_gradients_reach_the_trainable_projector_as_without_the_cache(saved_lora, batch):
    encoded = with_encoded_audio(saved_lora, batch)
    projector = [
        (n, p) for n, p in saved_lora.named_parameters() if p.requires_grad and "multi_modal_projector" in n
    ]
    assert projector

    def grads(b):
        saved_lora.zero_grad()
        full_logits(saved_lora, b).logsumexp(-1).mean().backward()
        return [p.grad.clone() for _, p in projector]

    for g_cached, g_own in zip(grads(encoded), grads(batch), strict=True):
        assert g_own.abs().sum() > 0
        torch.testing.assert_close(g_cached, g_own, atol=1e-6, rtol=1e-4)
    saved_lora.zero_grad()


def test_a_row_pointing_at_the_wrong_clip_is_refused(saved_lora, batch):
    encoded = encode_audio(saved_lora, batch["input_features"], batch["feature_attention_mask"])
    longest = int(encoded.lengths.argmax())
    wrong = torch.full((4,), longest)  # every row claims the longest clip; the `batch` fixture mixes lengths
    with pytest.raises(ValueError, match="audio tokens but their clips give"):
        embed_with_audio(saved_lora, batch["input_ids"], encoded, wrong)


def test_a_trainable_audio_tower_is_never_cached(tiny_cfg_factory, batch):
    model = load_model(tiny_cfg_factory(lora=False))[0]
    model.model.audio_tower.layers[0].fc1.weight.requires_grad_(True)
    assert not audio_tower_frozen(model)
    with pytest.raises(ValueError, match="trainable parameters"):
        encode_audio(model, batch["input_features"], batch["feature_attention_mask"])


def test_shared_prefill_decodes_as_each_row_alone(saved_lora, builder, batch):
    """Greedy: the prompt run once per utterance and its cache copied to 3 rows gives each row's own tokens
    and read-out, for feature rows and for encoded-audio rows."""
    alone = decode(saved_lora, expand(batch, 3), builder, max_new_tokens=10)
    shared = decode(
        saved_lora,
        expand(batch, 3),
        builder,
        max_new_tokens=10,
        past_key_values=prefill(saved_lora, batch, 3),
    )
    encoded = with_encoded_audio(saved_lora, batch)
    from_encoded = decode(saved_lora, expand(encoded, 3), builder, max_new_tokens=10)
    for other in (shared, from_encoded):
        assert other.tokens == alone.tokens
        torch.testing.assert_close(other.log_q, alone.log_q, atol=1e-5, rtol=0)


def test_sampling_runs_the_audio_tower_once_per_clip(saved_lora, builder, batch):
    """Rows through the audio tower: shared prompt + encoded audio = one per clip, else one per rollout."""
    rows = []
    hook = saved_lora.get_base_model().model.audio_tower.register_forward_hook(
        lambda mod, args, out: rows.append(args[0].shape[0])
    )
    try:
        torch.manual_seed(0)
        sample(
            saved_lora, batch, builder, n=3, max_new_tokens=6, temperature=1.0, top_p=1.0, share_prompt=False
        )
        per_rollout = sum(rows)
        rows.clear()
        encoded = with_encoded_audio(saved_lora, batch)
        torch.manual_seed(0)
        out = sample(saved_lora, encoded, builder, n=3, max_new_tokens=6, temperature=1.0, top_p=1.0)
    finally:
        hook.remove()
    assert per_rollout >= 12  # 4 clips x 3 rollouts at prefill (and any read-out fallback)
    assert sum(rows) == 4  # the encoding only: prefill, generation and read-outs reuse it
    assert out.log_q.shape == (12, len(builder.classes))

"""Gemma 3n's own parts (ambig.model.gemma3n), on its twin: the vision tower's stand-in (narrow, restored,
no image gets through), what `load_gemma3n` accepts of a checkpoint (only the vision tower's weights unread),
the final-logit soft cap in every head ambig runs outside the model's forward, the audio path without
`encode_once`, LoRA's reach, the audio span and its checks. The shared twin tests are in
tests/model/test_family_twins.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ADAMW, AMBIGUITY_LOSS
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from ambig.data.synthetic import CLASSES
from ambig.model import gemma3n
from ambig.model.audio_encoding import audio_tower_frozen, can_encode_once, encode_audio
from ambig.model.audio_formats import GEMMA3N_AUDIO_TOKENS, GEMMA3N_USM
from ambig.model.family import FAMILIES, family_of
from ambig.model.inputs import BatchBuilder
from ambig.model.load import apply_lora, load_model, resolve_source
from ambig.rollout import ClassLogits
from ambig.scoring import full_logits, next_token_logits, target_logits, target_mask

CONF = Path(__file__).resolve().parents[2] / "conf"
RATE = 16000


@pytest.fixture(scope="module")
def g3n(tmp_path_factory):
    """(model config, base model, processor, builder, checkpoint directory) of the twin."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train", overrides=["model=tiny_gemma3n", f"paths.cache_dir={tmp_path_factory.mktemp('g3n')}"]
        )
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model_cfg["lora"] = None
    model_cfg = OmegaConf.create(model_cfg)
    model, processor = load_model(model_cfg)
    model.requires_grad_(False)  # frozen, as a pretrained model under LoRA (nothing here trains)
    builder = BatchBuilder(
        processor, CLASSES, cot=True, ce_answer_word=False, sample_rate=RATE, family=FAMILIES["gemma3n"]
    )
    return model_cfg, model.eval(), processor, builder, Path(resolve_source(model_cfg))


def test_the_stand_in_replaces_only_the_vision_tower_and_only_while_active():
    from transformers import Gemma3nAudioConfig, Gemma3nVisionConfig
    from transformers.models.gemma3n import modeling_gemma3n

    real = modeling_gemma3n.AutoModel
    with gemma3n.without_vision_tower():
        auto = modeling_gemma3n.AutoModel
        assert auto is not real
        tower = auto.from_config(Gemma3nVisionConfig(label_names=["a"]))
        assert isinstance(tower, gemma3n.NoVisionTower) and not list(tower.parameters())
        audio = auto.from_config(
            Gemma3nAudioConfig(hidden_size=8, conf_num_attention_heads=2, conf_num_hidden_layers=1)
        )
        assert type(audio).__name__ == "Gemma3nAudioEncoder"
    assert modeling_gemma3n.AutoModel is real
    with pytest.raises(RuntimeError, match="boom"), gemma3n.without_vision_tower():
        raise RuntimeError("boom")
    assert modeling_gemma3n.AutoModel is real  # restored after an error too


def test_the_twin_has_no_vision_weights_and_refuses_images(g3n):
    _, model, _, _, source = g3n
    assert isinstance(model.model.vision_tower, gemma3n.NoVisionTower)
    assert not any(k.startswith(gemma3n.VISION_PREFIX) for k in load_file(source / "model.safetensors"))
    assert any(k.startswith("model.embed_vision.") for k in load_file(source / "model.safetensors"))
    ids = torch.tensor([[model.config.text_config.bos_token_id, model.config.image_token_id]])
    with pytest.raises(RuntimeError, match="without its vision tower"):
        model(input_ids=ids, pixel_values=torch.zeros(1, 3, 32, 32))


def _copy_with(source: Path, dest: Path, edit) -> Path:
    shutil.copytree(source, dest)
    weights = load_file(dest / "model.safetensors")
    edit(weights)
    save_file(weights, dest / "model.safetensors", metadata={"format": "pt"})
    return dest


def test_the_loader_leaves_only_the_vision_towers_weights_unread(g3n, tmp_path):
    _, model, _, _, source = g3n
    # the release's layout: model.vision_tower.timm_model.* beside everything else
    release = _copy_with(
        source,
        tmp_path / "release",
        lambda w: w.update({"model.vision_tower.timm_model.conv_stem.weight": torch.ones(2)}),
    )
    loaded = gemma3n.load_gemma3n(str(release), torch.float32)
    ref, got = model.state_dict(), loaded.state_dict()
    assert set(ref) == set(got) and all(torch.equal(ref[k], got[k]) for k in ref)

    extra = _copy_with(
        source, tmp_path / "extra", lambda w: w.update({"model.audio_tower.extra.weight": torch.ones(2)})
    )
    with pytest.raises(
        gemma3n.Gemma3nLoadError, match=r"unread besides the vision tower: \['model.audio_tower.extra"
    ):
        gemma3n.load_gemma3n(str(extra), torch.float32)
    missing = _copy_with(
        source, tmp_path / "missing", lambda w: w.pop("model.embed_audio.embedding_projection.weight")
    )
    with pytest.raises(gemma3n.Gemma3nLoadError, match=r"missing .*embed_audio.embedding_projection.weight"):
        gemma3n.load_gemma3n(str(missing), torch.float32)


def test_a_checkpoint_or_processor_of_another_audio_span_is_refused(g3n, tmp_path):
    _, _, _, _, source = g3n
    other = Path(shutil.copytree(source, tmp_path / "other"))
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "audio_soft_tokens_per_image": 100}))
    with pytest.raises(gemma3n.Gemma3nLoadError, match="audio_soft_tokens_per_image=100"):
        gemma3n.load_gemma3n(str(other), torch.float32)
    settings = json.loads((other / "processor_config.json").read_text())
    (other / "processor_config.json").write_text(json.dumps({**settings, "audio_seq_length": 100}))
    with pytest.raises(gemma3n.Gemma3nLoadError, match="writes 100 audio tokens"):
        gemma3n.load_processor(str(other))


def test_every_head_outside_the_forward_applies_the_final_soft_cap(g3n, examples):
    """ambig runs the head itself (scoring's `head`, the generation read-out's hook on `lm_head`); Gemma 3n's
    forward caps the head's output (cap * tanh(logits / cap)). The twin's random logits are small, so the test
    lowers the cap to where it changes them a lot (the forward and ambig read the same config value)."""
    _, model, _, builder, _ = g3n
    text_config = model.config.get_text_config()
    assert text_config.final_logit_softcapping == 30.0  # the release's
    batch = builder(examples[:2])
    audio = {k: batch[k] for k in batch["audio_keys"]}
    ids, mask = batch["input_ids"], batch["attention_mask"]
    text_config.final_logit_softcapping = 0.1
    try:
        with torch.no_grad():
            forward = full_logits(model, batch)
            scored = target_logits(model, batch, target_mask(batch))
            last = next_token_logits(model, ids, mask, batch)
            raw = model.lm_head(
                model.model(input_ids=ids, attention_mask=mask, **audio).last_hidden_state[:, -1]
            )
            with ClassLogits(model, builder.class_ids) as recorded:
                model(input_ids=ids, attention_mask=mask, **audio)
    finally:
        text_config.final_logit_softcapping = 30.0
    torch.testing.assert_close(scored.logits, forward[:, scored.start : -1], rtol=0, atol=1e-6)
    torch.testing.assert_close(last, forward[:, -1], rtol=0, atol=1e-6)
    torch.testing.assert_close(recorded.steps[0], forward[:, -1, list(builder.class_ids)], rtol=0, atol=1e-6)
    assert (
        raw - forward[:, -1]
    ).abs().max() > 1e-2  # the cap changes these logits: the checks above can fail


def test_grpo_and_dpo_steps_run_the_models_own_audio_path(g3n, examples):
    """Gemma 3n's inputs_embeds path also needs per_layer_inputs, which ambig.model.audio_encoding does not
    build: with `encode_once` its batches keep their features (the rollouts still share one prefill of each
    prompt), and a GRPO and a DPO step give finite losses and LoRA gradients."""
    from ambig.strategies.dpo import DPOStrategy
    from ambig.strategies.grpo import GRPOStrategy

    cfg, frozen, _, builder, _ = g3n
    assert family_of(frozen).name == "gemma3n" and audio_tower_frozen(frozen) and not can_encode_once(frozen)
    batch = builder(examples[:2])
    with pytest.raises(ValueError, match="no implementation for model family 'gemma3n'"):
        encode_audio(frozen, batch["input_features"], batch["input_features_mask"])
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        lora = compose("train", overrides=["model=tiny_gemma3n"]).model.lora
    torch.manual_seed(0)
    model = load_model(OmegaConf.merge(cfg, {"lora": lora}))[0]
    rollout = {"max_new_tokens": 4, "temperature": 1.0, "top_p": 1.0}
    common = {"optim": ADAMW, "decoding": {"max_new_tokens": 4}, "rollout": rollout, "loss": AMBIGUITY_LOSS}
    grpo = GRPOStrategy(
        model, builder, name="grpo", num_generations=2, epsilon_low=0.2, epsilon_high=0.2, beta=0.04,
        loss_type="grpo", scale_rewards="group", num_iterations=1, w_dist=1.0, w_fmt=0.5, include_gold=True,
        encode_once=True, reference="init", max_completion_length=4, **common,
    )  # fmt: skip
    dpo = DPOStrategy(
        model, builder, name="dpo", beta=0.1, num_rollouts=2, tau=0.0, negatives="worst", lambda_kl=1.0,
        lambda_ce=1.0, encode_once=True, reference="init", **common,
    )  # fmt: skip
    for strategy in (grpo, dpo):
        strategy.on_fit_start()
        assert "input_features" in strategy.shared_audio(
            batch
        ) and "encoded_audio" not in strategy.shared_audio(batch)
        value, parts = strategy.training_loss(batch)
        assert torch.isfinite(value) and all(torch.isfinite(v).all() for v in parts.values())
        value.backward()
        grads = [p.grad for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), strategy.name
        model.zero_grad()


def test_lora_reaches_the_language_model_only(g3n):
    cfg, _, _, _, source = g3n
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        lora = compose("train", overrides=["model=gemma_3n_e4b_it"]).model.lora
    model = apply_lora(
        gemma3n.load_gemma3n(str(source), torch.float32), lora, towers=FAMILIES["gemma3n"].towers
    )
    wrapped = sorted(n for n, m in model.named_modules() if hasattr(m, "lora_A"))
    assert wrapped and all(".language_model.layers." in n for n in wrapped)
    layers = cfg.tiny.num_hidden_layers
    # the KV-sharing half of the layers has no k_proj / v_proj: 7 projections in the others, 5 in those
    assert len(wrapped) == 7 * (layers // 2) + 5 * (layers // 2)
    assert not any(
        p.requires_grad for n, p in model.named_parameters() if ".audio_tower." in n or "embed_audio" in n
    )


def test_the_audio_span_and_the_window(g3n, examples):
    _, _, processor, builder, _ = g3n
    text = builder.prompt_text("hello")
    expanded = FAMILIES["gemma3n"].expand_audio(text, processor, GEMMA3N_AUDIO_TOKENS)
    assert expanded.count(processor.audio_token) == GEMMA3N_AUDIO_TOKENS
    assert f"\n\n{processor.boa_token}{processor.audio_token}" in expanded
    with pytest.raises(ValueError, match="writes 188 audio tokens for every clip, not 12"):
        FAMILIES["gemma3n"].expand_audio(text, processor, 12)
    with pytest.raises(ValueError, match="holds 2 audio placeholders"):
        FAMILIES["gemma3n"].expand_audio(text + processor.audio_token, processor, GEMMA3N_AUDIO_TOKENS)
    extractor = processor.feature_extractor
    short = GEMMA3N_USM.extract(extractor, examples[0].audio, RATE)
    long = GEMMA3N_USM.extract(extractor, np.resize(examples[0].audio, 40 * RATE), RATE)  # cut to the window
    assert short.arrays["input_features"].shape == long.arrays["input_features"].shape
    assert short.arrays["input_features_mask"].dtype == bool and long.arrays["input_features_mask"].all()
    assert 0 < short.arrays["input_features_mask"].sum() < short.arrays["input_features_mask"].size
    assert short.n_tokens == long.n_tokens == GEMMA3N_AUDIO_TOKENS
    with pytest.raises(ValueError, match="takes 16000 Hz audio, not 8000 Hz"):
        GEMMA3N_USM.extract(extractor, examples[0].audio, 8000)


@pytest.mark.parametrize("name", ["gemma_3n_e4b_it", "tiny_gemma3n"])
def test_the_configs_compose_and_name_the_models_own_layers(g3n, name):
    from ambig.distributed import layer_classes

    _, model, _, _, _ = g3n
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"model={name}"]).model
    assert cfg.family == "gemma3n" and cfg.max_audio_seconds == 30 and cfg.output_format == "ambig"
    if name == "gemma_3n_e4b_it":
        assert cfg.hub_id == "google/gemma-3n-E4B-it" and cfg.dtype == "bfloat16" and cfg.tiny is None
    classes = layer_classes(cfg.layer_classes)
    assert {c.__name__ for c in classes} == {"Gemma3nTextDecoderLayer", "Gemma3nAudioConformerBlock"}
    assert all(any(isinstance(m, c) for m in model.modules()) for c in classes)

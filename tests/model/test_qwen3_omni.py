"""The Qwen3-Omni thinker family beyond the shared twin tests (tests/model/test_family_twins.py): its audio
token count against transformers' formula and the tower's own output, the twin's weights in the release's
names, the audio-only processor, LoRA reaching the language model's attention only (the peft regex pitfall),
and the audio-encoding cache stepping aside for it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ambig.model.audio_encoding import audio_tower_frozen, can_encode_once, encode_audio
from ambig.model.audio_formats import WHISPER_CHUNKED, qwen3_omni_tokens
from ambig.model.family import family_of, model_family
from ambig.model.load import ModelFamilyError, apply_lora, load_model, resolve_source

CONF = Path(__file__).resolve().parents[2] / "conf"
RATE = 16000


def qwen3_cfg(cache_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train", overrides=["model=tiny_qwen3_omni", f"paths.cache_dir={cache_dir}", *overrides]
        )
    return OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True))


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    """(model config without LoRA, the twin's directory, base model, processor), built once."""
    cfg = qwen3_cfg(tmp_path_factory.mktemp("qwen3-omni"))
    cfg.lora = None
    model, processor = load_model(cfg)
    return cfg, Path(resolve_source(cfg)), model.eval(), processor


@pytest.mark.parametrize("config", ["train", "evaluate"])
def test_the_release_config_composes_and_names_importable_layer_classes(config):
    import importlib

    from transformers import Qwen3OmniMoeThinkerForConditionalGeneration

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config, overrides=["model=qwen3_omni_30b_a3b_instruct"]).model
    assert cfg.hub_id == "Qwen/Qwen3-Omni-30B-A3B-Instruct" and cfg.dtype == "bfloat16" and cfg.tiny is None
    family = model_family(cfg)
    assert family.transformers_class() is Qwen3OmniMoeThinkerForConditionalGeneration
    assert family.template is None and family.audio_format is WHISPER_CHUNKED
    assert not cfg.train_audio_tower and cfg.lora.exclude_modules and cfg.lora.modules_to_save is None
    for path in cfg.layer_classes:
        module, name = path.rsplit(".", 1)
        assert isinstance(getattr(importlib.import_module(module), name), type), path


def test_the_audio_token_count_is_transformers_formula_and_the_towers_output(qwen3):
    from transformers.models.qwen3_omni_moe.processing_qwen3_omni_moe import _get_feat_extract_output_lengths

    frames = torch.arange(1, 1601)
    theirs = _get_feat_extract_output_lengths(frames, n_window=50).tolist()
    assert [qwen3_omni_tokens(int(n)) for n in frames] == theirs
    assert qwen3_omni_tokens(100) == 13 and qwen3_omni_tokens(400) == 52  # 13 per full second
    cfg, _, model, processor = qwen3
    rng = np.random.default_rng(0)
    # under one chunk, whole chunks, across the tower's 2 s attention windows, the whole 4 s window
    clips = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (1500, 16000, 35123, 4 * RATE)]
    feats = [WHISPER_CHUNKED.extract(processor.feature_extractor, clip, RATE) for clip in clips]
    batch = WHISPER_CHUNKED.collate(feats)
    with torch.no_grad():
        out = model.model.get_audio_features(batch["input_features"], batch["feature_attention_mask"])
    counts = [f.n_tokens for f in feats]
    assert out.last_hidden_state.shape == (sum(counts), cfg.tiny.hidden_size)
    assert counts == [qwen3_omni_tokens(int(f.arrays["feature_attention_mask"].sum())) for f in feats]


def test_the_twin_stores_the_thinkers_weights_under_the_releases_names(qwen3):
    from safetensors import safe_open
    from transformers import Qwen3OmniMoeThinkerForConditionalGeneration

    _, source, model, _ = qwen3
    with safe_open(str(source / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert all(n.startswith("thinker.") for n in names)
    assert "thinker.model.layers.0.mlp.experts.3.gate_proj.weight" in names
    assert "thinker.audio_tower.proj2.weight" in names and "thinker.visual.patch_embed.proj.weight" in names
    assert not any("gate_up_proj" in n or "language_model" in n for n in names)
    config = json.loads((source / "config.json").read_text())
    assert config["thinker_config"]["model_type"] == "qwen3_omni_moe_thinker"
    assert config["thinker_config"]["audio_token_id"] == model.config.audio_token_id
    _, info = Qwen3OmniMoeThinkerForConditionalGeneration.from_pretrained(source, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    experts = model.model.language_model.layers[0].mlp.experts
    with safe_open(str(source / "model.safetensors"), "pt") as f:
        gate = f.get_tensor("thinker.model.layers.0.mlp.experts.1.gate_proj.weight")
        down = f.get_tensor("thinker.model.layers.0.mlp.experts.1.down_proj.weight")
    torch.testing.assert_close(experts.gate_up_proj[1, : gate.shape[0]], gate, atol=0, rtol=0)
    torch.testing.assert_close(experts.down_proj[1], down, atol=0, rtol=0)


def test_the_audio_only_processor_is_qwen3_omnis_own_code_without_its_video_half(qwen3):
    from transformers import Qwen3OmniMoeProcessor

    from ambig.model.qwen3_omni_processor import Qwen3OmniMoeAudioProcessor

    _, _, _, processor = qwen3
    assert isinstance(processor, Qwen3OmniMoeProcessor) and type(processor) is Qwen3OmniMoeAudioProcessor
    assert Qwen3OmniMoeAudioProcessor.__call__ is Qwen3OmniMoeProcessor.__call__
    assert processor.get_attributes() == ["feature_extractor", "tokenizer"]
    assert processor.audio_token == "<|audio_pad|>" and processor.audio_bos_token == "<|audio_start|>"
    with pytest.raises(ValueError, match="lacks Qwen3-Omni's named tokens.*audio_token"):
        from ambig.model.tiny import load_tokenizer

        Qwen3OmniMoeAudioProcessor(processor.feature_extractor, load_tokenizer())


def test_a_shorter_max_audio_seconds_narrows_the_feature_window(qwen3, examples):
    cfg, source, _, processor = qwen3
    narrow = qwen3_cfg(Path(cfg.cache_dir).parent, "model.max_audio_seconds=2", f"model.path={source}")
    processor2 = model_family(narrow).load_processor(str(source), narrow)
    assert processor.feature_extractor.chunk_length == 4 and processor2.feature_extractor.chunk_length == 2
    clip = examples[0].audio[: RATE * 2]
    wide = WHISPER_CHUNKED.extract(processor.feature_extractor, clip, RATE)
    short = WHISPER_CHUNKED.extract(processor2.feature_extractor, clip, RATE)
    assert short.arrays["input_features"].shape[-1] == 200 and short.n_tokens == wide.n_tokens
    n = int(short.arrays["feature_attention_mask"].sum())
    np.testing.assert_allclose(short.arrays["input_features"][:, :n], wide.arrays["input_features"][:, :n])


def test_lora_reaches_only_the_language_models_attention(qwen3):
    """peft turns a target regex into bare names (q_proj, ...) for this model type, which also name the
    audio tower's projections: without exclude_modules, load_model's tower check refuses; with the config's,
    only the language model's attention gets adapters (the MoE experts and router stay frozen)."""
    from transformers import Qwen3OmniMoeThinkerForConditionalGeneration

    cfg, source, _, _ = qwen3
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        lora = compose("train", overrides=["model=qwen3_omni_30b_a3b_instruct"]).model.lora  # the release's
    unguarded = OmegaConf.create({**OmegaConf.to_container(lora), "exclude_modules": None})
    fresh = Qwen3OmniMoeThinkerForConditionalGeneration.from_pretrained
    with pytest.raises(ValueError, match="matched the audio tower"):
        apply_lora(fresh(source), unguarded, towers=("audio_tower", "visual"))
    model = apply_lora(fresh(source), lora, towers=("audio_tower", "visual"))
    adapted = {n.split(".lora_")[0] for n, p in model.named_parameters() if p.requires_grad and "lora_" in n}
    layers = cfg.tiny.num_hidden_layers
    assert adapted == {
        f"base_model.model.model.language_model.layers.{i}.self_attn.{p}_proj"
        for i in range(layers)
        for p in "qkvo"
    }
    assert family_of(model).name == "qwen3_omni_thinker"


def test_cached_audio_encoding_steps_aside_for_the_family(qwen3):
    """ambig.model.audio_encoding knows no Qwen3-Omni tower: the strategies run the model's own forward."""
    _, _, model, processor = qwen3
    tower = list(model.model.audio_tower.parameters())
    for p in tower:  # frozen, as LoRA leaves it: the only reason left to step aside is the architecture
        p.requires_grad_(False)
    try:
        assert audio_tower_frozen(model) and not can_encode_once(model)
        clip = np.zeros(RATE, dtype=np.float32)
        feats = WHISPER_CHUNKED.collate([WHISPER_CHUNKED.extract(processor.feature_extractor, clip, RATE)])
        with pytest.raises(ValueError, match="no implementation for model family 'qwen3_omni_thinker'"):
            encode_audio(model, feats["input_features"], feats["feature_attention_mask"])
    finally:
        for p in tower:
            p.requires_grad_(True)


def test_a_qwen2_5_omni_checkpoint_is_refused_by_the_qwen3_family(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_omni"}))
    cfg = qwen3_cfg(tmp_path, f"model.path={tmp_path}")
    with pytest.raises(ModelFamilyError, match="qwen3_omni_moe or qwen3_omni_moe_thinker.*'qwen2_5_omni'"):
        load_model(cfg)

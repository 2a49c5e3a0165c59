"""Loading: the tiny checkpoint round-trips through from_pretrained; clear errors; LoRA placement."""

from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from omegaconf import OmegaConf

from ambig.model.load import ModelNotAvailableError, apply_lora, load_model, resolve_source
from ambig.model.tiny import TinySpec, build_tiny
from ambig.scoring import full_logits


def _logits(model, batch):
    with torch.no_grad():
        return full_logits(model, batch)


def test_checkpoint_matches_a_directly_built_model(tiny_base, tiny_cfg_factory, builder, examples):
    """from_pretrained restores every weight: no key is missing and re-initialised at random."""
    from transformers import AutoConfig, Qwen2AudioForConditionalGeneration

    model, _ = tiny_base
    cfg = tiny_cfg_factory(lora=False)
    source = Path(resolve_source(cfg))
    torch.manual_seed(cfg.tiny.seed)
    direct = Qwen2AudioForConditionalGeneration(AutoConfig.from_pretrained(source)).eval()
    loaded, fresh = model.state_dict(), direct.state_dict()
    assert set(loaded) == set(fresh)
    assert all(torch.equal(loaded[k], fresh[k]) for k in loaded)
    batch = builder(examples[:2])
    torch.testing.assert_close(_logits(model, batch), _logits(direct, batch), rtol=0, atol=0)


def test_build_tiny_reuses_its_directory(tiny_base, tiny_cfg_factory):
    cfg = tiny_cfg_factory(lora=False)
    source = Path(resolve_source(cfg))
    assert (source / "config.json").is_file() and (source / "tiny_spec.json").is_file()
    stamps = {p: p.stat().st_mtime_ns for p in source.iterdir()}
    again = build_tiny(source, TinySpec(**cfg.tiny))
    assert again == source
    assert {p: p.stat().st_mtime_ns for p in source.iterdir()} == stamps
    # Nothing else (no temporary build directory) was left next to it.
    assert [p.name for p in source.parent.iterdir() if p.name.startswith(".")] == []


def test_spec_change_gets_its_own_directory(tiny_cfg_factory):
    cfg = tiny_cfg_factory(lora=False)
    other = dict(cfg.tiny)
    other["seed"] = 1
    assert TinySpec(**other).key() != TinySpec(**cfg.tiny).key()


def test_missing_local_path(tiny_cfg_factory):
    cfg = tiny_cfg_factory(lora=False, path="/nonexistent/ambig-model")
    with pytest.raises(ModelNotAvailableError, match="/nonexistent/ambig-model"):
        load_model(cfg)


def test_uncached_hub_id_offline_says_how_to_get_the_weights(tiny_cfg_factory, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable at import time; make sure it is in effect for this test.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cfg = tiny_cfg_factory(lora=False, tiny=None, hub_id="ambig-test/does-not-exist")
    with pytest.raises(ModelNotAvailableError) as err:
        load_model(cfg)
    message = str(err.value)
    assert "ambig-test/does-not-exist" in message
    assert "huggingface-cli download ambig-test/does-not-exist" in message
    assert "model.path=" in message
    assert isinstance(err.value, FileNotFoundError)


def test_lora_trains_only_language_model_adapters(tiny_lora):
    model, _ = tiny_lora
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    assert all("lora_" in n for n in trainable), [n for n in trainable if "lora_" not in n]
    assert not any("audio_tower" in n for n in trainable)
    assert all("language_model" in n for n in trainable)
    # Every attention and feed-forward projection of each of the 2 layers: 7 modules x (A, B) x 2 layers.
    assert len(trainable) == 7 * 2 * 2
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert any(f".{proj}.lora_A" in n for n in trainable), proj
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert any("audio_tower" in n for n in frozen) and any("lm_head" in n for n in frozen)


def _lora_cfg(target):
    return OmegaConf.create({"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": target})


def test_lora_regex_matching_nothing_is_refused(tiny_cfg_factory):
    model, _ = load_model(tiny_cfg_factory(lora=False))
    with pytest.raises(ValueError):
        apply_lora(model, _lora_cfg(r".*language_model.*\.no_such_proj"))


def test_lora_regex_reaching_the_audio_tower_is_refused(tiny_cfg_factory):
    model, _ = load_model(tiny_cfg_factory(lora=False))
    with pytest.raises(ValueError, match="audio tower"):
        apply_lora(model, _lora_cfg(r".*\.(q_proj|v_proj)"))


def test_building_the_tiny_model_leaves_the_global_rng_alone(tmp_path):
    """Otherwise LoRA's random init would depend on whether this run built the cache or found it."""
    state = torch.random.get_rng_state()
    build_tiny(tmp_path / "tiny", TinySpec())
    assert torch.equal(torch.random.get_rng_state(), state)

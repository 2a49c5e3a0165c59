"""Shared fixtures: the tiny Qwen2-Audio (built once per session), a synthetic corpus, a batch builder."""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf

from ambig.data.audio import load_audio
from ambig.data.synthetic import CLASSES, SyntheticSpec, load_synthetic
from ambig.model.inputs import BatchBuilder, Example
from ambig.model.load import load_model

SAMPLE_RATE = 16000
MAX_SECONDS = 4.0

# conf/model/tiny.yaml, resolved and narrowed (width 64, 2 layers) so unit tests stay fast;
# cache_dir is set per session.
TINY_MODEL_CFG = {
    "name": "tiny",
    "hub_id": None,
    "path": None,
    "cache_dir": None,
    "dtype": "float32",
    "sample_rate": SAMPLE_RATE,
    "max_audio_seconds": 4,
    "gradient_checkpointing": False,
    "tiny": {
        "seed": 0,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "audio_d_model": 64,
        "audio_layers": 2,
        "audio_heads": 4,
        "audio_ffn_dim": 128,
        "num_mel_bins": 128,
        "chunk_length": 4,
    },
    "lora": {
        "r": 8,
        "alpha": 16,
        "dropout": 0.05,
        "target_modules": r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
    },
}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """The cache directory the tiny checkpoint is built into (shared by every tiny-model fixture)."""
    return tmp_path_factory.mktemp("models")


def cfg_factory(template: dict, model_dir):
    """`make(lora=True, **overrides)` -> an OmegaConf model config from `template`, built into `model_dir`."""

    def make(lora: bool = True, **overrides):
        cfg = copy.deepcopy(template)
        cfg["cache_dir"] = str(model_dir)
        if not lora:
            cfg["lora"] = None
        cfg.update(overrides)
        return OmegaConf.create(cfg)

    return make


@pytest.fixture(scope="session")
def tiny_cfg_factory(tiny_model_dir):
    """`make(lora=True, **overrides)` -> an OmegaConf model config for the tiny model."""
    return cfg_factory(TINY_MODEL_CFG, tiny_model_dir)


# conf/model/mini.yaml, resolved: SmolLM2-135M-Instruct + Whisper tiny.en in the Qwen2-Audio layout.
MINI_MODEL_CFG = {
    "name": "mini",
    "family": "smollm2_audio",
    "hub_id": None,
    "path": None,
    "cache_dir": None,
    "dtype": "float32",
    "sample_rate": SAMPLE_RATE,
    "max_audio_seconds": 4,
    "gradient_checkpointing": False,
    "train_audio_tower": False,
    "tiny": None,
    "mini": {"seed": 0, "chunk_length": 4},
    "lora": {**TINY_MODEL_CFG["lora"], "modules_to_save": ["multi_modal_projector"]},
}


@pytest.fixture(scope="session")
def mini_cfg_factory(tiny_model_dir):
    """`make(lora=True, **overrides)` -> a model=mini config (its checkpoint built once per session)."""
    return cfg_factory(MINI_MODEL_CFG, tiny_model_dir)


@pytest.fixture(scope="session")
def mini_base(mini_cfg_factory):
    """(model, processor) of model=mini without LoRA, in eval mode. Shared: do not train it."""
    model, processor = load_model(mini_cfg_factory(lora=False))
    return model.eval(), processor


@pytest.fixture(scope="session")
def tiny_omni_cfg_factory(tiny_model_dir):
    """`make(lora=True, **overrides)` -> the tiny config as a Qwen2.5-Omni thinker (conf/model/tiny_omni.yaml,
    narrowed like the tiny Qwen2-Audio above)."""

    def make(lora: bool = True, **overrides):
        cfg = copy.deepcopy(TINY_MODEL_CFG)
        cfg.update(name="tiny_omni", family="qwen2_5_omni_thinker", cache_dir=str(tiny_model_dir))
        if lora:
            cfg["lora"]["modules_to_save"] = None
        else:
            cfg["lora"] = None
        cfg.update(overrides)
        return OmegaConf.create(cfg)

    return make


@pytest.fixture(scope="session")
def tiny_omni_base(tiny_omni_cfg_factory):
    """(model, processor) of the tiny Qwen2.5-Omni thinker without LoRA, in eval mode. Shared: do not
    train it."""
    model, processor = load_model(tiny_omni_cfg_factory(lora=False))
    return model.eval(), processor


@pytest.fixture(scope="session")
def omni_builder(tiny_omni_base):
    """The CoT batch builder of the tiny Omni thinker (its chat template)."""
    from ambig.model.prompt import QWEN2_5_OMNI

    _, processor = tiny_omni_base
    return BatchBuilder(
        processor, CLASSES, cot=True, ce_answer_word=False, sample_rate=SAMPLE_RATE, template=QWEN2_5_OMNI
    )


@pytest.fixture(scope="session")
def tiny_base(tiny_cfg_factory):
    """(model, processor) without LoRA, in eval mode. Shared: do not train it."""
    model, processor = load_model(tiny_cfg_factory(lora=False))
    return model.eval(), processor


@pytest.fixture(scope="session")
def tiny_lora(tiny_cfg_factory):
    """(model, processor) with LoRA, in eval mode. Shared: do not train it (load a fresh one to train)."""
    torch.manual_seed(0)
    model, processor = load_model(tiny_cfg_factory(lora=True))
    return model.eval(), processor


@pytest.fixture(scope="session")
def synthetic_records(tmp_path_factory):
    """20 synthetic utterances (IEMOCAP's 4 classes), each with a curated CoT."""
    return load_synthetic(tmp_path_factory.mktemp("data"), SyntheticSpec(n_utterances=20))


@pytest.fixture(scope="session")
def examples(synthetic_records):
    """`Example`s of the synthetic records (audio loaded at 16 kHz, at most 4 s)."""
    return [Example(r, load_audio(r.audio_path, SAMPLE_RATE, MAX_SECONDS)) for r in synthetic_records]


@pytest.fixture(scope="session")
def builder(tiny_base):
    """The CoT batch builder with the answer word left out of CE (the ambiguity-loss setting)."""
    _, processor = tiny_base
    return BatchBuilder(processor, CLASSES, cot=True, ce_answer_word=False, sample_rate=SAMPLE_RATE)


AMBIGUITY_LOSS = {"name": "ambiguity", "lambda_ce": 1.0, "lambda_kl": 1.0, "ce_answer_word": False}
ADAMW = {"lr": 1e-3, "weight_decay": 0.0, "betas": [0.9, 0.999], "warmup_ratio": 0.0}


@pytest.fixture(scope="session")
def make_sft():
    """`make_sft(model, builder, lr=1e-3)` -> an SFTStrategy with the ambiguity loss (CE + KL)."""
    from ambig.strategies.sft import SFTStrategy

    def make(model, builder, lr: float = 1e-3):
        optim = {**ADAMW, "lr": lr}
        return SFTStrategy(
            model, builder, optim=optim, decoding={"max_new_tokens": 8}, loss=AMBIGUITY_LOSS, name="sft"
        )

    return make


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """tmp_path, with the run and cache directories of `ambig.train.run` inside it."""
    monkeypatch.setenv("AMBIG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("AMBIG_RUNS_DIR", str(tmp_path / "runs"))
    return tmp_path

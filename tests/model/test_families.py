"""Model families (ambig.model.family): the Qwen2.5-Omni thinker beside Qwen2-Audio. Its configs compose, the
tiny thinker loads through load_model from the release's layout, its prompt and audio expansion are what the
model and the Omni processor expect, the read-out's class tokens, generation, and the refusals."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from ambig.data.features import extract
from ambig.data.synthetic import CLASSES
from ambig.model.audio_text_processor import AudioTextProcessor, with_window
from ambig.model.family import FAMILIES, family_of, model_family
from ambig.model.inputs import BatchBuilder, audio_token_count, positions
from ambig.model.load import ModelFamilyError, ModelNotAvailableError, load_model, resolve_source
from ambig.model.prompt import QWEN2_5_OMNI, QWEN2_AUDIO, chat_prompt
from ambig.model.readout import class_token_ids
from ambig.rollout import decode, sample
from ambig.scoring import full_logits
from ambig.strategies.base import BaseStrategy

CONF = Path(__file__).resolve().parents[2] / "conf"
RATE = 16000


def compose_cfg(config: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config, overrides=list(overrides))


# ---- configs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", ["train", "evaluate"])
@pytest.mark.parametrize("model", ["qwen2_5_omni_7b", "qwen2_5_omni_3b", "tiny_omni"])
def test_omni_configs_compose_for_train_and_evaluate(config, model):
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    cfg = compose_cfg(config, f"model={model}")
    assert cfg.model.name == model and cfg.model.family == "qwen2_5_omni_thinker"
    family = model_family(cfg.model)
    assert family.transformers_class() is Qwen2_5OmniThinkerForConditionalGeneration
    assert family.template is QWEN2_5_OMNI
    assert cfg.model.output_format == "ambig"
    assert "language_model" in cfg.model.lora.target_modules
    if model != "tiny_omni":
        size = model.rsplit("_", 1)[1].upper()
        assert cfg.model.hub_id == f"Qwen/Qwen2.5-Omni-{size}" and cfg.model.dtype == "bfloat16"
        assert cfg.model.tiny is None and cfg.model.lora.modules_to_save is None
    else:
        assert cfg.model.tiny.chunk_length == cfg.model.max_audio_seconds == 4


def test_every_model_config_names_its_family():
    names = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
    families = {name: compose_cfg("train", f"model={name}").model.family for name in names}
    assert families == {
        "audio_flamingo_3": "audio_flamingo3",
        "tiny_audio_flamingo_3": "audio_flamingo3",
        "audio_reasoner": "qwen2_audio",
        "gemma_3n_e4b_it": "gemma3n",
        "tiny_gemma3n": "gemma3n",
        "mini": "smollm2_audio",
        "qwen2_5_omni_3b": "qwen2_5_omni_thinker",
        "qwen2_5_omni_7b": "qwen2_5_omni_thinker",
        "qwen2_audio_7b_instruct": "qwen2_audio",
        "tiny": "qwen2_audio",
        "tiny_omni": "qwen2_5_omni_thinker",
        "tiny_voxtral": "voxtral",
        "voxtral_mini_3b": "voxtral",
        "voxtral_small_24b": "voxtral",
        "qwen3_omni_30b_a3b_instruct": "qwen3_omni_thinker",
        "tiny_qwen3_omni": "qwen3_omni_thinker",
    }
    assert set(families.values()) == set(FAMILIES)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_takes_its_audio_inputs_under_their_names(name):
    """The batch builder hands a family its audio format's inputs; the family's class must take them."""
    import inspect

    family = FAMILIES[name]
    params = inspect.signature(family.transformers_class().forward).parameters
    assert {"input_ids", "attention_mask", "position_ids", "inputs_embeds"} <= set(params)
    assert family.audio_format.keys and set(family.audio_format.keys) <= set(params)


def test_an_unknown_family_is_refused_by_name(tiny_omni_cfg_factory):
    names = "qwen2_audio, smollm2_audio, qwen2_5_omni_thinker"
    with pytest.raises(ValueError, match=f"model.family='qwen9'.*{names}"):
        load_model(tiny_omni_cfg_factory(family="qwen9"))


def _cfg(d):
    from omegaconf import OmegaConf

    return OmegaConf.create(d)


# ---- loading --------------------------------------------------------------------------------------------


def test_tiny_omni_is_written_in_the_release_layout_and_loads_every_weight(
    tiny_omni_base, tiny_omni_cfg_factory
):
    from safetensors import safe_open
    from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration

    model, processor = tiny_omni_base
    assert type(model) is Qwen2_5OmniThinkerForConditionalGeneration
    assert isinstance(processor, AudioTextProcessor) and processor.audio_token == "<|AUDIO|>"
    assert family_of(model).name == "qwen2_5_omni_thinker"
    source = Path(resolve_source(tiny_omni_cfg_factory(lora=False)))
    assert source.name.startswith("tiny-omni-")
    config = json.loads((source / "config.json").read_text())
    assert config["model_type"] == "qwen2_5_omni" and config["thinker_config"]["model_type"] == (
        "qwen2_5_omni_thinker"
    )
    with safe_open(source / "model.safetensors", "pt") as weights:
        keys = list(weights.keys())
    assert keys and all(k.startswith("thinker.") for k in keys)
    # from_pretrained restored every weight (none missing and re-initialised at random).
    torch.manual_seed(json.loads((source / "tiny_spec.json").read_text())["seed"])
    direct = Qwen2_5OmniThinkerForConditionalGeneration(
        Qwen2_5OmniThinkerConfig.from_pretrained(source)
    ).eval()
    loaded, fresh = model.state_dict(), direct.state_dict()
    assert set(loaded) == set(fresh)
    assert all(torch.equal(loaded[k], fresh[k]) for k in loaded)


def test_lora_on_the_thinker_trains_only_language_model_adapters(tiny_omni_cfg_factory):
    from ambig.model.load import apply_lora

    model, _ = load_model(tiny_omni_cfg_factory(lora=True))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == 7 * 2 * 2  # 7 projections x (A, B) x 2 layers
    assert all("lora_" in n and ".language_model." in n for n in trainable)
    # The thinker's vision tower has gate/up/down projections too: a regex reaching it is refused.
    bare, _ = load_model(tiny_omni_cfg_factory(lora=False))
    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": r".*mlp\.(gate_proj|up_proj|down_proj)"}
    with pytest.raises(ValueError, match="the visual tower"):
        apply_lora(bare, _cfg(lora), towers=family_of(bare).towers)


def test_missing_omni_weights_say_what_to_download(tiny_omni_cfg_factory, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cfg = compose_cfg("train", "model=qwen2_5_omni_7b").model
    assert cfg.hub_id == "Qwen/Qwen2.5-Omni-7B"
    with pytest.raises(ModelNotAvailableError) as err:
        load_model(cfg)
    message = str(err.value)
    assert "'Qwen/Qwen2.5-Omni-7B'" in message
    assert "huggingface-cli download Qwen/Qwen2.5-Omni-7B" in message and "model.path=" in message
    with pytest.raises(ModelNotAvailableError, match="/nonexistent/omni.*Qwen/Qwen2.5-Omni-7B"):
        load_model(compose_cfg("train", "model=qwen2_5_omni_7b", "model.path=/nonexistent/omni").model)


def test_a_checkpoint_of_the_other_family_is_refused(
    tiny_base, tiny_cfg_factory, tiny_omni_base, tiny_omni_cfg_factory
):
    qwen2_audio_dir = resolve_source(tiny_cfg_factory(lora=False))
    omni_dir = resolve_source(tiny_omni_cfg_factory(lora=False))
    with pytest.raises(ModelFamilyError, match="model.family=qwen2_5_omni_thinker.*'qwen2_audio' checkpoint"):
        load_model(tiny_omni_cfg_factory(lora=False, path=qwen2_audio_dir))
    with pytest.raises(ModelFamilyError, match="model.family=qwen2_audio.*'qwen2_5_omni' checkpoint"):
        load_model(tiny_cfg_factory(lora=False, path=omni_dir))


# ---- prompt and audio -------------------------------------------------------------------------------------


def test_the_omni_prompt_is_in_omnis_chat_format():
    prompt = chat_prompt(CLASSES, "i lost it", True, QWEN2_5_OMNI)
    assert prompt.startswith(
        "<|im_start|>system\nYou are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, "
        "capable of perceiving auditory and visual inputs, as well as generating text and speech.<|im_end|>\n"
    )
    assert "<|im_start|>user\n<|audio_bos|><|AUDIO|><|audio_eos|>Transcript:" in prompt
    assert prompt.count("<|AUDIO|>") == 1 and "Audio 1:" not in prompt
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
    qwen2 = chat_prompt(CLASSES, "i lost it", True)
    assert qwen2 == chat_prompt(CLASSES, "i lost it", True, QWEN2_AUDIO) != prompt
    assert "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n" in qwen2
    # Everything after the user turn's audio is the same instruction in both.
    assert prompt.split("<|audio_eos|>")[1] == qwen2.split("<|audio_eos|>\n")[1]


def _omni_processor_audio(processor, wave):
    """What Qwen2_5OmniProcessor's own audio path gives for one clip. The processor cannot be constructed
    here (its video processor needs torchvision, which is not installed), so its audio method runs on an
    instance holding only what that method reads: the feature extractor and the audio token."""
    from transformers import Qwen2_5OmniProcessor

    omni = object.__new__(Qwen2_5OmniProcessor)
    omni.feature_extractor, omni.audio_token = processor.feature_extractor, processor.audio_token
    out, (replacement,) = omni._process_audio([wave], sampling_rate=RATE, return_attention_mask=True)
    return out, replacement


def test_audio_expands_to_as_many_tokens_as_the_encoder_emits(tiny_omni_base, omni_builder, examples):
    model, processor = tiny_omni_base
    tok = processor.tokenizer
    audio_id, bos, eos = tok.convert_tokens_to_ids(["<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"])
    assert audio_id == model.config.audio_token_id
    chosen = examples[:4]
    assert len({len(e.audio) for e in chosen}) > 1  # clips of different lengths
    batch = omni_builder.for_evaluation()(chosen)
    for i, example in enumerate(chosen):
        row = batch["prompt_ids"][i][batch["prompt_mask"][i].bool()].tolist()
        n_audio = row.count(audio_id)
        start = row.index(audio_id)
        assert row[start - 1] == bos and row[start + n_audio] == eos  # one contiguous run, bracketed
        mask = batch["feature_attention_mask"][i : i + 1]
        with torch.no_grad():
            encoded = model.get_audio_features(batch["input_features"][i : i + 1], mask).last_hidden_state
        assert n_audio == encoded.shape[0] == audio_token_count(int(mask.sum()))
        # Qwen2.5-Omni's processor: the same features, mask and number of audio tokens.
        out, replacement = _omni_processor_audio(processor, example.audio)
        assert replacement == "<|AUDIO|>" * n_audio and int(out["num_audio_tokens"][0]) == n_audio
        np.testing.assert_array_equal(out["feature_attention_mask"][0], mask[0].numpy())
        np.testing.assert_allclose(out["input_features"][0], batch["input_features"][i].numpy(), atol=1e-6)
    with torch.no_grad():  # and the model's forward fills every audio slot (it would fail otherwise)
        logits = full_logits(model, omni_builder(chosen))
    assert torch.isfinite(logits).all()


def test_a_narrower_feature_window_keeps_every_frame_of_a_clip(examples):
    from transformers import WhisperFeatureExtractor

    release = WhisperFeatureExtractor(feature_size=128, chunk_length=300, return_attention_mask=True)
    narrow = with_window(release, 29.5)
    assert narrow.chunk_length == 30 and narrow.nb_max_frames == 3000 and release.nb_max_frames == 30000
    for example in examples[:2]:
        wide, short = extract(release, example.audio, RATE), extract(narrow, example.audio, RATE)
        frames = int(short.arrays["feature_attention_mask"].sum())
        assert (
            int(wide.arrays["feature_attention_mask"].sum()) == frames > 0 and wide.n_tokens == short.n_tokens
        )
        np.testing.assert_allclose(
            short.arrays["input_features"][:, :frames], wide.arrays["input_features"][:, :frames], atol=1e-6
        )


def test_the_omni_processor_pads_features_to_max_audio_seconds(tiny_omni_cfg_factory, tiny_omni_base):
    source = resolve_source(tiny_omni_cfg_factory(lora=False))
    assert (
        AudioTextProcessor.from_pretrained(source, audio_token="<|AUDIO|>").feature_extractor.chunk_length
        == 4
    )
    narrowed = AudioTextProcessor.from_pretrained(source, audio_token="<|AUDIO|>", max_seconds=2)
    assert narrowed.feature_extractor.chunk_length == 2
    with pytest.raises(ValueError, match=re.escape("<|IMAGE_PAD|>")):
        AudioTextProcessor.from_pretrained(source, audio_token="<|IMAGE_PAD|>")


# ---- read-out ---------------------------------------------------------------------------------------------


def test_class_tokens_on_the_omni_tokenizer_are_the_first_token_after_the_prefix(tiny_omni_base):
    tok = tiny_omni_base[1].tokenizer

    def ids(text):
        return tok(text, add_special_tokens=False).input_ids

    head = len(ids("Answer:"))
    classes = ("neutral", "happy", "contempt", "bored")  # the last two are several tokens each here
    assert [len(ids("Answer: " + c)) - head for c in classes] == [1, 1, 6, 3]
    got = class_token_ids(tok, classes)
    assert got == [ids("Answer: " + c)[head] for c in classes]
    assert [tok.decode([t]) for t in got] == [" neutral", " happy", " c", " b"]


# ---- chat format -----------------------------------------------------------------------------------------


def test_a_builder_in_another_chat_format_is_refused(tiny_omni_base, builder):
    with pytest.raises(
        ValueError, match="audio inputs of family qwen2_audio but the model is of family qwen2_5_omni"
    ):
        BaseStrategy(tiny_omni_base[0], builder, optim={}, decoding={}, loss={}, name="base")


def test_the_qwen2_audio_builder_keeps_its_format(tiny_base, builder):
    assert family_of(tiny_base[0]).template is QWEN2_AUDIO
    default = BatchBuilder(tiny_base[1], CLASSES, cot=False, ce_answer_word=False, sample_rate=RATE)
    assert default.family.template is QWEN2_AUDIO  # builders that name no family write Qwen2-Audio's format


# ---- generation -------------------------------------------------------------------------------------------


def test_decoding_positions_are_the_thinkers_own(tiny_omni_base, omni_builder, examples, monkeypatch):
    """The explicit position ids `decode` passes give what the thinker's own rope index gives for audio
    prompts: the same logits at every generated step."""
    model, _ = tiny_omni_base
    batch = omni_builder.for_evaluation()(examples[:3])
    assert len(set(batch["prompt_mask"].sum(1).tolist())) > 1  # left padding in the batch
    calls = []
    generate = model.generate

    def recorded(**kwargs):
        # decode's pinned config keeps no full logits; ask for them here to compare every step
        kwargs["generation_config"] = copy.deepcopy(kwargs["generation_config"])
        kwargs["generation_config"].output_logits = True
        calls.append((kwargs, generate(**kwargs)))
        return calls[-1][1]

    monkeypatch.setattr(model, "generate", recorded)
    ours = decode(model, batch, omni_builder, max_new_tokens=5)
    ((kwargs, out),) = calls
    assert torch.equal(kwargs["position_ids"], positions(batch["prompt_mask"]))
    kwargs = {k: v for k, v in kwargs.items() if k != "position_ids"}
    model.model.rope_deltas = None  # the thinker's own computation from scratch, as on a first call
    own = generate(**kwargs)
    torch.testing.assert_close(torch.stack(out.logits, 1), torch.stack(own.logits, 1), atol=1e-5, rtol=0)
    assert torch.equal(out.sequences, own.sequences) and len(ours.tokens) == 3


def test_shared_prompt_sampling_after_a_decode_of_another_batch_size(tiny_omni_base, omni_builder, examples):
    """The thinker keeps rope offsets between generate calls; a prefilled call of another batch size must
    not trip on them (it did before generate got explicit positions)."""
    model, _ = tiny_omni_base
    decode(model, omni_builder.for_evaluation()(examples[:4]), omni_builder, max_new_tokens=3)
    batch = omni_builder.for_evaluation()(examples[:2])
    torch.manual_seed(0)
    out = sample(model, batch, omni_builder, n=3, max_new_tokens=4, temperature=1.0, top_p=1.0)
    assert out.log_q.shape == (6, len(CLASSES)) and torch.isfinite(out.log_q).all()

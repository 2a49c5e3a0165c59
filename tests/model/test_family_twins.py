"""The families whose prompts come from their processor's own chat template, each on its tiny twin.

For every `conf/model/tiny_<family>.yaml`: the config composes, the twin is written in the release's layout
and loads through `load_model`; the prompt is the processor's `apply_chat_template` with an audio part; the
audio inputs and the audio token count are the processor's own (`processor(text=..., audio=...)`); the
read-out's class tokens; a batch's logits equal each clip's alone; greedy and sampled generation; every
`tts=` strategy; one SFT step moves only the adapter.

Voxtral's processor builds an audio prompt only through mistral-common (its tokenizer backend), which ambig
does without (ambig.model.voxtral_processor); its reference here is mistral-common's own
`apply_chat_template`, on the twin's tekken.json (mistral-common is a test dependency, see the Makefile).
"""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ambig.data.synthetic import CLASSES
from ambig.model import prompt
from ambig.model.family import model_family
from ambig.model.inputs import BatchBuilder, positions
from ambig.model.load import load_model, resolve_source
from ambig.model.readout import class_token_ids
from ambig.rollout import decode, sample
from ambig.scoring import full_logits
from ambig.tts.strategies import TTS_STRATEGIES, run_tts

CONF = Path(__file__).resolve().parents[2] / "conf"
RATE = 16000
# twin config -> (family, release model_type and architecture in config.json, the processor's class)
TWINS = {
    "tiny_audio_flamingo_3": (
        "audio_flamingo3",
        "audioflamingo3",
        "AudioFlamingo3ForConditionalGeneration",
        "AudioFlamingo3Processor",
    ),
    "tiny_voxtral": ("voxtral", "voxtral", "VoxtralForConditionalGeneration", "VoxtralProcessor"),
    "tiny_gemma3n": ("gemma3n", "gemma3n", "Gemma3nForConditionalGeneration", "Gemma3nProcessor"),
    # the release is the whole Omni model; ambig loads its thinker, with the processor's audio-only half
    "tiny_qwen3_omni": (
        "qwen3_omni_thinker",
        "qwen3_omni_moe",
        "Qwen3OmniMoeForConditionalGeneration",
        "Qwen3OmniMoeAudioProcessor",
    ),
}
# Twins whose processor pads a batch's audio to its longest clip, not to a window (Qwen3-Omni's): a clip's
# reference is its row in a processor call beside a clip of the whole window, so the processor pads it to the
# window as ambig does (alone, the longest of its batch, it keeps floor(n / hop) frames: one fewer than a
# padded clip's ceil(n / hop) when n is not a multiple of the hop).
PADS_TO_LONGEST = ("tiny_qwen3_omni",)
# twin config -> what its processor call takes beyond text and audio to write the model's inputs as ambig
# does: Gemma 3n's template writes <bos> itself (the processor's own apply_chat_template then tokenizes
# without special tokens), and every clip is padded to its extractor's 30 s window
# (ambig.model.audio_formats.GEMMA3N_USM)
PROCESSOR_KWARGS = {
    "tiny_gemma3n": {
        "add_special_tokens": False,
        "audio_kwargs": {"padding": "max_length", "max_length": 480_000},
    },
}
# twins whose reference is mistral-common's processor path rather than `processor(text=, audio=)`
MISTRAL_COMMON = {"tiny_voxtral"}


def user_turn(transcript, audio) -> list[dict]:
    text = {"type": "text", "text": prompt.instruction(CLASSES, transcript, True)}
    return [{"role": "user", "content": [{"type": "audio", "audio": audio}, text]}]


def mistral_common_processor(cfg):
    """The release's own processor on the twin's files: AutoProcessor with mistral-common importable gives
    VoxtralProcessor around MistralCommonBackend (tekken.json read by mistral-common)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(resolve_source(cfg))
    assert type(processor.tokenizer).__name__ == "MistralCommonBackend"
    return processor


def mistral_common_inputs(cfg, messages: list[dict], **text_kwargs):
    """mistral-common's encoding of `messages` (audio parts as float WAV, so nothing is quantised)."""
    converted = []
    for message in messages:
        content = message["content"]
        if not isinstance(content, str):
            content = [_as_base64(part) for part in content]
        converted.append({**message, "content": content})
    processor = mistral_common_processor(cfg)
    kwargs = {"processor_kwargs": {"text_kwargs": text_kwargs}} if text_kwargs else {}
    return processor.apply_chat_template([converted], **kwargs)


def _as_base64(part: dict) -> dict:
    if part.get("type") != "audio":
        return part
    buf = io.BytesIO()
    sf.write(buf, part["audio"], RATE, format="WAV", subtype="FLOAT")
    return {"type": "audio", "base64": base64.b64encode(buf.getvalue()).decode()}


def reference_prompt(name, cfg, processor, transcript) -> str:
    """The release processor's prompt text for one clip, with its audio placeholder written once."""
    messages = user_turn(transcript, np.zeros(RATE, dtype=np.float32))
    if name in MISTRAL_COMMON:
        (text,) = mistral_common_inputs(cfg, messages, tokenize=False)
        return re.sub(rf"(?:{re.escape(processor.audio_token)})+", processor.audio_token, text, count=1)
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def twin_cfg(name: str, cache_dir: Path, lora: bool = True):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={name}", f"paths.cache_dir={cache_dir}"])
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    if not lora:
        model_cfg["lora"] = None
    return OmegaConf.create(model_cfg)


@pytest.fixture(scope="module", params=sorted(TWINS))
def twin(request, tmp_path_factory):
    """(config name, model config, base model, processor, its builder) of one twin, built once."""
    name = request.param
    cache = tmp_path_factory.mktemp(f"twin-{name}")
    cfg = twin_cfg(name, cache, lora=False)
    model, processor = load_model(cfg)
    builder = BatchBuilder(
        processor, CLASSES, cot=True, ce_answer_word=False, sample_rate=RATE, family=model_family(cfg)
    )
    return name, cfg, model.eval(), processor, builder


def audio_examples(examples, n=3):
    return [e for e in examples[:n]]


def test_the_twin_is_written_in_the_release_layout_and_loads_through_from_pretrained(twin):
    name, cfg, model, processor, _ = twin
    family, model_type, architecture, processor_class = TWINS[name]
    assert cfg.family == family and model_family(cfg).name == family
    source = Path(resolve_source(cfg))
    config = json.loads((source / "config.json").read_text())
    assert config["model_type"] == model_type and config["architectures"] == [architecture]
    assert type(model).__name__ == model_family(cfg).model_class
    assert type(processor).__name__ == processor_class
    if name in MISTRAL_COMMON:  # the release: tekken.json, no tokenizer_config.json, no chat template
        assert (source / "tekken.json").exists() and not (source / "tokenizer_config.json").exists()
        assert not (source / "chat_template.jinja").exists()
        return
    assert (
        (source / "chat_template.jinja").exists()
        or (source / "chat_template.json").exists()
        or "chat_template" in json.loads((source / "tokenizer_config.json").read_text())
    )


def test_the_prompt_is_the_processors_chat_template_with_an_audio_part(twin):
    name, cfg, _, processor, builder = twin
    theirs = reference_prompt(name, cfg, processor, "I can't believe it.")
    assert builder.prompt_text("I can't believe it.") == theirs
    assert theirs.count(processor.audio_token) == 1


def reference_inputs(name, cfg, processor, builder, text, transcript, audio):
    """The release processor's own input ids and audio arrays (name -> array) for one prompt and its clip."""
    if name in MISTRAL_COMMON:
        ref = mistral_common_inputs(cfg, user_turn(transcript, audio))
        return ref["input_ids"][0], {k: v[0] for k, v in ref.items()}
    if name not in PADS_TO_LONGEST:
        kwargs = PROCESSOR_KWARGS.get(name, {})
        ref = processor(text=[text], audio=[audio], sampling_rate=RATE, return_tensors="pt", **kwargs)
        return ref["input_ids"][0], {k: v[0] for k, v in ref.items()}
    window = builder.audio_format.window_seconds(builder.audio_format.extractor(processor))
    beside = np.zeros(int(window * RATE), dtype=np.float32)
    ref = processor(
        text=[text, text], audio=[audio, beside], sampling_rate=RATE, padding=True, return_tensors="pt"
    )
    assert ref["input_features"].shape[-1] == int(window * RATE) // processor.feature_extractor.hop_length
    return ref["input_ids"][0][ref["attention_mask"][0].bool()], {k: v[0] for k, v in ref.items()}


def test_audio_inputs_and_token_counts_equal_the_processors_own(twin, examples):
    name, cfg, _, processor, builder = twin
    for ex in examples[:3]:
        text = builder.prompt_text(ex.record.transcript)
        ids, arrays = reference_inputs(name, cfg, processor, builder, text, ex.record.transcript, ex.audio)
        features = builder.features_of(ex)
        assert builder.prompt_ids(ex.record.transcript, features.n_tokens) == ids.tolist()
        audio_id = processor.tokenizer.convert_tokens_to_ids(processor.audio_token)
        assert features.n_tokens == int((ids == audio_id).sum()) > 1
        for key in builder.audio_format.keys:
            np.testing.assert_allclose(features.arrays[key], arrays[key].numpy(), atol=1e-6, err_msg=key)


def test_class_tokens_are_distinct_first_tokens_after_the_answer_prefix(twin):
    _, _, _, processor, builder = twin
    ids = class_token_ids(processor.tokenizer, CLASSES)
    assert len(set(ids)) == len(CLASSES)
    for word, token in zip(CLASSES, ids, strict=True):
        full = processor.tokenizer(f"{prompt.ANSWER_PREFIX} {word}", add_special_tokens=False).input_ids
        assert full[len(builder.prefix_ids)] == token


def test_the_end_of_turn_and_verification_turn_come_from_the_template(twin):
    _, _, _, processor, builder = twin
    closed = prompt.render(
        processor,
        [*prompt.conversation(CLASSES, None, True), {"role": "assistant", "content": "Answer: sad"}],
        add_generation_prompt=False,
    )
    end = processor.tokenizer.convert_ids_to_tokens(builder.end_id)
    assert closed.split("Answer: sad", 1)[1].lstrip().startswith(end)
    turn = processor.tokenizer.decode(builder.verification_ids())
    assert prompt.VERIFY_QUESTION in turn and turn.startswith(end)


def test_a_trajectory_and_the_verification_turn_encode_as_the_release_does(twin):
    """Prompt + trajectory + verification turn (tts=verifier) as ids, against the release processor's encoding
    of the same conversation (Voxtral: mistral-common's; the others: their chat template, tokenised)."""
    name, cfg, _, processor, builder = twin
    trajectory = "Keywords: none\nAnswer: sad"
    audio = np.zeros(RATE, dtype=np.float32)
    conversation = [
        *user_turn("Fine.", audio),
        {"role": "assistant", "content": trajectory},
        {"role": "user", "content": [{"type": "text", "text": prompt.VERIFY_QUESTION}]},
    ]
    tokenizer = processor.tokenizer
    if name in MISTRAL_COMMON:
        theirs = mistral_common_inputs(cfg, conversation)["input_ids"][0].tolist()
    else:  # the conversation in the template, then the processor's own call expands its audio
        text = processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        ids, _ = reference_inputs(name, cfg, processor, builder, text, "Fine.", audio)
        theirs = ids.tolist()
    fmt = builder.audio_format
    ours = builder.prompt_ids("Fine.", fmt.extract(fmt.extractor(processor), audio, RATE).n_tokens)
    ours += tokenizer(trajectory, add_special_tokens=False).input_ids + builder.verification_ids()
    assert ours == theirs


def test_voxtral_refuses_a_system_turn_beside_audio_as_mistral_common_does(tmp_path):
    from ambig.model.family import family_named

    cfg = twin_cfg("tiny_voxtral", tmp_path, lora=False)
    processor = family_named("voxtral").load_processor(resolve_source(cfg), cfg)
    messages = prompt.conversation(CLASSES, "Fine.", True, system_prompt="Be brief.")
    with pytest.raises(Exception, match="no system turn in a conversation with audio"):
        prompt.render(processor, messages, add_generation_prompt=True)
    audio = {"type": "audio", "audio": np.zeros(RATE, dtype=np.float32)}
    messages[1]["content"][0] = audio
    with pytest.raises(Exception, match="(?i)system"):
        mistral_common_inputs(cfg, messages)
    text_only = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi."}]
    theirs = mistral_common_inputs(cfg, text_only)["input_ids"][0].tolist()
    ours = processor.tokenizer(
        prompt.render(processor, text_only, add_generation_prompt=True), add_special_tokens=False
    ).input_ids
    assert ours == theirs  # a system turn without audio: [SYSTEM_PROMPT]...[/SYSTEM_PROMPT] as mistral-common


def test_a_batch_gives_each_clip_its_own_logits(twin, examples):
    _, _, model, _, builder = twin
    batch = builder(examples[:3])
    with torch.no_grad():
        together = full_logits(model, batch)
    for i in range(3):
        alone = builder(examples[i : i + 1])
        with torch.no_grad():
            own = full_logits(model, alone)[0]
        n = own.shape[0]
        torch.testing.assert_close(together[i, -n:], own, atol=2e-5, rtol=0)
    assert torch.equal(batch["position_ids"], positions(batch["attention_mask"]))


def test_greedy_and_sampled_generation(twin, examples):
    _, _, model, _, builder = twin
    batch = builder.for_evaluation()(examples[:2])
    greedy = decode(model, batch, builder, max_new_tokens=6)
    again = decode(model, batch, builder, max_new_tokens=6)
    assert greedy.tokens == again.tokens and all(0 < len(t) <= 6 for t in greedy.tokens)
    assert torch.isfinite(greedy.log_q).all()
    torch.manual_seed(0)
    sampled = sample(model, batch, builder, n=3, max_new_tokens=6, temperature=1.0, top_p=1.0)
    assert len(sampled.tokens) == 6 and torch.isfinite(sampled.log_q).all()
    assert len({tuple(t) for t in sampled.tokens}) > 1  # sampling draws different trajectories


@pytest.mark.parametrize("strategy", TTS_STRATEGIES)
def test_every_tts_strategy_evaluates_the_twin(twin, examples, strategy):
    _, _, model, _, builder = twin
    batch = builder.for_evaluation()(examples[:2])
    tts = {"name": strategy, "n": 2, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 5}
    torch.manual_seed(1)
    out = run_tts(model, batch, builder, {**tts, "likelihood_temperature": 1.0})
    assert out.q.shape == (2, len(CLASSES))
    torch.testing.assert_close(out.q.sum(-1), torch.ones(2))


def test_one_sft_step_moves_only_the_adapter(twin, examples, make_sft):
    name, cfg, _, _, builder = twin
    torch.manual_seed(0)
    model, _ = load_model(twin_cfg(name, Path(cfg.cache_dir).parent))
    sft = make_sft(model, builder, lr=1e-2)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n or "modules_to_save" in n for n in trained)
    assert not any(".audio_tower." in n for n in trained)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    loss, parts = sft.training_loss(builder(examples[:2]))
    assert torch.isfinite(loss) and float(parts["ce"]) > 0
    loss.backward()
    opt.step()
    moved = [n for n, p in model.named_parameters() if n in trained and not torch.equal(p, trained[n])]
    assert moved
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n


# `python -m ambig.evaluate model=<twin>` end to end (the run's feature store writing the family's own audio
# arrays, the batches collating): every twin runs it in the benchmark's smoke sweep
# (tests/test_tts_benchmark.py, one twin per family of the benchmark's releases, asserted there).

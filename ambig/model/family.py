"""Model families: what `model.family` (conf/model/*.yaml) decides about a checkpoint.

A family names the transformers class `load_model` calls `from_pretrained` on, the checkpoint types that class
reads, the chat template its prompts are written in (ambig.model.prompt), how its processor is assembled, how
its tiny random-init stand-in is built, which encoder towers LoRA must leave alone, and its audio inputs
(ambig.model.audio_formats: the arrays its forward takes beside `input_ids`, and the audio tokens they fill).
Everything else (the read-out, the strategies, test-time scaling) is shared.

- `qwen2_audio`: Qwen2-Audio-7B-Instruct and its fine-tunes (Audio-Reasoner); the default.
- `qwen2_5_omni_thinker`: the thinker (text output) of Qwen2.5-Omni; the talker (speech output) is not loaded.
- `audio_flamingo3`: Audio Flamingo 3 (ambig.model.twins.audio_flamingo3), prompts from its processor's
  own chat template (as every family added from here on).
- `voxtral`: Voxtral Mini 3B and Small 24B (ambig.model.voxtral_processor: the processor without
  mistral-common, a chat template that writes mistral-common's prompt; ambig.model.twins.voxtral).
- `gemma3n`: Gemma 3n (ambig.model.gemma3n, ambig.model.twins.gemma3n), loaded without its vision tower.
- `qwen3_omni_thinker`: the thinker of Qwen3-Omni-30B-A3B (ambig.model.twins.qwen3_omni), an MoE language
  model; prompts from its processor's chat template, the processor without its video half
  (ambig.model.qwen3_omni_processor).
- `smollm2_audio`: `model=mini`, Qwen2-Audio's architecture around SmolLM2-135M-Instruct (a Llama) and Whisper
  tiny.en's encoder (ambig.model.mini); a Qwen2-Audio checkpoint told apart by its text model's type.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from ambig.model import prompt
from ambig.model.audio_formats import (
    GEMMA3N_USM,
    VOXTRAL_CHUNKS,
    WHISPER_CHUNKED,
    WHISPER_FRAMES,
    WHISPER_MASKED,
    AudioFormat,
)
from ambig.model.prompt import QWEN2_5_OMNI, QWEN2_AUDIO, SMOLLM2_AUDIO, ChatTemplate

DEFAULT_FAMILY = "qwen2_audio"


@dataclass(frozen=True)
class ModelFamily:
    name: str
    model_class: str  # the transformers class loaded with from_pretrained
    model_type: str  # `config.model_type` of a model of that class
    checkpoint_types: tuple[str, ...]  # `model_type`s in config.json that class reads
    # The prompt: a hand-written ChatML format (the families that predate the chat-template path; each is
    # tested equal to its release's template), or None: the processor's own chat template renders it.
    template: ChatTemplate | None
    towers: tuple[str, ...]  # encoder modules (by name) that stay frozen: LoRA may not reach them
    # (source, model_cfg) -> a processor with .tokenizer, .feature_extractor and .audio_token
    load_processor: Callable
    build_tiny: Callable  # (out_dir, spec) -> the directory of a checkpoint the family builds locally
    tiny_prefix: str  # directory name prefix of those checkpoints in the model cache
    # model.train_audio_tower: the modules that train fully (the tower and what maps it into the text model)
    audio_modules: tuple[str, ...] = ("audio_tower",)
    # How the audio reaches the language model (ambig.model.audio_encoding): "qwen2_audio" (Whisper tower,
    # then a projector) or "qwen2_5_omni" (a tower that ends in its own projection).
    architecture: str = "qwen2_audio"
    # `text_config.model_type` of its checkpoints, where two families share one model class
    text_model_type: str | None = None
    spec_key: str = "tiny"  # the model config's block that sizes the locally built checkpoint
    make_spec: Callable = None  # (that block as a dict) -> the spec build_tiny takes
    audio_format: AudioFormat = WHISPER_MASKED  # the forward's audio inputs (ambig.model.audio_formats)
    # chat-template families: the system turn we send (None: none, the template writes its own default)
    system_prompt: str | None = None
    # (prompt text, processor, n) -> the text with its audio placeholder written for n audio tokens
    audio_expansion: Callable | None = None
    # (source, dtype) -> the model, where the family needs more than `model_class.from_pretrained`
    load_weights: Callable | None = None

    def transformers_class(self):
        import transformers

        return getattr(transformers, self.model_class)

    def from_pretrained(self, source: str, dtype):
        """The model at `source` (a directory or hub id), as `load_model` loads it."""
        if self.load_weights is not None:
            return self.load_weights(source, dtype)
        return self.transformers_class().from_pretrained(source, dtype=dtype)

    def base_messages(self, classes: Sequence[str], transcript: str | None, cot: bool) -> list[dict]:
        return prompt.conversation(classes, transcript, cot, self.system_prompt)

    def prompt(self, processor, classes: Sequence[str], transcript: str | None, cot: bool) -> str:
        """The chat prompt as text (one audio placeholder), ending where the assistant starts writing."""
        if self.template is not None:
            return prompt.chat_prompt(classes, transcript, cot, self.template)
        messages = self.base_messages(classes, transcript, cot)
        return prompt.render(processor, messages, add_generation_prompt=True)

    def expand_audio(self, text: str, processor, n_tokens: int) -> str:
        """`text` with its one audio placeholder repeated once per audio token (as the processor does)."""
        if self.audio_expansion is not None:
            return self.audio_expansion(text, processor, n_tokens)
        token = processor.audio_token
        if text.count(token) != 1:
            raise ValueError(f"the prompt holds {text.count(token)} audio placeholders {token!r}, not one")
        return text.replace(token, token * n_tokens, 1)

    def end_of_turn(self, processor) -> str:
        """The token that ends the assistant's turn (generation stops on it; targets end with it)."""
        if self.template is not None:
            return prompt.END_OF_TURN
        return prompt.template_end_of_turn(processor, self.base_messages(["neutral"], None, True))

    def verification_turn(self, processor) -> str:
        """What follows a trajectory to ask the model whether its analysis holds (tts=verifier)."""
        if self.template is not None:
            return prompt.verification_turn()
        return prompt.template_verification_turn(processor, self.base_messages(["neutral"], None, True))


def _qwen2_audio_processor(source: str, model_cfg):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(source)


def _omni_processor(source: str, model_cfg):
    from ambig.model.audio_text_processor import AudioTextProcessor

    return AudioTextProcessor.from_pretrained(
        source, audio_token="<|AUDIO|>", max_seconds=model_cfg.get("max_audio_seconds")
    )


def _build_tiny_qwen2_audio(out_dir, spec):
    from ambig.model.tiny import build_tiny

    return build_tiny(out_dir, spec)


def _build_tiny_omni(out_dir, spec):
    from ambig.model.tiny_omni import build_tiny_omni

    return build_tiny_omni(out_dir, spec)


def _build_tiny_af3(out_dir, spec):
    from ambig.model.twins.audio_flamingo3 import build_tiny_af3

    return build_tiny_af3(out_dir, spec)


def _build_tiny_voxtral(out_dir, spec):
    from ambig.model.twins.voxtral import build_tiny_voxtral

    return build_tiny_voxtral(out_dir, spec)


def _voxtral_processor(source: str, model_cfg):
    from ambig.model.voxtral_processor import load_voxtral_processor

    return load_voxtral_processor(source, model_cfg)


def _build_tiny_gemma3n(out_dir, spec):
    from ambig.model.twins.gemma3n import build_tiny_gemma3n

    return build_tiny_gemma3n(out_dir, spec)


def _gemma3n_processor(source: str, model_cfg):
    from ambig.model.gemma3n import load_processor

    return load_processor(source, model_cfg)


def _build_tiny_qwen3_omni(out_dir, spec):
    from ambig.model.twins.qwen3_omni import build_tiny_qwen3_omni

    return build_tiny_qwen3_omni(out_dir, spec)


def _qwen3_omni_processor(source: str, model_cfg):
    from ambig.model.qwen3_omni_processor import load_processor

    return load_processor(source, model_cfg)


def _gemma3n_weights(source: str, dtype):
    from ambig.model.gemma3n import load_gemma3n

    return load_gemma3n(source, dtype)


def _gemma3n_expansion(text: str, processor, n_tokens: int) -> str:
    from ambig.model.gemma3n import expand_audio

    return expand_audio(text, processor, n_tokens)


def _auto_processor(source: str, model_cfg):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(source)


def _tiny_spec(block):
    from ambig.model.tiny import TinySpec

    return TinySpec(**block)


def _build_mini(out_dir, spec):
    from ambig.model.mini import build_mini

    return build_mini(out_dir, spec)


def _mini_spec(block):
    from ambig.model.mini import MiniSpec

    return MiniSpec(**block)


_QWEN2_AUDIO = ModelFamily(
    name="qwen2_audio",
    model_class="Qwen2AudioForConditionalGeneration",
    model_type="qwen2_audio",
    checkpoint_types=("qwen2_audio",),
    template=QWEN2_AUDIO,
    towers=("audio_tower",),
    audio_modules=("audio_tower", "multi_modal_projector"),
    load_processor=_qwen2_audio_processor,
    build_tiny=_build_tiny_qwen2_audio,
    tiny_prefix="tiny",
    text_model_type="qwen2",
    make_spec=_tiny_spec,
)
FAMILIES = {
    f.name: f
    for f in (
        _QWEN2_AUDIO,
        # model=mini: the same class and audio path around a Llama, with SmolLM2's chat template
        replace(
            _QWEN2_AUDIO,
            name="smollm2_audio",
            template=SMOLLM2_AUDIO,
            build_tiny=_build_mini,
            tiny_prefix="mini",
            text_model_type="llama",
            spec_key="mini",
            make_spec=_mini_spec,
        ),
        ModelFamily(
            name="qwen2_5_omni_thinker",
            model_class="Qwen2_5OmniThinkerForConditionalGeneration",
            model_type="qwen2_5_omni_thinker",
            # The release (Qwen/Qwen2.5-Omni-7B) is the whole Omni model, thinker + talker; the thinker class
            # takes its thinker_config and its thinker.* weights.
            checkpoint_types=("qwen2_5_omni", "qwen2_5_omni_thinker"),
            template=QWEN2_5_OMNI,
            towers=("audio_tower", "visual"),
            load_processor=_omni_processor,
            build_tiny=_build_tiny_omni,
            tiny_prefix="tiny-omni",
            architecture="qwen2_5_omni",
            make_spec=_tiny_spec,
        ),
        # Audio Flamingo 3 (nvidia/audio-flamingo-3-hf): a Whisper-large-v3 encoder, a projector and Qwen2;
        # prompts from its processor's chat template, the audio as `<sound>`.
        ModelFamily(
            name="audio_flamingo3",
            model_class="AudioFlamingo3ForConditionalGeneration",
            model_type="audioflamingo3",
            checkpoint_types=("audioflamingo3",),
            template=None,
            towers=("audio_tower",),
            audio_modules=("audio_tower", "multi_modal_projector"),
            load_processor=_auto_processor,
            build_tiny=_build_tiny_af3,
            tiny_prefix="tiny-af3",
            architecture="audio_flamingo3",
            make_spec=_tiny_spec,
            audio_format=WHISPER_FRAMES,
        ),
        # Voxtral (mistralai/Voxtral-Mini-3B-2507, -Small-24B-2507): a Whisper-large-v3 shaped encoder, a
        # projector of 4 frames per token, a Llama-layout (Mistral) language model; the prompt in
        # mistral-common's format through ambig's chat template (ambig.model.voxtral_processor), no system
        # turn (mistral-common refuses one beside audio), the audio as `[BEGIN_AUDIO]` + 375 `[AUDIO]`.
        ModelFamily(
            name="voxtral",
            model_class="VoxtralForConditionalGeneration",
            model_type="voxtral",
            checkpoint_types=("voxtral",),
            template=None,
            towers=("audio_tower",),
            audio_modules=("audio_tower", "multi_modal_projector"),
            load_processor=_voxtral_processor,
            build_tiny=_build_tiny_voxtral,
            tiny_prefix="tiny-voxtral",
            architecture="voxtral",
            make_spec=_tiny_spec,
            audio_format=VOXTRAL_CHUNKS,
        ),
        # Gemma 3n (google/gemma-3n-E4B-it): a USM conformer audio tower, `embed_audio`, Gemma 3n's language
        # model; no vision tower (ambig.model.gemma3n); prompts from its processor's chat template (no system
        # turn: the template has none of its own and would fold one into the user turn); 188 audio tokens a
        # clip.
        ModelFamily(
            name="gemma3n",
            model_class="Gemma3nForConditionalGeneration",
            model_type="gemma3n",
            checkpoint_types=("gemma3n",),
            template=None,
            towers=("audio_tower", "vision_tower"),
            audio_modules=("audio_tower", "embed_audio"),
            load_processor=_gemma3n_processor,
            build_tiny=_build_tiny_gemma3n,
            tiny_prefix="tiny-gemma3n",
            architecture="gemma3n",
            make_spec=_tiny_spec,
            audio_format=GEMMA3N_USM,
            audio_expansion=_gemma3n_expansion,
            load_weights=_gemma3n_weights,
        ),
        # Qwen3-Omni-30B-A3B-Instruct's thinker: the release is the whole Omni model (thinker, talker,
        # code2wav), read as the thinker's config and thinker.* weights; an MoE language model (LoRA: its
        # attention); prompts from its processor's chat template, the audio as
        # <|audio_start|><|audio_pad|><|audio_end|>.
        ModelFamily(
            name="qwen3_omni_thinker",
            model_class="Qwen3OmniMoeThinkerForConditionalGeneration",
            model_type="qwen3_omni_moe_thinker",
            checkpoint_types=("qwen3_omni_moe", "qwen3_omni_moe_thinker"),
            template=None,
            towers=("audio_tower", "visual"),
            load_processor=_qwen3_omni_processor,
            build_tiny=_build_tiny_qwen3_omni,
            tiny_prefix="tiny-qwen3-omni",
            architecture="qwen3_omni",
            make_spec=_tiny_spec,
            audio_format=WHISPER_CHUNKED,
        ),
    )
}


def family_named(name: str) -> ModelFamily:
    if name not in FAMILIES:
        raise ValueError(f"model.family={name!r}: choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def model_family(model_cfg) -> ModelFamily:
    """The family a model config names (`model.family`; qwen2_audio when the key is absent or null)."""
    return family_named(model_cfg.get("family") or DEFAULT_FAMILY)


def family_of(model) -> ModelFamily:
    """The family of a loaded model (a PEFT wrapper or the transformers model itself)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    model_type = base.config.model_type
    text_config = getattr(base.config, "text_config", None)
    text_type = getattr(text_config, "model_type", None)
    for family in FAMILIES.values():
        if family.model_type == model_type and family.text_model_type in (None, text_type):
            return family
    raise ValueError(f"a {type(base).__name__} (model_type {model_type!r}) belongs to no model family")

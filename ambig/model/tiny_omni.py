"""A tiny random-init Qwen2.5-Omni thinker with the shipped tokenizer, in the release's checkpoint layout.

Like ambig.model.tiny for Qwen2-Audio: `build_tiny_omni` writes a real checkpoint directory that
`ambig.model.load` reads exactly as it reads `Qwen/Qwen2.5-Omni-7B`. It is written the way that release is: a
`qwen2_5_omni` config.json holding the thinker's config as `thinker_config`, and weights named `thinker.*`,
so loading it goes through the same config selection and weight renaming in transformers as the 7B. There is
no talker (speech output), which `ambig` never loads.

Sizes come from `TinySpec` (shared with the tiny Qwen2-Audio); the audio encoder works in the release's
windows of 100 encoder positions (2 s of audio, `n_window`), so a 4 s clip spans two of them.
"""

from __future__ import annotations

import json
from pathlib import Path

from ambig.model.tiny import SPECIAL_TOKENS, TinySpec, load_tokenizer, write_checkpoint

AUDIO_WINDOW = 100  # Qwen2.5-Omni's n_window
# Qwen2.5-Omni's vision placeholders: the tiny tokenizer gets them so the config's image / video ids are real.
VISION_TOKENS = {
    "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
    "image_token": "<|IMAGE|>",
    "video_token": "<|VIDEO|>",
}
AUDIO_TOKENS = {
    "audio_bos_token": "<|audio_bos|>",
    "audio_token": "<|AUDIO|>",
    "audio_eos_token": "<|audio_eos|>",
}


def load_omni_tokenizer():
    """The shipped tiny tokenizer plus the vision placeholders, with the named multimodal tokens that
    Qwen2.5-Omni's tokenizer carries (tokenizer.audio_token, .image_token, ...)."""
    from transformers import PreTrainedTokenizerFast

    base = load_tokenizer()
    return PreTrainedTokenizerFast(
        tokenizer_object=base.backend_tokenizer,
        pad_token=base.pad_token,
        eos_token=base.eos_token,
        extra_special_tokens=list(SPECIAL_TOKENS[1:]) + list(VISION_TOKENS.values()),
        padding_side="left",
        **AUDIO_TOKENS,
        **VISION_TOKENS,
    )


def mrope_section(head_dim: int) -> list[int]:
    """How the rotary frequencies split into temporal / height / width, in the release's 16:24:24 ratio."""
    half = head_dim // 2
    temporal = half // 4
    height = (half - temporal) // 2
    return [temporal, height, half - temporal - height]


def thinker_config(spec: TinySpec, tokenizer):
    from transformers import (
        Qwen2_5OmniAudioEncoderConfig,
        Qwen2_5OmniTextConfig,
        Qwen2_5OmniThinkerConfig,
        Qwen2_5OmniVisionEncoderConfig,
    )

    ids = tokenizer.convert_tokens_to_ids
    return Qwen2_5OmniThinkerConfig(
        audio_config=Qwen2_5OmniAudioEncoderConfig(
            **spec.whisper_encoder_sizes(),
            n_window=AUDIO_WINDOW,
            max_source_positions=AUDIO_WINDOW,  # positions within one window
            output_dim=spec.hidden_size,  # the tower projects into the language model's width itself
        ),
        # Never run (ambig passes no images or videos), but part of the thinker: as small as it goes.
        vision_config=Qwen2_5OmniVisionEncoderConfig(
            depth=1,
            hidden_size=16,
            intermediate_size=32,
            num_heads=2,
            out_hidden_size=spec.hidden_size,
            fullatt_block_indexes=[0],
        ),
        text_config=Qwen2_5OmniTextConfig(
            vocab_size=len(tokenizer),
            **spec.text_sizes(),
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 1_000_000.0,
                "mrope_section": mrope_section(spec.hidden_size // spec.num_attention_heads),
            },
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        audio_token_index=ids("<|AUDIO|>"),
        audio_start_token_id=ids("<|audio_bos|>"),
        audio_end_token_id=ids("<|audio_eos|>"),
        image_token_index=ids("<|IMAGE|>"),
        video_token_index=ids("<|VIDEO|>"),
        user_token_id=ids("<|im_start|>"),  # the talker's; unused by the thinker, kept inside the vocabulary
        # Not fields of the thinker's config class, but in the release's thinker_config, and read by the
        # thinker's own rope-index computation (generate without explicit position ids).
        vision_start_token_id=ids("<|vision_bos|>"),
        vision_end_token_id=ids("<|vision_eos|>"),
    )


def as_release_layout(directory: Path) -> None:
    """Rewrite a thinker saved with save_pretrained the way Qwen/Qwen2.5-Omni-7B is published: the whole
    model's config with the thinker's inside, and every weight under `thinker.`."""
    from safetensors.torch import load_file, save_file

    (weights,) = directory.glob("*.safetensors")
    save_file({f"thinker.{k}": v for k, v in load_file(weights).items()}, weights, metadata={"format": "pt"})
    thinker = json.loads((directory / "config.json").read_text())
    thinker.pop("architectures", None)
    release = {
        "architectures": ["Qwen2_5OmniModel"],
        "model_type": "qwen2_5_omni",
        "enable_audio_output": False,
        "thinker_config": thinker,
    }
    (directory / "config.json").write_text(json.dumps(release, indent=2))


def build_tiny_omni(out_dir: str | Path, spec: TinySpec) -> Path:
    """Write a random-init tiny Qwen2.5-Omni thinker checkpoint (model + tokenizer + feature extractor)."""
    import torch
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration, WhisperFeatureExtractor

    from ambig.model.audio_text_processor import AudioTextProcessor

    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists():
        return out_dir
    tokenizer = load_omni_tokenizer()
    # A private RNG stream, as for the tiny Qwen2-Audio: building must not move the caller's global RNG.
    with torch.random.fork_rng():
        torch.manual_seed(spec.seed)
        model = Qwen2_5OmniThinkerForConditionalGeneration(thinker_config(spec, tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    extractor = WhisperFeatureExtractor(
        feature_size=spec.num_mel_bins, chunk_length=spec.chunk_length, return_attention_mask=True
    )
    processor = AudioTextProcessor(tokenizer, extractor, AUDIO_TOKENS["audio_token"])

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        as_release_layout(tmp)
        processor.save_pretrained(tmp)

    return write_checkpoint(out_dir, spec, write)

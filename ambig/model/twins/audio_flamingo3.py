"""A tiny random-init Audio Flamingo 3 (nvidia/audio-flamingo-3-hf) in the release's checkpoint layout.

The release: `AudioFlamingo3ForConditionalGeneration` (model_type `audioflamingo3`) around a Whisper-large-v3
shaped encoder (`audioflamingo3_encoder`), a two-layer projector and a Qwen2 language model; its processor
(`AudioFlamingo3Processor`) is a Whisper feature extractor (128 mel bins, 30 s windows) and Qwen2's tokenizer
with `<sound>` as the audio placeholder, and a ChatML chat template that writes one `<sound>` before the text
of a user turn holding audio, with "You are a helpful assistant." as the system turn when none is given.

The twin keeps every one of those parts and shrinks the sizes (`TinySpec`), the tokenizer (ambig's tiny
byte-level BPE as a `Qwen2Tokenizer`, with AF3's `<sound>`, `[BOS]`, `[PAD]` as its last ids, as in the
release) and the window (`TinySpec.chunk_length` seconds: the encoder adds its positions to a full window,
so window and `max_source_positions` move together).
"""

from __future__ import annotations

from pathlib import Path

from ambig.model.tiny import TinySpec, tiny_bpe, write_checkpoint

SPECIALS = ("<sound>", "[BOS]", "[PAD]")  # the release's last three ids (151669, 151670, 151671)
# The processor's chat template, verbatim from transformers' convert_audioflamingo3_to_hf.py
# (write_processor; huggingface/transformers @ e618a076c75e2e9ed10bdd039dce2892df5b593f), which wrote the
# release's chat_template.jinja.
CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "{% for m in messages if m['content'] is not none %}"
    "<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}"
    "{{ m['content'] }}"
    "{% else %}"
    "{% set audio = namespace(found=False) %}"
    "{% set text_buf = namespace(v='') %}"
    "{% for c in m['content'] %}"
    "{% if c.get('type') == 'audio' or 'audio' in c %}"
    "{% set audio.found = True %}"
    "{% elif c.get('type') == 'text' or 'text' in c %}"
    "{% set text_buf.v = text_buf.v + c['text'] %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if audio.found %}{{ '<sound>' }}{% endif %}{{ text_buf.v }}"
    "{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "<|im_start|>assistant\n"
    "{% endif %}"
)


def load_tokenizer():
    """ambig's tiny BPE as the release's tokenizer class, AF3's special tokens appended in its order."""
    from transformers import Qwen2Tokenizer

    vocab, merges, added = tiny_bpe(SPECIALS)
    return Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token="[BOS]",
        eos_token="<|im_end|>",
        pad_token="[PAD]",
        extra_special_tokens=[*added, SPECIALS[0]],
        padding_side="left",
    )


def build_tiny_af3(out_dir: str | Path, spec: TinySpec) -> Path:
    """Write a random-init tiny Audio Flamingo 3 (model + processor) to `out_dir`, atomically."""
    import torch
    from transformers import (
        AudioFlamingo3Config,
        AudioFlamingo3EncoderConfig,
        AudioFlamingo3ForConditionalGeneration,
        AudioFlamingo3Processor,
        Qwen2Config,
        WhisperFeatureExtractor,
    )

    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists():
        return out_dir
    tokenizer = load_tokenizer()
    config = AudioFlamingo3Config(
        audio_config=AudioFlamingo3EncoderConfig(
            hidden_size=spec.audio_d_model,
            intermediate_size=spec.audio_ffn_dim,
            num_hidden_layers=spec.audio_layers,
            num_attention_heads=spec.audio_heads,
            num_mel_bins=spec.num_mel_bins,
            max_source_positions=spec.max_source_positions,
        ),
        text_config=Qwen2Config(
            vocab_size=len(tokenizer),
            **spec.text_sizes(),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        audio_token_id=tokenizer.convert_tokens_to_ids(SPECIALS[0]),
        projector_hidden_act="gelu",
        projector_bias=True,
    )
    with torch.random.fork_rng():  # building must not move the caller's global RNG (as the other twins)
        torch.manual_seed(spec.seed)
        model = AudioFlamingo3ForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    processor = AudioFlamingo3Processor(
        feature_extractor=WhisperFeatureExtractor(
            feature_size=spec.num_mel_bins, chunk_length=spec.chunk_length, return_attention_mask=True
        ),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)

    return write_checkpoint(out_dir, spec, write)

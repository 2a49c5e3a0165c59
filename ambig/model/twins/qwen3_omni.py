"""A tiny random-init Qwen3-Omni thinker (Qwen/Qwen3-Omni-30B-A3B-Instruct) in the release's layout.

The release is the whole Omni model (thinker + talker + code2wav): a `qwen3_omni_moe` config.json
(architectures ["Qwen3OmniMoeForConditionalGeneration"]) holding the thinker's config as `thinker_config`
(model_type `qwen3_omni_moe_thinker`: audio_config, vision_config, text_config) beside `talker_config` and
`code2wav_config`, and every thinker weight under `thinker.` with the thinker's original names
(`thinker.audio_tower.*`, `thinker.visual.*`, `thinker.model.layers.*`, `thinker.lm_head.*`), the MoE experts
one tensor per expert (`...mlp.experts.<e>.{gate,up,down}_proj.weight`). The thinker class's
`from_pretrained` picks the thinker's config by its model_type and renames and fuses the weights on load
(transformers' conversion_mapping.py: the qwen3_omni_moe expert merge and the thinker prefix renames), so the
twin is read by the same path as the release.

The twin keeps those parts and shrinks the sizes: the language model's from `TinySpec.text_sizes()` (its MoE
block: `EXPERTS` experts of width intermediate_size / 4, `EXPERTS_PER_TOKEN` per token, every layer sparse as
in the release), the audio tower's from TinySpec (the release's 1 s conv chunks, `n_window` 50, kept;
attention windows of 2 s instead of 8 s, so a clip of the twin's 4 s window spans two), a vision tower of one
block (never run). No talker or code2wav weights (ambig loads only the thinker); `enable_audio_output` is
false so the whole model's class would not build a random talker either (the release: true).

Processor files as the release ships them (per transformers' processor and a dump of the release's config; the
hub's file list itself not checked): tokenizer files (ambig's tiny byte-level BPE as a Qwen2Tokenizer,
Qwen3-Omni's special tokens appended, its named tokens `audio_token` <|audio_pad|>, ... in
tokenizer_config.json), preprocessor_config.json (the Whisper feature extractor with a `TinySpec.chunk_length`
window, beside the image processor's settings) and chat_template.json (`CHAT_TEMPLATE`, below).
"""

from __future__ import annotations

import json
from pathlib import Path

from ambig.model.tiny import TinySpec, tiny_bpe, write_checkpoint

# Qwen3's special tokens the thinker's config and processor name (the release: <|vision_start|> 151652
# ... <|audio_start|> 151669, <|audio_end|> 151670, <|audio_pad|> 151675), after the tiny tokenizer's own.
SPECIALS = (
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<|audio_start|>",
    "<|audio_end|>",
    "<|audio_pad|>",
)
THINK = ("<think>", "</think>")  # added tokens that are not special (as in Qwen3's tokenizer)
NAMED = {  # the tokenizer attributes Qwen3OmniMoeProcessor reads
    "audio_token": "<|audio_pad|>",
    "audio_bos_token": "<|audio_start|>",
    "audio_eos_token": "<|audio_end|>",
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_bos_token": "<|vision_start|>",
    "vision_eos_token": "<|vision_end|>",
}
EXPERTS = 4  # the release: 128
EXPERTS_PER_TOKEN = 2  # the release: 8
AUDIO_CHUNK_WINDOW = 50  # the release's audio n_window: conv chunks of 100 mel frames (1 s, 13 audio tokens)
AUDIO_ATTENTION_FRAMES = 200  # the release's n_window_infer is 800 (8 s); 2 s here, within the twin's window
POSITION_ID_PER_SECONDS = 13  # the release's thinker_config (the class default is 25)

# The twin's chat template: Qwen3-Omni's ChatML as the Instruct release's chat_template.json writes the turns
# ambig sends (ambig's own text, not a copy of that file): every turn `<|im_start|>role\n...<|im_end|>\n`,
# a content part of type audio as `<|audio_start|><|audio_pad|><|audio_end|>` (image, video:
# `<|vision_start|><|image_pad|>` or `<|video_pad|><|vision_end|>`) written where it stands in the turn, text
# as it is, no system turn unless one is given, and after the generation prompt `<think>\n\n</think>\n\n` when
# enable_thinking is false. Where this format comes from: transformers' Qwen3-Omni docs and processor (the
# placeholders), and a copy of the release's template in a third-party vLLM deployment
# (github.com/kyr0/qwen3-omni-vllm-docker chat-template.jinja2 @ 051f7ba), whose think-block logic matches an
# excerpt of the hub file quoted in github.com/sujitnoronha/audio_reasoning_interspeech. Not checked against
# the hub file itself (no download). Left out, as ambig never sends them: tools and tool turns, and the
# release's re-rendering of an assistant turn's `reasoning_content` inside <think> (for a turn after a user
# turn whose content is a plain string; ambig's user turns are lists of parts).
CHAT_TEMPLATE = (
    "{%- macro parts(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}{%- for part in content -%}"
    "{%- if part.type == 'image' or 'image' in part or 'image_url' in part -%}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part.type == 'audio' or 'audio' in part or 'audio_url' in part -%}"
    "{{ '<|audio_start|><|audio_pad|><|audio_end|>' }}"
    "{%- elif part.type == 'video' or 'video' in part -%}"
    "{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif part.type == 'text' -%}{{ part.text }}"
    "{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message.role + '\\n' }}{{ parts(message.content) }}{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}{{ '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif -%}"
    "{%- endif -%}"
)


def load_tokenizer():
    """ambig's tiny BPE as the release's tokenizer class, Qwen3-Omni's special tokens appended."""
    from transformers import Qwen2Tokenizer

    vocab, merges, added = tiny_bpe((*SPECIALS, *THINK))
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=NAMED,
        padding_side="left",
    )
    tokenizer.add_tokens([*added, *SPECIALS], special_tokens=True)
    tokenizer.add_tokens(list(THINK))
    return tokenizer


def mrope_section(head_dim: int) -> list[int]:
    """The rotary half-dimension split into temporal / height / width in the release's 24:20:20 ratio."""
    half = head_dim // 2
    height = width = max(1, round(half * 20 / 64))
    return [half - height - width, height, width]


def thinker_config(spec: TinySpec, tokenizer):
    from transformers import (
        Qwen3OmniMoeAudioEncoderConfig,
        Qwen3OmniMoeTextConfig,
        Qwen3OmniMoeThinkerConfig,
        Qwen3OmniMoeVisionEncoderConfig,
    )

    ids = tokenizer.convert_tokens_to_ids
    sizes = spec.text_sizes()
    head_dim = sizes["hidden_size"] // sizes["num_attention_heads"]
    return Qwen3OmniMoeThinkerConfig(
        audio_config=Qwen3OmniMoeAudioEncoderConfig(
            **spec.whisper_encoder_sizes(),
            downsample_hidden_size=16,  # the release: 480
            output_dim=spec.hidden_size,  # the tower projects into the language model's width itself
            n_window=AUDIO_CHUNK_WINDOW,
            n_window_infer=AUDIO_ATTENTION_FRAMES,
        ),
        # never run (ambig sends no images or videos): as small as it goes
        vision_config=Qwen3OmniMoeVisionEncoderConfig(
            depth=1,
            hidden_size=16,
            intermediate_size=32,
            num_heads=2,
            out_hidden_size=spec.hidden_size,
            deepstack_visual_indexes=[0],
            num_position_embeddings=64,
        ),
        text_config=Qwen3OmniMoeTextConfig(
            vocab_size=len(tokenizer),
            **sizes,
            head_dim=head_dim,
            moe_intermediate_size=spec.intermediate_size // 4,
            num_experts=EXPERTS,
            num_experts_per_tok=EXPERTS_PER_TOKEN,
            norm_topk_prob=True,
            decoder_sparse_step=1,
            mlp_only_layers=[],
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 1_000_000.0,
                "mrope_section": mrope_section(head_dim),
                "interleaved": True,
                "mrope_interleaved": True,
            },
        ),
        audio_token_id=ids(NAMED["audio_token"]),
        audio_start_token_id=ids(NAMED["audio_bos_token"]),
        image_token_id=ids(NAMED["image_token"]),
        video_token_id=ids(NAMED["video_token"]),
        position_id_per_seconds=POSITION_ID_PER_SECONDS,
        # in the release's thinker_config beside the class's fields (get_rope_index reads vision_start_*)
        audio_end_token_id=ids(NAMED["audio_eos_token"]),
        vision_start_token_id=ids(NAMED["vision_bos_token"]),
        vision_end_token_id=ids(NAMED["vision_eos_token"]),
        seconds_per_chunk=2,
    )


def release_config(thinker) -> dict:
    """The whole model's config.json around the thinker's (talker and code2wav at their class defaults)."""
    from transformers import Qwen3OmniMoeConfig

    config = Qwen3OmniMoeConfig(thinker_config=thinker.to_dict(), enable_audio_output=False).to_dict()
    config["architectures"] = ["Qwen3OmniMoeForConditionalGeneration"]
    config["thinker_config"].pop("architectures", None)
    return config


def to_release_names(state: dict, num_experts: int) -> dict:
    """The thinker's weights under the release's names: prefix `thinker.`, the towers and the language model
    under their original names, the fused experts split one tensor per expert (gate first in gate_up_proj)."""
    out = {}
    for name, tensor in state.items():
        if name.startswith(("model.audio_tower.", "model.visual.")):
            name = name.removeprefix("model.")
        elif name.startswith("model.language_model."):
            name = "model." + name.removeprefix("model.language_model.")
        if name.endswith("mlp.experts.gate_up_proj"):
            base = name.removesuffix("gate_up_proj")
            width = tensor.shape[1] // 2
            for e in range(num_experts):
                out[f"thinker.{base}{e}.gate_proj.weight"] = tensor[e, :width].clone()
                out[f"thinker.{base}{e}.up_proj.weight"] = tensor[e, width:].clone()
        elif name.endswith("mlp.experts.down_proj"):
            base = name.removesuffix("down_proj")
            for e in range(num_experts):
                out[f"thinker.{base}{e}.down_proj.weight"] = tensor[e].clone()
        else:
            out[f"thinker.{name}"] = tensor.contiguous()
    return out


def build_tiny_qwen3_omni(out_dir: str | Path, spec: TinySpec) -> Path:
    """Write a random-init tiny Qwen3-Omni (the thinker, its processor files) to `out_dir`, atomically."""
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen3OmniMoeThinkerForConditionalGeneration, WhisperFeatureExtractor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists():
        return out_dir
    tokenizer = load_tokenizer()
    config = thinker_config(spec, tokenizer)
    with torch.random.fork_rng():  # building must not move the caller's global RNG (as the other twins)
        torch.manual_seed(spec.seed)
        model = Qwen3OmniMoeThinkerForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.pad_token_id]
    extractor = WhisperFeatureExtractor(
        feature_size=spec.num_mel_bins, chunk_length=spec.chunk_length, return_attention_mask=True
    )
    # the vision tower's patching (patch 16, merge 2, temporal patch 2, as the release's vision_config)
    images = Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2)

    def write(tmp: Path) -> None:
        state = {k: v.detach() for k, v in model.state_dict().items()}
        weights = to_release_names(state, config.text_config.num_experts)
        save_file(weights, tmp / "model.safetensors", metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(release_config(config), indent=2, sort_keys=True) + "\n")
        model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tokenizer_config = json.loads((tmp / "tokenizer_config.json").read_text())
        tokenizer_config["processor_class"] = "Qwen3OmniMoeProcessor"
        (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
        settings = {
            **json.loads(images.to_json_string()),
            **json.loads(extractor.to_json_string()),
            "processor_class": "Qwen3OmniMoeProcessor",
        }
        (tmp / "preprocessor_config.json").write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
        (tmp / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}, indent=2) + "\n")

    return write_checkpoint(out_dir, spec, write)

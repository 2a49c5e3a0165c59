"""A tiny random-init Voxtral (mistralai/Voxtral-Mini-3B-2507, -Small-24B-2507) in the release's layout.

The release: `VoxtralForConditionalGeneration` (model_type `voxtral`) around a Whisper-large-v3 shaped encoder
(`voxtral_encoder`), a projector that reads 4 encoder frames per audio token, and a Llama (`llama`) language
model; config.json with nested `audio_config` and `text_config`, `audio_token_id` 24; generation_config.json
(bos 1, eos 2, pad 11); preprocessor_config.json (a WhisperFeatureExtractor of 128 mel bins, 30 s chunks, with
`processor_class` VoxtralProcessor); `tekken.json` (mistral-common's tokenizer: 1000 special-token slots, then
byte-level BPE ranks, and an `audio` block); no tokenizer.json and no chat template.

The twin keeps all of it and shrinks the sizes (`TinySpec`) and the tokenizer: ambig's tiny byte-level BPE
rewritten as a tekken.json (ranks 0..255 the single bytes in order, as tekken requires, then the tiny
tokenizer's merged tokens in its id order), behind the release's special-token slots. Two release constants
stay, since VoxtralProcessor hard-codes them: 30 s chunks of 3000 mel frames (the encoder's
`max_source_positions` 1500) and the projector's 4 frames per token (audio `intermediate_size` = 4 x its
width).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from ambig.model.tiny import TinySpec, _tokenizer_path, write_checkpoint

# The pre-tokenizer pattern every tekken.json carries (mistral-common's shipped tekken_240911.json).
TEKKEN_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?"
    r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+"
)
NUM_SPECIAL = 1000  # the release's default_num_special_tokens: text tokens start at id 1000
# The release's named special tokens by id (mistral-common's list 0..19, then the audio ones).
NAMED_SPECIALS = {
    0: "<unk>",
    1: "<s>",
    2: "</s>",
    3: "[INST]",
    4: "[/INST]",
    5: "[AVAILABLE_TOOLS]",
    6: "[/AVAILABLE_TOOLS]",
    7: "[TOOL_RESULTS]",
    8: "[/TOOL_RESULTS]",
    9: "[TOOL_CALLS]",
    10: "[IMG]",
    11: "<pad>",
    12: "[IMG_BREAK]",
    13: "[IMG_END]",
    14: "[PREFIX]",
    15: "[MIDDLE]",
    16: "[SUFFIX]",
    17: "[SYSTEM_PROMPT]",
    18: "[/SYSTEM_PROMPT]",
    19: "[TOOL_CONTENT]",
    24: "[AUDIO]",
    25: "[BEGIN_AUDIO]",
    34: "[TRANSCRIBE]",
}
AUDIO_TOKEN_ID = 24  # hard-coded in VoxtralProcessor.__init__
BOS, EOS, PAD = 1, 2, 11  # as the release's converter writes them into generation_config.json
AUDIO_BLOCK = {  # the release's tekken.json `audio` section (mistral-common's AudioConfig)
    "sampling_rate": 16000,
    "frame_rate": 12.5,
    "audio_encoding_config": {"num_mel_bins": 128, "hop_length": 160, "window_size": 400},
    "chunk_length_s": 30.0,
}
TOKENIZER_VERSION = "v7"  # audio needs >= v7; v7 and v11 encode these conversations alike
CHUNK_FRAMES = 3000  # VoxtralProcessor.audio_kwargs["max_source_positions"]: mel frames per 30 s row


def _byte_decoder() -> dict[str, int]:
    """The GPT-2 byte-level alphabet: char -> byte."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def tekken_json() -> dict:
    """ambig's tiny byte-level BPE as a tekken.json (its ChatML specials dropped: the release's take their
    place)."""
    tiny = json.loads(_tokenizer_path().read_text())
    decoder = _byte_decoder()
    specials = {t["id"] for t in tiny["added_tokens"]}
    by_id = sorted((i, s) for s, i in tiny["model"]["vocab"].items() if i not in specials)
    merged = [bytes(decoder[c] for c in s) for _, s in by_id]
    pieces = [bytes([i]) for i in range(256)] + [b for b in merged if len(b) > 1]
    vocab = []
    for rank, piece in enumerate(pieces):
        try:
            text = piece.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        vocab.append({"rank": rank, "token_bytes": base64.b64encode(piece).decode(), "token_str": text})
    special_tokens = [
        {"rank": i, "token_str": NAMED_SPECIALS.get(i, f"<SPECIAL_{i}>"), "is_control": True}
        for i in range(NUM_SPECIAL)
    ]
    return {
        "config": {
            "pattern": TEKKEN_PATTERN,
            "num_vocab_tokens": len(vocab),
            "default_vocab_size": NUM_SPECIAL + len(vocab),
            "default_num_special_tokens": NUM_SPECIAL,
            "version": TOKENIZER_VERSION,
        },
        "vocab": vocab,
        "special_tokens": special_tokens,
        "audio": AUDIO_BLOCK,
    }


def build_tiny_voxtral(out_dir: str | Path, spec: TinySpec) -> Path:
    """Write a random-init tiny Voxtral (model + processor files) to `out_dir`, atomically."""
    import torch
    from transformers import (
        LlamaConfig,
        VoxtralConfig,
        VoxtralEncoderConfig,
        VoxtralForConditionalGeneration,
        WhisperFeatureExtractor,
    )

    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists():
        return out_dir
    if spec.chunk_length != 30 or spec.num_mel_bins != 128:
        raise ValueError(
            "a Voxtral twin keeps the release's 30 s chunks of 128 mel bins (VoxtralProcessor hard-codes "
            f"them), got chunk_length={spec.chunk_length}, num_mel_bins={spec.num_mel_bins}"
        )
    tekken = tekken_json()
    config = VoxtralConfig(
        audio_config=VoxtralEncoderConfig(
            hidden_size=spec.audio_d_model,
            intermediate_size=4 * spec.audio_d_model,  # the projector reads 4 encoder frames per audio token
            num_hidden_layers=spec.audio_layers,
            num_attention_heads=spec.audio_heads,
            num_mel_bins=spec.num_mel_bins,
            max_source_positions=CHUNK_FRAMES // 2,
        ),
        text_config=LlamaConfig(
            vocab_size=tekken["config"]["default_vocab_size"],
            **spec.text_sizes(),
            rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": 100000000.0},
            bos_token_id=BOS,
            eos_token_id=EOS,
            pad_token_id=PAD,
        ),
        audio_token_id=AUDIO_TOKEN_ID,
        projector_hidden_act="gelu",
    )
    with torch.random.fork_rng():  # building must not move the caller's global RNG (as the other twins)
        torch.manual_seed(spec.seed)
        model = VoxtralForConditionalGeneration(config)
    for key, value in (("bos_token_id", BOS), ("eos_token_id", EOS), ("pad_token_id", PAD)):
        setattr(model.generation_config, key, value)
    extractor = WhisperFeatureExtractor(
        feature_size=spec.num_mel_bins, chunk_length=spec.chunk_length, return_attention_mask=False
    )

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        # The release's processor files: preprocessor_config.json (naming the processor class) beside
        # tekken.json; no processor_config.json, no tokenizer_config.json.
        extractor.save_pretrained(tmp)
        pre = tmp / "preprocessor_config.json"
        settings = {**json.loads(pre.read_text()), "processor_class": "VoxtralProcessor"}
        pre.write_text(json.dumps(settings, indent=2))
        (tmp / "tekken.json").write_text(json.dumps(tekken, ensure_ascii=False))

    return write_checkpoint(out_dir, spec, write)

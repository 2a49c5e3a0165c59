"""A tiny random-init Qwen2-Audio with a shipped byte-level BPE tokenizer.

It exists so every code path (the 7B's `from_pretrained` included) runs on a CPU with no download:
`build_tiny` writes a real checkpoint directory with `save_pretrained`, and `ambig.model.load` reads
it back exactly as it reads `Qwen/Qwen2-Audio-7B-Instruct`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|audio_bos|>",
    "<|AUDIO|>",
    "<|audio_eos|>",
)
TOKENIZER_ASSET = "assets/tiny_tokenizer/tokenizer.json"


@dataclass(frozen=True)
class TinySpec:
    """Sizes of the tiny model; every field changes the cache key."""

    seed: int = 0
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    audio_d_model: int = 64
    audio_layers: int = 2
    audio_heads: int = 4
    audio_ffn_dim: int = 128
    num_mel_bins: int = 128
    # Whisper pads every clip to `chunk_length` seconds and the encoder requires
    # mel frames == 2 * max_source_positions, so the two move together (100 frames per second).
    chunk_length: int = 4

    @property
    def max_source_positions(self) -> int:
        return self.chunk_length * 50

    def text_sizes(self) -> dict:
        """The language model's sizes, as every twin's text config takes them (with its own token ids)."""
        return {
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "max_position_embeddings": 4096,
            "tie_word_embeddings": False,
        }

    def whisper_encoder_sizes(self) -> dict:
        """The audio tower's sizes as the Whisper-style encoder configs take them (Qwen2-Audio, the Omnis)."""
        return {
            "num_mel_bins": self.num_mel_bins,
            "encoder_layers": self.audio_layers,
            "encoder_attention_heads": self.audio_heads,
            "encoder_ffn_dim": self.audio_ffn_dim,
            "d_model": self.audio_d_model,
        }

    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True) + _tokenizer_path().read_text()
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _tokenizer_path() -> Path:
    return Path(str(resources.files("ambig").joinpath(TOKENIZER_ASSET)))


def tiny_bpe(appended: tuple[str, ...] = ()) -> tuple[dict[str, int], list[tuple[str, str]], list[str]]:
    """The shipped tiny byte-level BPE as a twin's tokenizer takes it: (its vocab with `appended` tokens at
    the next ids, in order; its merges as pairs; its added tokens' texts)."""
    tiny = json.loads(_tokenizer_path().read_text())
    vocab = dict(tiny["model"]["vocab"])
    for token in appended:
        vocab[token] = len(vocab)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in tiny["model"]["merges"]]
    return vocab, merges, [t["content"] for t in tiny["added_tokens"]]


def train_tokenizer(texts: list[str], vocab_size: int = 2048):
    """Train the byte-level BPE tokenizer that `build_tiny` ships (run by scripts/train_tiny_tokenizer.py)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_tokenizer():
    """The shipped tokenizer as a transformers fast tokenizer, with Qwen's special-token roles."""
    from transformers import PreTrainedTokenizerFast

    path = _tokenizer_path()
    if not path.exists():
        raise FileNotFoundError(f"the tiny tokenizer is missing from the package: {path}")
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(path),
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
        padding_side="left",
    )
    return tok


def build_tiny(out_dir: str | Path, spec: TinySpec) -> Path:
    """Write a random-init tiny Qwen2-Audio checkpoint (model + processor) to `out_dir`, atomically."""
    import torch
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioEncoderConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        Qwen2Config,
        WhisperFeatureExtractor,
    )

    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists():
        return out_dir
    tokenizer = load_tokenizer()
    audio_id = tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    config = Qwen2AudioConfig(
        audio_config=Qwen2AudioEncoderConfig(
            **spec.whisper_encoder_sizes(),
            max_source_positions=spec.max_source_positions,
        ),
        text_config=Qwen2Config(
            vocab_size=len(tokenizer),
            **spec.text_sizes(),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        audio_token_index=audio_id,
    )
    # A private RNG stream: building the model must not move the caller's global RNG, or whatever is
    # initialised next (LoRA) would differ between a run that built the cache and one that found it.
    with torch.random.fork_rng():
        torch.manual_seed(spec.seed)
        model = Qwen2AudioForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    processor = Qwen2AudioProcessor(
        feature_extractor=WhisperFeatureExtractor(
            feature_size=spec.num_mel_bins, chunk_length=spec.chunk_length
        ),
        tokenizer=tokenizer,
    )

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)

    return write_checkpoint(out_dir, spec, write)


def write_checkpoint(out_dir: Path, spec: TinySpec, write) -> Path:
    """`write(tmp)` fills a temporary directory next to `out_dir`, which then becomes `out_dir` in one rename
    (with `tiny_spec.json` beside what `write` wrote), so a killed build never leaves a half checkpoint."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        write(tmp)
        (tmp / "tiny_spec.json").write_text(json.dumps(asdict(spec), indent=2))
        try:
            os.replace(tmp, out_dir)
        except OSError:  # another process built it first: theirs is as good as ours
            if not (out_dir / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir

"""The audio + text half of a multimodal processor: a tokenizer and a Whisper feature extractor.

`ambig` writes the chat prompt itself (ambig.model.prompt) and expands the audio placeholder itself
(ambig.model.inputs), so of a processor it uses only the tokenizer, the feature extractor and the name of the
audio placeholder token. Qwen2.5-Omni's own `Qwen2_5OmniProcessor` cannot be built without torchvision (its
video processor, `Qwen2VLVideoProcessor`, requires it, also when no video is ever passed), and its audio
path is what this object and the batch builder do: Whisper features padded to the extractor's window, and
<|AUDIO|> repeated once per audio-encoder output frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path


@dataclass
class AudioTextProcessor:
    tokenizer: object
    feature_extractor: object
    audio_token: str

    def __post_init__(self):
        ids = self.tokenizer(self.audio_token, add_special_tokens=False).input_ids
        if len(ids) != 1 or ids[0] == self.tokenizer.unk_token_id:
            raise ValueError(
                f"the tokenizer does not hold the audio placeholder {self.audio_token!r} as one token "
                f"(it gives {ids}): this is not the tokenizer of an audio-language model of this family"
            )

    @classmethod
    def from_pretrained(cls, source: str | Path, *, audio_token: str, max_seconds: float | None = None):
        """The tokenizer and the Whisper feature extractor of a checkpoint (hub id or directory).

        With `max_seconds` shorter than the extractor's window (Qwen2.5-Omni ships a 300 s window), features
        are padded to `max_seconds` instead: the same values on every frame of a clip of at most that length
        (padding is silence, which moves neither the frames nor the log-mel floor), ten times less memory.
        """
        from transformers import AutoTokenizer, WhisperFeatureExtractor

        tokenizer = AutoTokenizer.from_pretrained(source)
        extractor = WhisperFeatureExtractor.from_pretrained(source)
        if max_seconds is not None and max_seconds < extractor.chunk_length:
            extractor = with_window(extractor, max_seconds)
        return cls(tokenizer, extractor, audio_token)

    def save_pretrained(self, out_dir: str | Path) -> None:
        self.tokenizer.save_pretrained(out_dir)
        self.feature_extractor.save_pretrained(out_dir)


def with_window(extractor, seconds: float):
    """A copy of a WhisperFeatureExtractor whose window (padding and cut) is `seconds`, rounded up to whole
    seconds, instead of its own."""
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(
        feature_size=extractor.feature_size,
        sampling_rate=extractor.sampling_rate,
        hop_length=extractor.hop_length,
        chunk_length=math.ceil(seconds),
        n_fft=extractor.n_fft,
        padding_value=extractor.padding_value,
        dither=extractor.dither,
        return_attention_mask=extractor.return_attention_mask,
    )

"""How a model family's audio reaches its forward: per-clip arrays, the audio tokens they fill, the batch.

Every family's processor turns a waveform into a few arrays (log-mels and a frame mask, or a family's own
features) and writes the audio placeholder into the prompt once per audio token. An `AudioFormat` does the
audio half of that with the processor's own feature extractor, one clip at a time, so the features can be
cached on disk (ambig.data.features) and the prompt expanded without running the processor on text
(ambig.model.inputs). Each format is tested against its processor: same arrays, same token count.

- `whisper_masked`: Qwen2-Audio, Qwen2.5-Omni's thinker, model=mini: Whisper log-mels
  padded to the extractor's window (`input_features` (n_mels, frames)) and the clip's frames
  (`feature_attention_mask` (frames,)); tokens = the encoder's two stride-2 stages.
- `whisper_frames`: Audio Flamingo 3: the same arrays, the mask named `input_features_mask`.
- `whisper_chunked`: Qwen3-Omni's thinker: the arrays of `whisper_masked`, tokens counted per 1 s chunk of
  100 frames (13 each) plus the rest's three stride-2 stages (`qwen3_omni_tokens`).

A clip is always padded to the family's fixed window, never to the longest clip of its batch: a clip's
arrays, and so its logits, do not depend on the batch it sits in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass(frozen=True)
class Features:
    """One clip's audio as its model family takes it.

    `arrays`: the forward's audio inputs for this clip (name -> array without the batch dimension);
    `n_tokens`: the audio placeholder tokens the prompt holds for it; `cut`: the clip was longer than the
    family's window and was cut to it.
    """

    arrays: dict[str, np.ndarray]
    n_tokens: int
    cut: bool = False

    def __post_init__(self):
        if self.n_tokens < 1:
            raise ValueError(f"a clip must fill at least one audio token, got {self.n_tokens}")


def whisper_tokens(n_frames: int) -> int:
    """Audio tokens a Whisper-style tower emits for `n_frames` mel frames: a stride-2 convolution, then
    Qwen2-Audio's stride-2 pooling (the count Qwen2-Audio's and the Omni thinkers' processors write)."""
    return (((n_frames - 1) // 2 + 1) - 2) // 2 + 1


def qwen3_omni_tokens(n_frames: int) -> int:
    """Audio tokens Qwen3-Omni's audio tower emits for `n_frames` mel frames: 13 per full chunk of 100 frames
    (its `n_window` of 50, doubled), and for the rest three stride-2 convolutions
    (`_get_feat_extract_output_lengths` in transformers' processing_qwen3_omni_moe.py, the count its processor
    writes)."""
    rest = n_frames % 100
    after_conv = (rest - 1) // 2 + 1
    return ((after_conv - 1) // 2 + 1 - 1) // 2 + 1 + (n_frames // 100) * 13


def _whisper(mask_key: str, count: Callable = whisper_tokens) -> Callable:
    """Whisper log-mels padded to the extractor's window and the clip's frame mask, under `mask_key`; the
    audio tokens `count(frames)`."""

    def extract(feature_extractor, wav: np.ndarray, sample_rate: int) -> Features:
        out = feature_extractor(
            wav,
            sampling_rate=sample_rate,
            return_attention_mask=True,
            padding="max_length",
            return_tensors="np",
        )
        mask = out["attention_mask"][0].astype(np.int64)
        arrays = {"input_features": out["input_features"][0].astype(np.float32), mask_key: mask}
        return Features(arrays, count(int(mask.sum())))

    return extract


def _chunk_seconds(feature_extractor) -> float:
    return float(feature_extractor.chunk_length)


@dataclass(frozen=True)
class AudioFormat:
    """A family's audio inputs: `keys` (the forward's keyword arguments, in order), `extract` (feature
    extractor, waveform, sample rate) -> Features, `window_seconds` (feature extractor) -> the longest clip
    one window holds, `extractor` (processor) -> the processor's feature extractor."""

    name: str
    keys: tuple[str, ...]
    extract: Callable
    window_seconds: Callable = _chunk_seconds
    extractor: Callable = field(default=lambda processor: processor.feature_extractor)

    def collate(self, clips: Sequence[Features]) -> dict[str, torch.Tensor]:
        """The batch's audio: each key's arrays stacked along a new first dimension (one row per clip)."""
        out = {}
        for key in self.keys:
            arrays = [clip.arrays[key] for clip in clips]
            shapes = {a.shape for a in arrays}
            if len(shapes) != 1:
                raise ValueError(
                    f"audio input {key!r} has shapes {sorted(shapes)} across the batch: clips must be padded "
                    f"to the {self.name} window before batching"
                )
            out[key] = torch.from_numpy(np.stack(arrays))
        return out


WHISPER_MASKED = AudioFormat(
    name="whisper_masked",
    keys=("input_features", "feature_attention_mask"),
    extract=_whisper("feature_attention_mask"),
)
# Audio Flamingo 3: the same features and count, the mask under the name its processor gives it. A clip
# longer than one window would take one row per 30 s window (the processor's split); ambig cuts it to one.
WHISPER_FRAMES = AudioFormat(
    name="whisper_frames",
    keys=("input_features", "input_features_mask"),
    extract=_whisper("input_features_mask"),
)

# Qwen3-Omni's thinker: Qwen2.5-Omni's arrays, its own audio token count. Its processor pads a batch to the
# longest clip (not to a window); ambig pads every clip to the extractor's window, which the tower never
# reads past the clip's frames (`feature_attention_mask`).
WHISPER_CHUNKED = AudioFormat(
    name="whisper_chunked",
    keys=("input_features", "feature_attention_mask"),
    extract=_whisper("feature_attention_mask", qwen3_omni_tokens),
)

FORMATS = (WHISPER_MASKED, WHISPER_FRAMES, WHISPER_CHUNKED)
# every audio input name some family takes: how a batch without its `audio_keys` entry is read
ALL_AUDIO_KEYS = tuple(dict.fromkeys(k for f in FORMATS for k in f.keys))

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
- `voxtral_chunks`: Voxtral: Whisper log-mels of the clip padded to a whole 30 s chunk (`input_features`
  (n_mels, 3000), no mask: the encoder attends to the padding, as the release does), 375 tokens per chunk.
- `gemma3n_usm`: Gemma 3n: its own log-mels (`input_features` (frames, 128)) padded to the processor's
  30 s window and the valid frames (`input_features_mask` (frames,), bool); 188 tokens a clip, whatever its
  length.
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


def _voxtral_kwargs() -> dict:
    """VoxtralProcessor's audio defaults: clips padded to a multiple of `pad_to_multiple_of` samples (30 s),
    cut into rows of `max_source_positions` mel frames (3000)."""
    from transformers import VoxtralProcessor

    return dict(VoxtralProcessor.audio_kwargs)


def _voxtral_window(feature_extractor) -> float:
    kw = _voxtral_kwargs()
    return kw["pad_to_multiple_of"] / kw["sampling_rate"]


def _voxtral_extract(feature_extractor, wav: np.ndarray, sample_rate: int) -> Features:
    """VoxtralProcessor._retrieve_input_features for one clip of at most one chunk (a longer clip is cut to
    its first chunk: the processor would give it one row per chunk). Audio tokens: mistral-common's count,
    one per `sampling_rate / frame_rate` = 1280 samples of the padded clip (8 mel hops: the encoder's stride
    2, then 4 frames per token in the projector), so 375 per 30 s chunk whatever the clip's length."""
    kw = _voxtral_kwargs()
    chunk, frames = kw["pad_to_multiple_of"], kw["max_source_positions"]
    if sample_rate != kw["sampling_rate"]:
        raise ValueError(f"Voxtral takes {kw['sampling_rate']} Hz audio, got {sample_rate} Hz")
    cut = wav.shape[0] > chunk
    out = feature_extractor(
        wav[:chunk],
        sampling_rate=sample_rate,
        padding=True,
        truncation=False,
        pad_to_multiple_of=chunk,
        return_tensors="np",
    )
    features = out["input_features"].reshape(feature_extractor.feature_size, -1, frames)[:, 0]
    return Features({"input_features": features.astype(np.float32)}, frames // 8, cut)


VOXTRAL_CHUNKS = AudioFormat(
    name="voxtral_chunks",
    keys=("input_features",),
    extract=_voxtral_extract,
    window_seconds=_voxtral_window,
)


# Gemma 3n (ambig.model.gemma3n): its processor writes 188 audio tokens for every clip (Gemma3nProcessor
# `audio_seq_length`, Gemma3nConfig `audio_soft_tokens_per_image`: 30 s at 160 ms a token; the model fills
# the tokens a shorter clip leaves with a padding embedding). Its feature extractor pads a batch to its
# longest clip, and a clip's last frames, computed over that padding, are marked valid: so every clip is
# padded to the whole 30 s window here (`padding="max_length"`, the extractor's `max_length`), which makes
# its arrays, and its logits, independent of the batch.
GEMMA3N_AUDIO_TOKENS = 188
GEMMA3N_WINDOW_SECONDS = 30  # Gemma3nAudioFeatureExtractor's max_length 480000 samples at 16 kHz


def _gemma3n(feature_extractor, wav: np.ndarray, sample_rate: int) -> Features:
    if sample_rate != feature_extractor.sampling_rate:
        raise ValueError(
            f"Gemma 3n's feature extractor takes {feature_extractor.sampling_rate} Hz audio, "
            f"not {sample_rate} Hz"
        )
    out = feature_extractor(
        wav,
        padding="max_length",
        max_length=GEMMA3N_WINDOW_SECONDS * feature_extractor.sampling_rate,
        truncation=True,
        return_tensors="np",
    )
    arrays = {
        "input_features": out["input_features"][0].astype(np.float32),
        "input_features_mask": out["input_features_mask"][0].astype(bool),  # True = a frame of the clip
    }
    return Features(arrays, GEMMA3N_AUDIO_TOKENS)


GEMMA3N_USM = AudioFormat(
    name="gemma3n_usm",
    keys=("input_features", "input_features_mask"),
    extract=_gemma3n,
    window_seconds=lambda feature_extractor: GEMMA3N_WINDOW_SECONDS,
)


# Qwen3-Omni's thinker: Qwen2.5-Omni's arrays, its own audio token count. Its processor pads a batch to the
# longest clip (not to a window); ambig pads every clip to the extractor's window, which the tower never
# reads past the clip's frames (`feature_attention_mask`).
WHISPER_CHUNKED = AudioFormat(
    name="whisper_chunked",
    keys=("input_features", "feature_attention_mask"),
    extract=_whisper("feature_attention_mask", qwen3_omni_tokens),
)

FORMATS = (WHISPER_MASKED, WHISPER_FRAMES, WHISPER_CHUNKED, VOXTRAL_CHUNKS, GEMMA3N_USM)
# every audio input name some family takes: how a batch without its `audio_keys` entry is read
ALL_AUDIO_KEYS = tuple(dict.fromkeys(k for f in FORMATS for k in f.keys))

"""Audio features per clip (a family's arrays: ambig.model.audio_formats), computed once and cached on disk.

The cache key is the clip's bytes (sha256) plus every feature setting (the extractor's own config, the
sample rate, the length cap, the family's audio format and the entry's layout), so a cached array is
reused across epochs, folds and runs, and is never reused for a different file or different settings.
Entries are written atomically: a killed run leaves no truncated file behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from ambig.data.audio import load_audio
from ambig.model.audio_formats import WHISPER_MASKED, AudioFormat, Features

__all__ = ["FeatureStore", "Features", "extract", "settings_key"]


def extract(feature_extractor, wav: np.ndarray, sample_rate: int, audio_format: AudioFormat = WHISPER_MASKED):
    """Features of one waveform, exactly as the family's processor computes them (default: Qwen2-Audio's)."""
    return audio_format.extract(feature_extractor, wav, sample_rate)


def settings_key(
    feature_extractor, sample_rate: int, max_seconds: float, audio_format: AudioFormat = WHISPER_MASKED
) -> str:
    settings = {k: v for k, v in feature_extractor.to_dict().items() if k not in ("processor_class",)}
    settings.update(sample_rate=sample_rate, max_seconds=max_seconds)
    # the entry's layout: one array per input the family's forward takes, and its audio token count
    settings.update(audio_format=audio_format.name, keys=list(audio_format.keys), layout=2)
    blob = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class FeatureStore:
    """Audio file -> `Features`, through an on-disk cache when `cache_dir` is set."""

    def __init__(
        self,
        feature_extractor,
        *,
        sample_rate: int,
        max_seconds: float,
        cache_dir: str | Path | None,
        audio_format: AudioFormat = WHISPER_MASKED,
    ):
        self.feature_extractor = feature_extractor
        self.audio_format = audio_format
        self.sample_rate = sample_rate
        # The encoder sees at most the family's window; reading more would only be cut again.
        self.max_seconds = min(max_seconds, float(audio_format.window_seconds(feature_extractor)))
        key = settings_key(feature_extractor, sample_rate, self.max_seconds, audio_format)
        self.cache_dir = Path(cache_dir) / key if cache_dir else None
        self.hits = 0
        self.misses = 0

    def compute(self, path: str | Path) -> Features:
        wav = load_audio(path, self.sample_rate, max_seconds=None)
        limit = int(round(self.max_seconds * self.sample_rate))
        cut = wav.shape[0] > limit
        features = self.audio_format.extract(self.feature_extractor, wav[:limit], self.sample_rate)
        return Features(features.arrays, features.n_tokens, cut)

    def get(self, path: str | Path) -> Features:
        """Features of the clip at `path` (AudioError when it cannot be read)."""
        if self.cache_dir is None:
            self.misses += 1
            return self.compute(path)
        try:
            digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except OSError:
            return self.compute(path)  # raises the AudioError that names the problem
        entry = self.cache_dir / digest[:2] / f"{digest}.npz"
        if entry.exists():
            with np.load(entry) as data:
                self.hits += 1
                arrays = {k: data[k] for k in self.audio_format.keys}
                return Features(arrays, int(data["n_tokens"]), bool(data["cut"]))
        features = self.compute(path)
        self.misses += 1
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=entry.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez_compressed(fh, **features.arrays, n_tokens=features.n_tokens, cut=features.cut)
            os.replace(tmp, entry)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return features

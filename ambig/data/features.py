"""Log-mel features per clip, computed once and cached on disk.

The cache key is the clip's bytes (sha256) plus every feature setting (the extractor's own config, the
sample rate, the length cap), so a cached array is reused across epochs, folds and runs, and is never
reused for a different file or different settings. Entries are written atomically: a killed run leaves
no truncated file behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ambig.data.audio import load_audio


@dataclass(frozen=True)
class Features:
    """Whisper log-mel features of one clip, padded to the extractor's window, and its valid frames."""

    mel: np.ndarray  # (n_mels, frames) float32
    n_frames: int  # frames covered by the clip (the processor's feature_attention_mask sum)
    cut: bool = False  # the clip was longer than the window and was cut


def extract(feature_extractor, wav: np.ndarray, sample_rate: int) -> Features:
    """Features of one waveform, exactly as the Qwen2-Audio processor computes them."""
    out = feature_extractor(
        wav, sampling_rate=sample_rate, return_attention_mask=True, padding="max_length", return_tensors="np"
    )
    return Features(out["input_features"][0].astype(np.float32), int(out["attention_mask"][0].sum()))


def settings_key(feature_extractor, sample_rate: int, max_seconds: float) -> str:
    settings = {k: v for k, v in feature_extractor.to_dict().items() if k not in ("processor_class",)}
    settings.update(sample_rate=sample_rate, max_seconds=max_seconds)
    blob = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class FeatureStore:
    """Audio file -> `Features`, through an on-disk cache when `cache_dir` is set."""

    def __init__(
        self, feature_extractor, *, sample_rate: int, max_seconds: float, cache_dir: str | Path | None
    ):
        self.feature_extractor = feature_extractor
        self.sample_rate = sample_rate
        # The encoder sees at most the extractor's window; reading more would only be cut again.
        self.max_seconds = min(max_seconds, float(feature_extractor.chunk_length))
        self.cache_dir = (
            Path(cache_dir) / settings_key(feature_extractor, sample_rate, self.max_seconds)
            if cache_dir
            else None
        )
        self.hits = 0
        self.misses = 0

    def compute(self, path: str | Path) -> Features:
        wav = load_audio(path, self.sample_rate, max_seconds=None)
        limit = int(round(self.max_seconds * self.sample_rate))
        cut = wav.shape[0] > limit
        features = extract(self.feature_extractor, wav[:limit], self.sample_rate)
        return Features(features.mel, features.n_frames, cut)

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
                return Features(data["mel"], int(data["n_frames"]), bool(data["cut"]))
        features = self.compute(path)
        self.misses += 1
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=entry.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez_compressed(fh, mel=features.mel, n_frames=features.n_frames, cut=features.cut)
            os.replace(tmp, entry)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return features

"""Reading one audio file into the form every encoder here expects: mono float32 at 16 kHz.

Errors are raised as ``AudioError`` naming the file, so a bad clip in a corpus of thousands is found
from the message alone instead of surfacing later as a NaN loss.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

log = logging.getLogger(__name__)


class AudioError(ValueError):
    """A clip that cannot be used; the message names the path and why."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"audio file {self.path}: {reason}")


def load_audio(path: str | Path, target_sr: int = 16000, max_seconds: float | None = 30.0) -> np.ndarray:
    """Read ``path`` as mono float32 at ``target_sr``, keeping at most ``max_seconds``.

    Multichannel audio is averaged over channels; other rates are resampled with soxr. Clips longer than
    ``max_seconds`` are cut (with a warning) because the audio encoder has a fixed maximum context;
    ``max_seconds=None`` keeps the whole clip.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "file not found")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError, ... depending on the fault
        raise AudioError(path, f"unreadable ({exc})") from exc
    if data.shape[0] == 0:
        raise AudioError(path, "empty (zero samples)")
    wav = data.mean(axis=1, dtype=np.float32)
    finite = np.isfinite(wav)
    if not finite.any():
        raise AudioError(path, "no finite samples")
    if not finite.all():
        # A few bad samples (e.g. a float WAV with a glitch) should not poison the whole clip.
        log.warning("%s: %d non-finite samples set to 0", path, int((~finite).sum()))
        wav = np.where(finite, wav, 0.0).astype(np.float32)
    if sr != target_sr:
        wav = soxr.resample(wav, sr, target_sr).astype(np.float32, copy=False)
    limit = wav.shape[0] if max_seconds is None else int(round(max_seconds * target_sr))
    if wav.shape[0] > limit:
        log.warning("%s: %.1f s clip cut to %.1f s", path, wav.shape[0] / target_sr, max_seconds)
        wav = wav[:limit]
    return np.ascontiguousarray(wav, dtype=np.float32)

"""Measured prosodic cues of one clip, and words for them: the audio half of the template curator.

On real corpora the cues that generated a clip are unknown, so the template curator measures them. The
measures are deliberately simple (numpy/scipy only, a few milliseconds per clip) and robust rather than
precise; they only need to rank clips the way a listener would (louder, faster, higher, more varied).

Frames are 40 ms long with a 10 ms hop. A frame is *active* when its RMS level is above the energy gate:
``max(ABS_GATE_DB, ref - REL_GATE_DB)`` where ``ref`` is the 95th percentile of the clip's frame levels
(so the gate follows the recording level, but digital silence and a faint noise floor never count).

- ``rms_db``: level in dBFS of the mean power over active frames (whole clip when none is active,
  floored at ``DB_FLOOR``).
- ``pitch_hz`` / ``pitch_range_st``: median f0 over voiced frames, and the spread between the 10th and
  90th percentile f0 in semitones. f0 comes from the normalised cross-correlation (NCCF) of each active
  frame over lags for 60-500 Hz, computed with one batched FFT; a frame is voiced when its best NCCF
  peak exceeds ``VOICING_THRESHOLD``. The shortest-lag local peak within ``OCTAVE_TOLERANCE`` of the best
  one is taken (guards against picking a sub-harmonic), refined by parabolic interpolation.
- ``rate_hz``: syllable-like nuclei per second of active speech: peaks of the frame level (dB) with at
  least ``PEAK_PROMINENCE_DB`` prominence, ``PEAK_DISTANCE_S`` apart, on active frames; divided by the
  speech span (active frames plus internal gaps shorter than ``BRIDGE_GAP_S``).
- ``pause_share``: fraction of all frames below the gate (leading and trailing silence included).
- ``voiced_share``: fraction of active frames that are voiced.
- ``silent``: no active frame at all; pitch, range and rate are then NaN. ``clipped_share``: fraction of
  samples at or above ``CLIP_LEVEL`` in magnitude (reported, not corrected).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import fft as sp_fft
from scipy.signal import find_peaks

FRAME_S = 0.040
HOP_S = 0.010
F0_MIN, F0_MAX = 60.0, 500.0
VOICING_THRESHOLD = 0.5
OCTAVE_TOLERANCE = 0.9
ABS_GATE_DB = -60.0
REL_GATE_DB = 25.0
REF_PERCENTILE = 95.0
PEAK_PROMINENCE_DB = 3.0
PEAK_DISTANCE_S = 0.1
BRIDGE_GAP_S = 0.3
CLIP_LEVEL = 0.999
DB_FLOOR = -120.0
_TINY = 1e-12

NAN = float("nan")


@dataclass(frozen=True)
class AcousticCues:
    """Prosodic measures of one clip (see the module docstring for definitions)."""

    duration_s: float
    rms_db: float
    pitch_hz: float
    pitch_range_st: float
    rate_hz: float
    pause_share: float
    voiced_share: float
    silent: bool = False
    clipped_share: float = 0.0

    @property
    def has_pitch(self) -> bool:
        return math.isfinite(self.pitch_hz)


def _db(power: np.ndarray | float) -> np.ndarray:
    return np.maximum(10.0 * np.log10(np.asarray(power, dtype=np.float64) + _TINY), DB_FLOOR)


def _as_mono(wav: np.ndarray) -> np.ndarray:
    x = np.asarray(wav)
    if np.issubdtype(x.dtype, np.integer):
        x = x.astype(np.float64) / float(np.iinfo(x.dtype).max)
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 2:  # (samples, channels) as soundfile returns; channels-first if that axis is smaller
        x = x.mean(axis=1) if x.shape[0] >= x.shape[1] else x.mean(axis=0)
    elif x.ndim != 1:
        x = x.reshape(-1)
    return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


def _silent(duration: float, rms_db: float, frames: int, clipped: float) -> AcousticCues:
    return AcousticCues(
        duration_s=duration,
        rms_db=rms_db,
        pitch_hz=NAN,
        pitch_range_st=NAN,
        rate_hz=NAN,
        pause_share=1.0 if frames else NAN,
        voiced_share=0.0,
        silent=True,
        clipped_share=clipped,
    )


def _f0_track(frames: np.ndarray, sr: int) -> np.ndarray:
    """f0 in Hz per frame (NaN where unvoiced) from the NCCF over the 60-500 Hz lag range."""
    n_frames, length = frames.shape
    lag_lo = max(1, int(math.floor(sr / F0_MAX)) - 1)  # one lag either side so edge lags can be peaks
    lag_hi = int(math.ceil(sr / F0_MIN)) + 1
    # float32 halves the FFT cost; the NCCF only has to separate peaks, not be exact.
    x = (frames - frames.mean(axis=1, keepdims=True)).astype(np.float32)
    nfft = 1 << int(math.ceil(math.log2(length + lag_hi + 1)))
    spec = sp_fft.rfft(x, n=nfft, axis=1, workers=1)
    acf = sp_fft.irfft(spec.real**2 + spec.imag**2, n=nfft, axis=1, workers=1)[:, lag_lo : lag_hi + 1]
    cs = np.zeros((n_frames, length + 1), dtype=np.float32)
    np.cumsum(x * x, axis=1, out=cs[:, 1:])
    lags = np.arange(lag_lo, lag_hi + 1)
    valid = lags < length
    lags_c = np.minimum(lags, length)
    head = cs[:, length - lags_c]  # energy of x[0 : L - lag]
    tail = cs[:, [length]] - cs[:, lags_c]  # energy of x[lag : L]
    nccf = np.where(valid, acf / np.sqrt(head * tail + np.float32(_TINY)), np.float32(0.0))
    mid = nccf[:, 1:-1]
    peaks = (mid > nccf[:, :-2]) & (mid >= nccf[:, 2:])
    values = np.where(peaks, mid, -np.inf)
    best = values.max(axis=1)
    voiced = best > VOICING_THRESHOLD
    # Shortest-lag peak close to the best one: a periodic signal also peaks at 2, 3, ... periods.
    pick = np.argmax(values >= (OCTAVE_TOLERANCE * best)[:, None], axis=1)
    rows = np.arange(n_frames)
    a, b, c = nccf[rows, pick], nccf[rows, pick + 1], nccf[rows, pick + 2]
    denom = a - 2.0 * b + c
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = np.where(np.abs(denom) > _TINY, 0.5 * (a - c) / denom, 0.0)
    lag = lags[pick + 1] + np.clip(delta, -0.5, 0.5)
    f0 = np.clip(sr / lag, F0_MIN, F0_MAX)
    return np.where(voiced, f0, np.nan)


def _bridge(mask: np.ndarray, max_gap: int) -> np.ndarray:
    """``mask`` with internal runs of False no longer than ``max_gap`` frames set to True."""
    out = mask.copy()
    idx = np.flatnonzero(mask)
    if idx.size < 2:
        return out
    gaps = np.diff(idx) - 1
    for start, gap in zip(idx[:-1], gaps, strict=True):
        if 0 < gap <= max_gap:
            out[start + 1 : start + 1 + gap] = True
    return out


def measure(wav: np.ndarray, sr: int) -> AcousticCues:
    """Measure the prosodic cues of one clip (mono float in [-1, 1], any rate); never raises on content."""
    if sr <= 0:
        raise ValueError(f"sample rate must be positive, got {sr}")
    x = _as_mono(wav)
    n = x.shape[0]
    duration = n / sr
    clipped = float(np.mean(np.abs(x) >= CLIP_LEVEL)) if n else 0.0
    if n == 0:
        return _silent(0.0, DB_FLOOR, 0, 0.0)
    length = max(int(round(FRAME_S * sr)), 1)
    hop = max(int(round(HOP_S * sr)), 1)
    used = min(n, length)  # samples in a frame (a clip shorter than one frame is one zero-padded frame)
    if n < length:
        x = np.concatenate([x, np.zeros(length - n)])
    n_frames = 1 + (x.shape[0] - length) // hop
    cs = np.concatenate([[0.0], np.cumsum(x * x)])
    starts = np.arange(n_frames) * hop
    power = (cs[starts + length] - cs[starts]) / used
    level = _db(power)
    ref = float(np.percentile(level, REF_PERCENTILE))
    gate = max(ABS_GATE_DB, ref - REL_GATE_DB)
    active = level > gate
    if not active.any():
        return _silent(duration, float(_db(power.mean())), n_frames, clipped)

    rms_db = float(_db(power[active].mean()))
    pause_share = float(1.0 - active.mean())

    frames = np.lib.stride_tricks.sliding_window_view(x, length)[::hop][:n_frames][active]
    f0 = _f0_track(frames, sr)
    voiced_f0 = f0[np.isfinite(f0)]
    voiced_share = float(voiced_f0.size / frames.shape[0])
    if voiced_f0.size:
        pitch = float(np.median(voiced_f0))
        p10, p90 = np.percentile(voiced_f0, [10.0, 90.0])
        pitch_range = float(12.0 * np.log2(p90 / p10))
    else:
        pitch, pitch_range = NAN, NAN

    distance = max(1, int(round(PEAK_DISTANCE_S / HOP_S)))
    peaks, _ = find_peaks(level, prominence=PEAK_PROMINENCE_DB, distance=distance)
    n_peaks = int(active[peaks].sum()) if peaks.size else 0
    span = _bridge(active, int(round(BRIDGE_GAP_S / HOP_S)))
    speech_s = max(float(span.sum()) * HOP_S, used / sr)
    rate = n_peaks / speech_s

    return AcousticCues(
        duration_s=duration,
        rms_db=rms_db,
        pitch_hz=pitch,
        pitch_range_st=pitch_range,
        rate_hz=float(rate),
        pause_share=pause_share,
        voiced_share=voiced_share,
        silent=False,
        clipped_share=clipped,
    )


# ---------------------------------------------------------------------------------------------------------
# Words for the cues.
#
# Absolute thresholds (no speaker norm), chosen for 16 kHz speech corpora recorded around -35..-15 dBFS:
#   volume (rms_db, dBFS):      quiet < -25 <= moderate < -20 <= raised < -17.5 <= loud
#   speed (rate_hz, nuclei/s):  slow < 3.5 <= steady < 4.5 <= quick < 5.2 <= fast
#   pitch (pitch_hz):           low < 130 <= normal < 220 <= elevated < 290 <= high
#                               (sex-blind, so only a speaker norm makes pitch words fair to low voices)
#   tone (pitch_range_st):      flat < 2.5 <= varied < 5.5 <= wide-ranging
#   pauses (pause_share):       fluent < 0.45 <= hesitant
# (On the synthetic corpus these put the four emotions' typical clips on four different volume and speed
# words; real corpora should be curated with speaker norms, which make the words relative anyway.)
# Relative to a speaker norm (the speaker's mean cues), each dimension becomes z = (value - norm) / SPREAD
# with a fixed typical within-speaker spread, and z is cut at -1, 0.5, 1.5 (four-word scales: the
# speaker's own average reads "moderate", "steady", "normal"), at -1, 1 for tone and at 1 for pauses.
# A cue that could not be measured (NaN) reads "unclear".
# ---------------------------------------------------------------------------------------------------------

SCALES = {
    "volume": ("quiet", "moderate", "raised", "loud"),
    "speed": ("slow", "steady", "quick", "fast"),
    "pitch": ("low", "normal", "elevated", "high"),
    "tone": ("flat", "varied", "wide-ranging"),
    "pauses": ("fluent", "hesitant"),
}
UNCLEAR = "unclear"
ABSOLUTE_CUTS = {
    "volume": (-25.0, -20.0, -17.5),
    "speed": (3.5, 4.5, 5.2),
    "pitch": (130.0, 220.0, 290.0),
    "tone": (2.5, 5.5),
    "pauses": (0.45,),
}
# Typical within-speaker spread of each measure (dB, nuclei/s, semitones, semitones, share).
SPREAD = {"volume": 3.0, "speed": 0.8, "pitch": 2.0, "tone": 2.0, "pauses": 0.12}
RELATIVE_CUTS = {
    "volume": (-1.0, 0.5, 1.5),
    "speed": (-1.0, 0.5, 1.5),
    "pitch": (-1.0, 0.5, 1.5),
    "tone": (-1.0, 1.0),
    "pauses": (1.0,),
}


def _value(cues: AcousticCues, dim: str) -> float:
    return {
        "volume": cues.rms_db,
        "speed": cues.rate_hz,
        "pitch": cues.pitch_hz,
        "tone": cues.pitch_range_st,
        "pauses": cues.pause_share,
    }[dim]


def _cut(value: float, cuts: tuple[float, ...], words: tuple[str, ...]) -> str:
    return words[int(np.searchsorted(np.asarray(cuts), value, side="right"))]


def describe(cues: AcousticCues, speaker_norm: AcousticCues | None = None) -> dict[str, str]:
    """Words for volume, speed, pitch, tone and pauses; relative to ``speaker_norm`` where it is usable."""
    out: dict[str, str] = {}
    for dim, words in SCALES.items():
        value = _value(cues, dim)
        if dim == "volume" and cues.silent:
            out[dim] = "quiet"
            continue
        if not math.isfinite(value):
            out[dim] = UNCLEAR
            continue
        norm = _value(speaker_norm, dim) if speaker_norm is not None else NAN
        if math.isfinite(norm):
            if dim == "pitch":  # semitones from the speaker's usual pitch
                z = 12.0 * math.log2(max(value, _TINY) / max(norm, _TINY)) / SPREAD[dim]
            else:
                z = (value - norm) / SPREAD[dim]
            out[dim] = _cut(z, RELATIVE_CUTS[dim], words)
        else:
            out[dim] = _cut(value, ABSOLUTE_CUTS[dim], words)
    return out

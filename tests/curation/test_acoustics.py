"""Acoustic cue measurement on synthesised signals whose properties are known."""

import math
import time

import numpy as np
import pytest

from ambig.curation.acoustics import AcousticCues, describe, measure

SR = 16000


def harmonic(f0, seconds=4.0, amp=0.1, n_harmonics=8, sr=SR):
    """A harmonic complex (1/h amplitudes) following ``f0`` (scalar or per-sample array)."""
    n = int(round(seconds * sr))
    f0 = np.broadcast_to(np.asarray(f0, dtype=np.float64), (n,))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(h * phase) / h for h in range(1, n_harmonics + 1))
    return (amp * x / np.abs(x).max()).astype(np.float32)


def noise_floor(n, level=1e-3, seed=0):
    return (level * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


@pytest.mark.parametrize("f0", [80.0, 150.0, 250.0, 400.0])
def test_pitch_of_steady_tone(f0):
    cues = measure(harmonic(f0), SR)
    assert abs(cues.pitch_hz - f0) / f0 < 0.03
    assert cues.voiced_share > 0.9 and cues.pitch_range_st < 0.5 and not cues.silent


def test_pitch_range_of_glide():
    # 200 Hz held, an exponential glide to 300 Hz, 300 Hz held (a quarter, a half, a quarter): the 10th and
    # 90th percentile f0 are then the glide's end points, 12 * log2(300 / 200) = 7.02 semitones apart.
    n = 4 * SR
    track = np.concatenate(
        [np.full(n // 4, 200.0), np.geomspace(200.0, 300.0, n // 2), np.full(n - n // 4 - n // 2, 300.0)]
    )
    cues = measure(harmonic(track), SR)
    assert abs(cues.pitch_range_st - 12 * math.log2(1.5)) < 1.0
    assert 200 < cues.pitch_hz < 300


def test_louder_copy_is_12_db_up():
    x = harmonic(150.0, amp=0.05) + noise_floor(4 * SR)
    quiet, loud = measure(x, SR), measure(4 * x, SR)
    assert abs((loud.rms_db - quiet.rms_db) - 20 * math.log10(4)) < 0.5


def bursts(rate, seconds=4.0):
    t = np.arange(int(seconds * SR)) / SR
    envelope = 0.5 - 0.5 * np.cos(2 * np.pi * rate * t)  # one burst per 1 / rate, silent in between
    return (harmonic(150.0, seconds, amp=0.3) * envelope + noise_floor(t.size)).astype(np.float32)


def test_speaking_rate_proxy():
    slow, fast = measure(bursts(2.0), SR), measure(bursts(4.0), SR)
    assert fast.rate_hz > slow.rate_hz
    assert abs(slow.rate_hz - 2.0) / 2.0 < 0.25
    assert abs(fast.rate_hz - 4.0) / 4.0 < 0.25


def test_pause_share_of_half_silent_clip():
    x = harmonic(150.0) + noise_floor(4 * SR)
    x[: x.size // 2] = noise_floor(x.size // 2, seed=1)
    cues = measure(x, SR)
    assert abs(cues.pause_share - 0.5) < 0.1
    assert abs(measure(harmonic(150.0), SR).pause_share) < 0.05


@pytest.mark.parametrize("wav", [np.zeros(4 * SR), noise_floor(4 * SR, level=1e-6)], ids=["zeros", "hiss"])
def test_silent_clip_is_flagged_not_raised(wav):
    cues = measure(wav, SR)
    assert cues.silent and not cues.has_pitch
    assert math.isnan(cues.pitch_hz) and math.isnan(cues.pitch_range_st)
    assert cues.voiced_share == 0.0 and cues.pause_share == 1.0
    words = describe(cues)
    assert words["volume"] == "quiet" and words["pitch"] == "unclear"


@pytest.mark.parametrize("n", [0, 1, 10, 320, 800, 1599])
def test_very_short_clips_do_not_raise(n):
    cues = measure(harmonic(150.0, seconds=0.1)[:n], SR)
    assert isinstance(cues, AcousticCues)
    assert cues.duration_s == pytest.approx(n / SR)
    assert set(describe(cues)) == {"volume", "speed", "pitch", "tone", "pauses"}
    if n >= 800:  # 50 ms: still two 40 ms frames, pitch must be right
        assert abs(cues.pitch_hz - 150.0) < 4.5


def test_clipping_is_reported_and_tolerated():
    clipped = np.clip(30 * harmonic(150.0), -1.0, 1.0)
    cues = measure(clipped, SR)
    assert cues.clipped_share > 0.1
    assert abs(cues.pitch_hz - 150.0) < 4.5
    assert measure(harmonic(150.0), SR).clipped_share == 0.0


def test_odd_inputs():
    x = harmonic(150.0)
    as_int = measure((x * 32767).astype(np.int16), SR)
    assert abs(as_int.pitch_hz - 150.0) < 4.5 and abs(as_int.rms_db - measure(x, SR).rms_db) < 0.1
    stereo = measure(np.stack([x, x], axis=1), SR)
    assert abs(stereo.pitch_hz - 150.0) < 4.5
    broken = x.copy()
    broken[::100] = np.nan
    assert math.isfinite(measure(broken, SR).rms_db)
    other_rate = measure(harmonic(150.0, sr=8000), 8000)
    assert abs(other_rate.pitch_hz - 150.0) < 4.5
    with pytest.raises(ValueError):
        measure(x, 0)


def test_speed_of_measure():
    x = bursts(4.0)
    measure(x, SR)
    best = min(_timed(measure, x, SR) for _ in range(20))
    assert best < 0.020, f"measure took {best * 1000:.1f} ms on a 4 s clip"


def _timed(fn, *args):
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def cues_with(**kw):
    base = dict(
        duration_s=3.0,
        rms_db=-22.0,
        pitch_hz=180.0,
        pitch_range_st=4.0,
        rate_hz=4.0,
        pause_share=0.2,
        voiced_share=0.8,
    )
    return AcousticCues(**{**base, **kw})


def test_describe_absolute_words():
    assert describe(cues_with()) == {
        "volume": "moderate",
        "speed": "steady",
        "pitch": "normal",
        "tone": "varied",
        "pauses": "fluent",
    }
    loud = describe(cues_with(rms_db=-12.0, rate_hz=6.5, pitch_hz=320.0, pitch_range_st=9.0, pause_share=0.6))
    assert loud == {
        "volume": "loud",
        "speed": "fast",
        "pitch": "high",
        "tone": "wide-ranging",
        "pauses": "hesitant",
    }
    low = describe(cues_with(rms_db=-35.0, rate_hz=2.0, pitch_hz=100.0, pitch_range_st=1.0))
    assert (low["volume"], low["speed"], low["pitch"], low["tone"]) == ("quiet", "slow", "low", "flat")
    assert describe(cues_with(pitch_hz=float("nan"), pitch_range_st=float("nan")))["tone"] == "unclear"


def test_describe_relative_to_speaker_norm():
    loud_clip = cues_with(rms_db=-12.0, pitch_hz=150.0)
    assert describe(loud_clip)["volume"] == "loud"
    # A speaker who is always this loud: the same clip is their ordinary voice.
    assert describe(loud_clip, speaker_norm=loud_clip)["volume"] == "moderate"
    assert describe(loud_clip, speaker_norm=loud_clip)["pitch"] == "normal"
    # A quiet, low-voiced speaker: 150 Hz is high for him and -12 dBFS loud.
    quiet_norm = cues_with(rms_db=-30.0, pitch_hz=110.0)
    relative = describe(loud_clip, speaker_norm=quiet_norm)
    assert relative["volume"] == "loud" and relative["pitch"] == "high"
    assert describe(cues_with(rms_db=-35.0), speaker_norm=quiet_norm)["volume"] == "quiet"
    # A norm that could not be measured falls back to absolute words.
    unvoiced_norm = cues_with(pitch_hz=float("nan"))
    assert describe(cues_with(pitch_hz=320.0), speaker_norm=unvoiced_norm)["pitch"] == "high"

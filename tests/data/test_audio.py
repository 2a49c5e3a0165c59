"""load_audio: mono mixing, resampling, length cap and error reporting."""

import logging

import numpy as np
import pytest
import soundfile as sf

from ambig.data.audio import AudioError, load_audio


def sine(freq, seconds, sr):
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_stereo_is_mean_of_channels(tmp_path):
    left, right = sine(440, 0.5, 16000), 0.5 * sine(220, 0.5, 16000)
    path = tmp_path / "st.wav"
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    wav = load_audio(path)
    assert wav.dtype == np.float32 and wav.ndim == 1
    np.testing.assert_allclose(wav, (left + right) / 2, atol=1e-6)


def test_resample_length_and_frequency(tmp_path):
    path = tmp_path / "hi.wav"
    sf.write(path, sine(1000, 2.0, 44100), 44100, subtype="FLOAT")
    wav = load_audio(path, target_sr=16000)
    assert abs(len(wav) - 32000) <= 2
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    peak_hz = np.argmax(spectrum) * 16000 / len(wav)
    assert abs(peak_hz - 1000) < 2


def test_long_clip_is_cut_with_warning(tmp_path, caplog):
    path = tmp_path / "long.wav"
    sf.write(path, sine(300, 3.0, 16000), 16000)
    with caplog.at_level(logging.WARNING, logger="ambig.data.audio"):
        wav = load_audio(path, max_seconds=1.25)
    assert len(wav) == 20000
    assert "long.wav" in caplog.text


def test_missing_file(tmp_path):
    path = tmp_path / "nope.wav"
    with pytest.raises(AudioError, match="nope.wav"):
        load_audio(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="empty.wav.*empty"):
        load_audio(path)


def test_garbage_file(tmp_path):
    path = tmp_path / "garbage.wav"
    path.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(AudioError, match="garbage.wav") as info:
        load_audio(path)
    assert isinstance(info.value, ValueError)


def test_all_nan_file(tmp_path):
    path = tmp_path / "nan.wav"
    sf.write(path, np.full(100, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav"):
        load_audio(path)

"""Unit tests for fat/data/audio.py: `load(path, sr)` -> mono float32 at the requested rate, or AudioError."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from fat.data import audio
from fat.data.audio import AudioError


def _sine(freq, sr, dur, amp=0.5):
    t = np.arange(int(round(sr * dur))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(y, sr):
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    return np.fft.rfftfreq(len(y), 1 / sr)[np.argmax(spec)]


# ----------------------------------------------------------------------------- reading
def test_mono_int16_read_as_float(tmp_path):
    ints = np.array([0, 1, -1, 16384, -16384, 32767, -32768, 1234], dtype=np.int16)
    ints = np.tile(ints, 100)
    p = tmp_path / "m.wav"
    sf.write(str(p), ints, 22050, subtype="PCM_16")
    y = audio.load(p, 22050)
    assert y.dtype == np.float32 and y.ndim == 1 and y.flags.c_contiguous
    assert len(y) == len(ints)
    assert y.min() >= -1.0 and y.max() <= 1.0
    np.testing.assert_array_equal(y, ints.astype(np.float32) / 32768)
    assert y.min() == -1.0


def test_accepts_str_path(tmp_path):
    p = tmp_path / "m.wav"
    x = _sine(440, 8000, 0.2)
    sf.write(str(p), x, 8000, subtype="FLOAT")
    np.testing.assert_array_equal(audio.load(str(p), 8000), x)


def test_stereo_averaged_to_mono(tmp_path):
    sr = 22050
    left = _sine(440, sr, 0.5, 0.6)
    right = _sine(1000, sr, 0.5, 0.3)
    p = tmp_path / "s.wav"
    sf.write(str(p), np.stack([left, right], axis=1), sr, subtype="FLOAT")
    y = audio.load(p, sr)
    assert y.shape == (len(left),)
    np.testing.assert_allclose(y, (left + right) / 2, atol=1e-7)


def test_antiphase_stereo_cancels(tmp_path):
    sr = 16000
    x = _sine(300, sr, 0.25)
    p = tmp_path / "a.wav"
    sf.write(str(p), np.stack([x, -x], axis=1), sr, subtype="PCM_16")
    y = audio.load(p, sr)
    assert np.max(np.abs(y)) < 1e-4


def test_multichannel_averaged(tmp_path):
    sr = 16000
    chans = np.stack([np.full(800, v, dtype=np.float32) for v in (0.1, 0.2, 0.6, -0.1)], axis=1)
    p = tmp_path / "q.wav"
    sf.write(str(p), chans, sr, subtype="FLOAT")
    y = audio.load(p, sr)
    np.testing.assert_allclose(y, np.full(800, 0.2), atol=1e-6)


# ----------------------------------------------------------------------------- resampling
@pytest.mark.parametrize(
    "file_sr,target_sr,freq,dur",
    [
        (48000, 44100, 1000.0, 1.0),
        (48000, 22050, 3000.0, 1.0),
        (16000, 22050, 3000.0, 1.0),
        (16000, 44100, 440.0, 0.73),
        (44100, 22050, 5000.0, 0.5),
    ],
)
def test_resampled_length_and_frequency(tmp_path, file_sr, target_sr, freq, dur):
    x = _sine(freq, file_sr, dur)
    p = tmp_path / "r.wav"
    sf.write(str(p), x, file_sr, subtype="PCM_16")
    y = audio.load(p, target_sr)
    assert y.dtype == np.float32 and y.ndim == 1
    expected = len(x) * target_sr / file_sr
    assert abs(len(y) - expected) <= 1, f"{len(y)} samples, expected {expected}"
    bin_hz = target_sr / len(y)
    assert abs(_peak_hz(y, target_sr) - freq) <= 1.5 * bin_hz
    # amplitude preserved away from the edges (a 0.5-amplitude sine has rms 0.5/sqrt(2))
    mid = y[len(y) // 10 : -len(y) // 10]
    assert np.sqrt(np.mean(mid**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


def test_downsampling_removes_content_above_new_nyquist(tmp_path):
    file_sr, target_sr = 48000, 16000
    x = _sine(500, file_sr, 1.0, 0.3) + _sine(12000, file_sr, 1.0, 0.3)  # 12 kHz > 8 kHz Nyquist
    p = tmp_path / "alias.wav"
    sf.write(str(p), x, file_sr, subtype="FLOAT")
    y = audio.load(p, target_sr)
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    f = np.fft.rfftfreq(len(y), 1 / target_sr)
    tone = spec[np.abs(f - 500) < 5].max()
    alias = spec[np.abs(f - 4000) < 20].max()  # 12 kHz would alias to 16 - 12 = 4 kHz
    assert alias < 1e-3 * tone


# ----------------------------------------------------------------------------- bit depths
@pytest.mark.parametrize(
    "subtype,atol",
    [("PCM_U8", 1 / 128 + 1e-6), ("PCM_16", 1 / 32768 + 1e-7), ("PCM_24", 2e-7), ("PCM_32", 1e-7), ("FLOAT", 0.0)],
)
def test_bit_depths(tmp_path, subtype, atol):
    sr = 22050
    x = _sine(440, sr, 0.3, 0.8)
    p = tmp_path / f"{subtype}.wav"
    sf.write(str(p), x, sr, subtype=subtype)
    assert sf.info(str(p)).subtype == subtype
    y = audio.load(p, sr)
    assert y.dtype == np.float32 and len(y) == len(x)
    np.testing.assert_allclose(y, x, atol=atol, rtol=0)
    assert np.abs(y).max() <= 1.0


# ----------------------------------------------------------------------------- errors
def _assert_audio_error(p: Path, sr: int = 22050, match: str | None = None):
    with pytest.raises(AudioError) as e:
        audio.load(p, sr)
    assert str(p) in str(e.value), f"message does not name the file: {e.value}"
    if match:
        assert match in str(e.value)
    assert isinstance(e.value, ValueError)
    return e.value


def _good_wav(tmp_path, name="good.wav", n=4000, sr=22050) -> Path:
    p = tmp_path / name
    sf.write(str(p), _sine(440, sr, n / sr), sr, subtype="PCM_16")
    return p


def test_error_truncated_header(tmp_path):
    raw = _good_wav(tmp_path).read_bytes()
    p = tmp_path / "trunc.wav"
    p.write_bytes(raw[:20])  # cut inside the fmt chunk
    _assert_audio_error(p)


def test_error_corrupt_bytes(tmp_path):
    raw = bytearray(_good_wav(tmp_path).read_bytes())
    raw[0:4] = b"JUNK"  # not a RIFF header any more
    p = tmp_path / "corrupt.wav"
    p.write_bytes(bytes(raw))
    _assert_audio_error(p)


def test_error_random_bytes(tmp_path):
    p = tmp_path / "noise.wav"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    _assert_audio_error(p)


def test_error_truncated_data(tmp_path):
    raw = _good_wav(tmp_path, n=4000).read_bytes()  # 44-byte header + 8000 data bytes
    p = tmp_path / "trunc_data.wav"
    p.write_bytes(raw[: len(raw) // 2])
    _assert_audio_error(p)


def test_error_zero_length(tmp_path):
    p = tmp_path / "empty.wav"
    sf.write(str(p), np.zeros(0, dtype=np.float32), 22050, subtype="PCM_16")
    assert sf.info(str(p)).frames == 0
    _assert_audio_error(p, match="no samples")


def test_error_empty_file(tmp_path):
    p = tmp_path / "zero_bytes.wav"
    p.write_bytes(b"")
    _assert_audio_error(p)


def test_error_non_audio_file(tmp_path):
    p = tmp_path / "notes.wav"
    p.write_text("fname,labels\nthis is not audio,Bark\n" * 20)
    _assert_audio_error(p)


def test_error_missing_file(tmp_path):
    _assert_audio_error(tmp_path / "missing.wav")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_error_non_finite_float_samples(tmp_path, bad):
    x = _sine(440, 22050, 0.1)
    x[100] = bad
    p = tmp_path / "nan.wav"
    sf.write(str(p), x, 22050, subtype="FLOAT")
    _assert_audio_error(p, match="NaN")


def test_nan_detected_before_resampling(tmp_path):
    x = _sine(440, 48000, 0.1)
    x[-1] = np.nan
    p = tmp_path / "nan48.wav"
    sf.write(str(p), x, 48000, subtype="FLOAT")
    _assert_audio_error(p, sr=22050)

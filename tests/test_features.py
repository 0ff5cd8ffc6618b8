"""Unit tests for fat/features/ (logmel, extract, store): log-mel parity with librosa and the packed feature store."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import librosa
import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from fat.data import audio
from fat.data.audio import AudioError
from fat.features import extract, logmel
from fat.features.store import FeatureStore, StoreWriter
from fat.params import Audio, Features


def _reference(y, sr, *, n_fft, hop_length, n_mels, fmin, fmax, top_db=None):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "n_fft=.* is too large", UserWarning)  # clips shorter than n_fft
        mel = librosa.feature.melspectrogram(
            y=y, sr=sr, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, fmin=fmin, fmax=fmax, power=2.0
        )
    return librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=top_db)


def _signal(sr, dur, seed=0, dtype=np.float32):
    """Tones, a chirp, noise and a stretch of digital silence (so -100 dB bins occur too)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * dur)) / sr
    y = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 3000 * t)
    y += 0.2 * np.sin(2 * np.pi * (200 + 2000 * t) * t)
    y += 0.02 * rng.standard_normal(len(t))
    y[len(y) // 3 : len(y) // 2] = 0.0
    return y.astype(dtype)


PARAMS = [
    dict(sr=44100, n_fft=2048, hop_length=512, n_mels=128, fmin=0.0, fmax=22050.0),
    dict(sr=44100, n_fft=2048, hop_length=512, n_mels=128, fmin=20.0, fmax=None),
    dict(sr=22050, n_fft=1024, hop_length=256, n_mels=64, fmin=20.0, fmax=11025.0),
    dict(sr=16000, n_fft=512, hop_length=160, n_mels=40, fmin=50.0, fmax=7000.0),
]


# ----------------------------------------------------------------------------- log_mel
@pytest.mark.parametrize("p", PARAMS, ids=lambda p: f"{p['sr']}-{p['n_fft']}-{p['hop_length']}-{p['n_mels']}")
def test_log_mel_matches_librosa(p):
    p = dict(p)
    sr = p.pop("sr")
    y = _signal(sr, 1.3)
    got = logmel.log_mel(y, sr, **p)
    ref = _reference(y, sr, **p)
    assert got.dtype == np.float32
    assert got.shape == (p["n_mels"], 1 + len(y) // p["hop_length"])
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-3
    assert got.min() >= -100.0 - 1e-3  # amin 1e-10 floor, no top_db
    assert np.isclose(got.min(), -100.0, atol=1e-3)  # the silent stretch hits the floor


def _zoo(sr, seed=0):
    """Signals that stress the definition: tones far from bin centres (their sidelobes sit 100+ dB
    below the peak, where a float32 FFT's rounding noise alone is off by up to ~1 dB), a chirp,
    noise, DC, clicks, digital silence, 16-bit quantisation, and lengths around n_fft and the hop."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(3.1 * sr)) / sr  # > 128 frames at every hop below: several FFT chunks, a partial block
    tone = 0.9 * np.sin(2 * np.pi * 3000.3 * t)
    return {
        "tone": tone,
        "quiet_tone": 1e-3 * np.sin(2 * np.pi * 440.0 * t),
        "tone_pcm16": np.round(tone * 32767) / 32767,
        "chirp": 0.5 * np.sin(2 * np.pi * (100 + 2000 * t) * t),
        "noise": 0.1 * rng.standard_normal(len(t)),
        "dc": 0.5 + 1e-4 * rng.standard_normal(sr),
        "clicks": (np.arange(sr) % 5000 == 0).astype(float),
        "silence": np.zeros(5000),
        "tone_then_silence": np.where(t < 1.0, tone, 0.0),
        "one_sample": np.array([0.5]),
        "shorter_than_n_fft": 0.3 * rng.standard_normal(100),
    }


ZOO_PARAMS = [  # (sr, n_fft, hop, n_mels, fmin, fmax)
    (44100, 2048, 512, 128, 0.0, 22050.0),  # the speed target
    (44100, 2560, 690, 128, 20.0, 22050.0),  # the fat2019 preset
    (22050, 1024, 512, 64, 20.0, 11025.0),  # the default params
    (16000, 1025, 300, 40, 50.0, 7000.0),  # odd n_fft, hop not dividing it, fmax below Nyquist
]


@pytest.mark.parametrize("sr,n_fft,hop,n_mels,fmin,fmax,dtype", [p + (np.float32,) for p in ZOO_PARAMS]
                         + [p + (np.float64,) for p in ZOO_PARAMS[2:]], ids=lambda v: str(v))
def test_log_mel_matches_librosa_on_hard_signals(sr, n_fft, hop, n_mels, fmin, fmax, dtype):
    kw = dict(n_fft=n_fft, hop_length=hop, n_mels=n_mels, fmin=fmin, fmax=fmax)
    for name, y in _zoo(sr).items():
        y = y.astype(dtype)
        ref = _reference(y, sr, **kw)
        got = logmel.log_mel(y, sr, **kw)
        assert got.dtype == np.float32 and got.shape == ref.shape == (n_mels, logmel.n_frames(len(y), n_fft, hop)), name
        assert np.abs(got - ref).max() <= 1e-3, name
        frames = logmel.log_mel_frames(y, sr, **kw)
        assert frames.flags.c_contiguous and np.array_equal(frames, got.T), name
    silent = logmel.log_mel(np.zeros(3000, dtype), sr, **kw)
    np.testing.assert_allclose(silent, -100.0, atol=1e-4)  # the amin floor


@pytest.mark.parametrize("top_db", [80.0, 35.0, 0.0])
def test_top_db_floor_matches_librosa(top_db):
    """`top_db` floors each clip at its own maximum minus top_db, as librosa.power_to_db does: digital
    silence (here the second half of a tone) rises from the -100 dB power floor to that level."""
    sr, kw = 22050, dict(n_fft=1024, hop_length=512, n_mels=64, fmin=20.0, fmax=11025.0)
    for name, y in _zoo(sr).items():
        ref = _reference(y, sr, **kw, top_db=top_db)
        got = logmel.log_mel(y, sr, **kw, top_db=top_db)
        assert np.abs(got - ref).max() <= 1e-3, name
        assert np.array_equal(logmel.log_mel_frames(y, sr, **kw, top_db=top_db), got.T), name
        assert got.min() >= got.max() - top_db - 1e-4, name
    y = _zoo(sr)["tone_then_silence"]
    plain = logmel.log_mel(y, sr, **kw)
    floored = logmel.log_mel(y, sr, **kw, top_db=top_db)
    assert plain.min() == pytest.approx(-100.0, abs=1e-3)  # without the floor the silence sits at amin
    assert floored.min() == pytest.approx(plain.max() - top_db, abs=1e-4)
    loud = plain >= plain.max() - top_db
    assert np.array_equal(floored[loud], plain[loud])  # nothing above the floor moves


def test_top_db_must_not_be_negative():
    with pytest.raises(ValueError, match="top_db"):
        logmel.log_mel(np.ones(2048), 22050, n_fft=1024, hop_length=512, n_mels=64, fmin=20.0, fmax=None,
                       top_db=-1.0)


@pytest.mark.parametrize("sr,n_fft,hop,n_mels,fmin,fmax", ZOO_PARAMS[:2], ids=lambda v: str(v))
def test_torch_path_matches_librosa(sr, n_fft, hop, n_mels, fmin, fmax):
    """The CUDA path (plain torch ops) is checked here on the CPU."""
    kw = dict(n_fft=n_fft, hop_length=hop, n_mels=n_mels, fmin=fmin, fmax=fmax)
    bank = logmel.mel_bank(sr, n_fft, n_mels, fmin, fmax)
    for name, y in _zoo(sr, seed=1).items():
        y = y.astype(np.float32)
        got = logmel._mel_frames_torch(y, bank, n_fft, hop, "cpu").T
        assert np.abs(got - _reference(y, sr, **kw)).max() <= 1e-3, name


@pytest.mark.parametrize("n_fft,hop,n_mels", [(2, 1, 1), (3, 1, 1), (4, 2, 2), (5, 2, 2), (16, 4, 4)])
def test_log_mel_tiny_n_fft_matches_librosa(n_fft, hop, n_mels):
    """The kernel's edge bins (0 and the last, whose neighbours are mirrored) when they are most
    of the spectrum."""
    kw = dict(n_fft=n_fft, hop_length=hop, n_mels=n_mels, fmin=0.0, fmax=4000.0)
    y = np.random.default_rng(n_fft).standard_normal(50).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # librosa warns about empty filters
        ref = _reference(y, 8000, **kw)
        got = logmel.log_mel(y, 8000, **kw)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-3
    if n_fft > 2:  # (at n_fft 2 the one band has zero weight on both bins, in librosa too)
        assert (got > -99.0).any()  # not just the floor: real power reached the bands


def test_log_mel_with_empty_mel_bands_matches_librosa():
    """More mel bands than the FFT bins can fill: librosa leaves a band empty (-100 dB); so do we."""
    kw = dict(n_fft=256, hop_length=128, n_mels=96, fmin=0.0, fmax=8000.0)
    y = _signal(16000, 0.7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # librosa may warn about the empty filters
        ref = _reference(y, 16000, **kw)
        got = logmel.log_mel(y, 16000, **kw)
    assert np.isclose(ref, -100.0, atol=1e-4).all(axis=1).any()
    assert np.abs(got - ref).max() <= 1e-3


@pytest.mark.parametrize("y,match", [
    (np.zeros((2, 100), np.float32), "mono"),
    (np.zeros(100, np.int16), "floating-point"),
    (np.zeros(0, np.float32), "empty"),
    (np.array([0.0, np.nan, 0.0], np.float32), "NaN"),
])
def test_log_mel_rejects_bad_signals(y, match):
    with pytest.raises(ValueError, match=match):
        logmel.log_mel(y, 22050, n_fft=1024, hop_length=512, n_mels=64, fmin=0.0, fmax=11025.0)


def test_log_mel_is_db_of_power():
    """A 6 dB louder signal gives log-mels 20*log10(2) dB higher (power, ref 1.0)."""
    sr = 22050
    y = _signal(sr, 0.5, seed=1)
    y[len(y) // 3 : len(y) // 2] = 0.01  # no silent bins
    kw = dict(n_fft=1024, hop_length=256, n_mels=64, fmin=20.0, fmax=sr / 2)
    a = logmel.log_mel(y, sr, **kw)
    b = logmel.log_mel(2 * y, sr, **kw)
    loud = a > -60
    np.testing.assert_allclose((b - a)[loud], 20 * np.log10(2), atol=1e-3)


def test_log_mel_matches_librosa_for_float64_input():
    sr = 44100
    t = np.arange(sr) / sr
    y = 0.5 * np.sin(2 * np.pi * 440 * t)  # float64
    kw = dict(n_fft=2048, hop_length=512, n_mels=128, fmin=0.0, fmax=sr / 2)
    assert np.abs(logmel.log_mel(y, sr, **kw) - _reference(y, sr, **kw)).max() <= 1e-3


def test_log_mel_kwargs_from_the_audio_and_features_sections():
    kw = Features(n_fft=1024, hop_length=512, n_mels=64, fmin=20, fmax=None).log_mel_kwargs(Audio(sample_rate=22050))
    assert kw == dict(sr=22050, n_fft=1024, hop_length=512, n_mels=64, fmin=20.0, fmax=11025.0, top_db=80.0)
    off = Features(top_db=None).log_mel_kwargs(Audio(sample_rate=22050))
    assert "top_db" not in off  # no floor: the keyword is left out, as in stores written before it existed
    assert isinstance(kw["sr"], int) and isinstance(kw["fmin"], float) and isinstance(kw["fmax"], float)
    kw2 = Features(n_fft=2048, hop_length=512, n_mels=128, fmin=0, fmax=16000).log_mel_kwargs(Audio(sample_rate=44100))
    assert kw2["sr"] == 44100 and kw2["fmax"] == 16000.0
    kw3 = Features(n_fft=512, hop_length=160, n_mels=40, fmin=0).log_mel_kwargs(Audio(sample_rate=16000))
    assert kw3["fmax"] == 8000.0  # absent fmax behaves like null


# ----------------------------------------------------------------------------- store fixtures
KW = Features(n_fft=1024, hop_length=512, n_mels=64, fmin=20.0, fmax=None).log_mel_kwargs(Audio(sample_rate=22050))


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    """A handful of clips at different rates, channel counts, bit depths and lengths."""
    d = tmp_path_factory.mktemp("wavs")
    specs = [  # (name, file sr, duration, channels, subtype)
        ("00042.wav", 44100, 1.0, 1, "PCM_16"),
        ("b.wav", 48000, 0.5, 2, "PCM_16"),
        ("c.wav", 22050, 0.3, 1, "FLOAT"),
        ("d.wav", 16000, 2.0, 1, "PCM_24"),
        ("e.wav", 22050, 1.5, 1, "PCM_16"),
        ("f.wav", 22050, 0.05, 1, "PCM_16"),  # shorter than one FFT window
    ]
    paths = []
    for i, (name, sr, dur, ch, subtype) in enumerate(specs):
        y = _signal(sr, dur, seed=i) * 0.9
        if ch == 2:
            y = np.stack([y, np.roll(y, 7)], axis=1)
        sf.write(str(d / name), y, sr, subtype=subtype)
        paths.append(d / name)
    return paths


@pytest.fixture(scope="module")
def stores(wavs, tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    fnames = [p.name for p in wavs]
    out = {}
    for key, dtype, n_jobs in [("f16", "float16", 1), ("f16_par", "float16", 2), ("f32", "float32", 1)]:
        meta = extract.build_store(wavs, fnames, root / key, KW, dtype=dtype, n_jobs=n_jobs)
        out[key] = (root / key, meta)
    return out


def _leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


# ----------------------------------------------------------------------------- build_store / open
def test_build_store_writes_files_and_meta(stores, wavs):
    root, meta = stores["f16"]
    assert sorted(p.name for p in root.iterdir()) == ["index.csv", "mels.npy", "meta.json"]
    on_disk = json.loads((root / "meta.json").read_text())
    assert on_disk == meta
    assert meta["dtype"] == "float16" and meta["clips"] == len(wavs)
    for k, v in KW.items():
        assert meta[k] == v
    full = np.load(root / "mels.npy")  # a valid .npy file, readable without mmap too
    assert full.dtype == np.float16 and full.shape == (meta["frames"], KW["n_mels"])
    assert _leftovers(root.parent, root.name) == []


def test_build_store_independent_of_n_jobs(stores):
    a, b = stores["f16"][0], stores["f16_par"][0]
    for name in ("mels.npy", "index.csv", "meta.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_open_memory_maps_and_index_consistent(stores, wavs):
    root, meta = stores["f16"]
    st = FeatureStore.open(root)
    assert isinstance(st.mels, np.memmap)
    assert st.mels.dtype == np.float16
    assert len(st) == len(wavs) and st.n_mels == KW["n_mels"]
    assert st.fnames == [p.name for p in wavs]  # CSV order kept, "00042.wav" stays a string
    assert st.meta == meta
    assert st.offsets[0] == 0
    np.testing.assert_array_equal(st.offsets[1:], np.cumsum(st.lengths)[:-1])
    assert st.lengths.sum() == st.mels.shape[0] == meta["frames"]
    for i, p in enumerate(wavs):
        n = len(audio.load(p, KW["sr"]))
        assert st.lengths[i] == 1 + n // KW["hop_length"], p.name
        assert st.index["duration"][i] == pytest.approx(n / KW["sr"], abs=1e-4)


@pytest.mark.parametrize("key,atol,rtol", [("f16", 0.05, 1e-3), ("f32", 1e-4, 0)])
def test_clip_equals_log_mel_of_file(stores, wavs, key, atol, rtol):
    st = FeatureStore.open(stores[key][0])
    kw = {k: v for k, v in KW.items() if k != "sr"}
    for i, p in enumerate(wavs):
        ref = logmel.log_mel(audio.load(p, KW["sr"]), KW["sr"], **kw)
        got = st.clip(i)
        assert got.dtype == np.float32 and got.shape == ref.shape, p.name
        np.testing.assert_allclose(got, ref, atol=atol, rtol=rtol, err_msg=p.name)


def test_clip_crops(stores):
    st = FeatureStore.open(stores["f32"][0])
    i = 3  # the 2 s clip
    full = st.clip(i)
    np.testing.assert_array_equal(st.clip(i, start=10, length=20), full[:, 10:30])
    np.testing.assert_array_equal(st.clip(i, start=5), full[:, 5:])
    # a crop running past the end is cut at the clip's end, never into the next clip
    n = full.shape[1]
    np.testing.assert_array_equal(st.clip(i, start=n - 4, length=100), full[:, n - 4 :])


def test_position(stores, wavs):
    root = stores["f16"][0]
    st = FeatureStore.open(root)
    names = [p.name for p in wavs]
    np.testing.assert_array_equal(st.position(names), np.arange(len(names)))
    np.testing.assert_array_equal(st.position([names[4], names[0], names[4]]), [4, 0, 4])
    assert len(st.position([])) == 0
    with pytest.raises(KeyError) as e:
        st.position([names[0], "nope.wav"])
    assert str(root) in str(e.value) and "nope.wav" in str(e.value)


# ----------------------------------------------------------------------------- failures
@pytest.mark.parametrize("n_jobs", [1, 2])
def test_failing_clip_leaves_no_output(wavs, tmp_path, n_jobs):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEthis is not audio at all")
    paths = wavs[:2] + [bad] + wavs[2:]
    out = tmp_path / "feat" / "curated"
    with pytest.raises(AudioError) as e:
        extract.build_store(paths, [p.name for p in paths], out, KW, n_jobs=n_jobs)
    assert str(bad) in str(e.value)
    assert not out.exists()
    assert _leftovers(out.parent, out.name) == []


def test_failure_keeps_previous_store(wavs, tmp_path):
    out = tmp_path / "store"
    extract.build_store(wavs[:2], [p.name for p in wavs[:2]], out, KW, n_jobs=1)
    before = {n: (out / n).read_bytes() for n in ("mels.npy", "index.csv", "meta.json")}
    with pytest.raises(AudioError):
        extract.build_store([tmp_path / "missing.wav"], ["missing.wav"], out, KW, n_jobs=1)
    assert {n: (out / n).read_bytes() for n in before} == before


def test_empty_store(tmp_path):
    meta = extract.build_store([], [], tmp_path / "empty", KW, n_jobs=1)
    assert meta["clips"] == 0 and meta["frames"] == 0
    st = FeatureStore.open(tmp_path / "empty")
    assert len(st) == 0 and st.mels.shape == (0, KW["n_mels"]) and st.fnames == []


def test_build_store_length_mismatch(wavs, tmp_path):
    with pytest.raises(ValueError):
        extract.build_store(wavs[:2], ["a.wav"], tmp_path / "s", KW, n_jobs=1)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("missing", ["mels.npy", "index.csv", "meta.json"])
def test_open_missing_files(stores, tmp_path, missing):
    src = stores["f16"][0]
    d = tmp_path / "broken"
    d.mkdir()
    for name in ("mels.npy", "index.csv", "meta.json"):
        if name != missing:
            (d / name).write_bytes((src / name).read_bytes())
    with pytest.raises(FileNotFoundError) as e:
        FeatureStore.open(d)
    assert str(d / missing) in str(e.value)


def test_open_not_a_store(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        FeatureStore.open(tmp_path / "nothing")
    assert str(tmp_path / "nothing") in str(e.value)


def test_open_index_past_end(stores, tmp_path):
    src = stores["f16"][0]
    d = tmp_path / "bad_index"
    d.mkdir()
    for name in ("mels.npy", "meta.json"):
        (d / name).write_bytes((src / name).read_bytes())
    idx = pd.read_csv(src / "index.csv", dtype={"fname": str})
    idx.loc[len(idx) - 1, "length"] += 5
    idx.to_csv(d / "index.csv", index=False)
    with pytest.raises(ValueError, match="past the end"):
        FeatureStore.open(d)


# ----------------------------------------------------------------------------- the store writer
def test_store_writer_round_trip_and_streamed_frames(tmp_path):
    rng = np.random.default_rng(0)
    clips = [rng.normal(-40, 10, size=(n, 8)).astype(np.float32) for n in (5, 1, 12)]
    with StoreWriter(tmp_path / "a", 8, "float32") as w:
        for i, c in enumerate(clips):
            w.add(f"c{i}.wav", c, len(c) / 100)
        meta = w.close({"sr": 100})
    assert meta == {"sr": 100, "dtype": "float32", "clips": 3, "frames": 18}
    st = FeatureStore.open(tmp_path / "a")
    assert st.fnames == ["c0.wav", "c1.wav", "c2.wav"] and st.index["offset"].tolist() == [0, 5, 6]
    for i, c in enumerate(clips):
        np.testing.assert_array_equal(st.clip(i), c.T)
    with StoreWriter(tmp_path / "b", 8, "float32") as w:  # frames streamed in blocks, indexed after
        w.append(np.concatenate(clips[:2]))
        w.append(clips[2])
        for i, c in enumerate(clips):
            w.clip(f"c{i}.wav", len(c), len(c) / 100)
        w.close({"sr": 100})
    for name in ("mels.npy", "index.csv", "meta.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_store_writer_refuses_an_index_that_does_not_cover_the_frames(tmp_path):
    with StoreWriter(tmp_path / "s", 4) as w:
        w.append(np.zeros((6, 4), np.float32))
        w.clip("a.wav", 5, 0.05)
        with pytest.raises(ValueError, match="index covers 5 frames, 6 were written"):
            w.close()
    with StoreWriter(tmp_path / "t", 4) as w, pytest.raises(ValueError, match=r"expected \(n, 4\)"):
        w.add("a.wav", np.zeros((3, 5), np.float32), 0.03)

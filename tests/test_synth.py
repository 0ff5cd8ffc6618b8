"""Unit tests for fat/data/synth.py: the embedded FAT2019-like generator."""
from __future__ import annotations

import collections
from pathlib import Path

import librosa
import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from fat.data import synth

SR = 44100

TINY_CFG = {
    "sample_rate": SR,
    "n_classes": 6,
    "curated": {"n_clips": 20, "duration": [0.3, 2.0], "label_counts_p": [0.75, 0.2, 0.05]},
    "noisy": {
        "n_clips": 30,
        "duration": [0.5, 2.0],
        "long_share": 0.4,
        "label_counts_p": [0.75, 0.2, 0.05],
        "class_skew": 0.8,
        "snr_db": [0.0, 15.0],
        "label_noise": 0.35,
    },
    "test": {"n_clips": 15, "duration": [0.3, 2.0], "label_counts_p": [0.65, 0.27, 0.08]},
}
FOLDERS = {"curated": "train_curated", "noisy": "train_noisy", "test": "test"}
LABEL_CSVS = {"curated": "train_curated.csv", "noisy": "train_noisy.csv", "test": "test_labels.csv"}
ALL_CSVS = ["train_curated.csv", "train_noisy.csv", "test_labels.csv", "sample_submission.csv"]


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    """Three generations of the tiny cfg: seed 1 serial, seed 1 with two workers, seed 2 serial."""
    root = tmp_path_factory.mktemp("synth")
    out = {}
    for key, seed, n_jobs in [("a", 1, 1), ("a_par", 1, 2), ("b", 2, 1)]:
        d = root / key
        stats = synth.generate(d, TINY_CFG, seed=seed, n_jobs=n_jobs)
        out[key] = (d, stats)
    return out


def _all_files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- class models
@pytest.mark.parametrize("name", sorted(synth.CLASS_MODELS))
@pytest.mark.parametrize("dur", [0.3, 5.0])
def test_class_model_length_finite_not_silent(name, dur):
    n = int(round(dur * SR))
    model = synth.CLASS_MODELS[name]
    for seed in range(3):
        y = np.asarray(model(np.random.default_rng(seed), n, SR))
        assert y.ndim == 1 and y.shape == (n,), f"{name}: shape {y.shape}, expected ({n},)"
        assert np.isfinite(y).all(), f"{name}: non-finite samples"
        rms = float(np.sqrt(np.mean(y**2)))
        assert rms > 1e-3, f"{name} seed {seed} dur {dur}: practically silent (rms {rms:g})"
        # not a constant/DC signal either: there must be variation over time
        assert np.std(np.diff(y)) > 1e-5, f"{name}: no variation"


def test_class_models_depend_on_rng():
    n = int(0.5 * SR)
    for name, model in synth.CLASS_MODELS.items():
        a = model(np.random.default_rng(0), n, SR)
        a2 = model(np.random.default_rng(0), n, SR)
        b = model(np.random.default_rng(1), n, SR)
        np.testing.assert_array_equal(a, a2, err_msg=f"{name}: not deterministic for a fixed rng")
        assert not np.allclose(a, b), f"{name}: identical output for different rng seeds"


def _mean_log_mel(name: str, seed: int) -> np.ndarray:
    y = synth.CLASS_MODELS[name](np.random.default_rng(seed), SR, SR)
    y = y / (np.sqrt(np.mean(y**2)) + 1e-9)
    m = librosa.feature.melspectrogram(
        y=y.astype(np.float32), sr=SR, n_fft=2048, hop_length=512, n_mels=64, power=2.0
    )
    return librosa.power_to_db(m, ref=1.0, amin=1e-10, top_db=None).mean(axis=1)


@pytest.mark.parametrize(
    "a,b",
    [("Bass_drum", "Hi_hat"), ("Bird_chirp", "Engine"), ("Whistle", "Wind"), ("Siren", "Rain"), ("Speech", "Hi_hat")],
)
def test_classes_are_acoustically_distinct(a, b):
    """Mean log-mel spectra of two classes differ much more than two draws of one class."""
    A = [_mean_log_mel(a, s) for s in (0, 1)]
    B = [_mean_log_mel(b, s) for s in (0, 1)]

    def dist(x, y):
        return float(np.mean(np.abs(x - y)))

    within = max(dist(*A), dist(*B))
    between = min(dist(x, y) for x in A for y in B)
    assert between > 2.5 * within, f"{a} vs {b}: between {between:.1f} dB, within {within:.1f} dB"


# ----------------------------------------------------------------------------- class_names
def test_class_names_sorted_prefix_of_vocabulary():
    all_names = sorted(synth.CLASS_MODELS)
    assert synth.class_names(len(all_names)) == all_names
    assert synth.class_names(2) == all_names[:2]
    assert synth.class_names(6) == all_names[:6]


@pytest.mark.parametrize("n", [-1, 0, 1, len(synth.CLASS_MODELS) + 1, 100])
def test_class_names_out_of_range(n):
    with pytest.raises(ValueError, match="n_classes"):
        synth.class_names(n)


def test_generate_rejects_bad_n_classes(tmp_path):
    cfg = {**TINY_CFG, "n_classes": len(synth.CLASS_MODELS) + 1}
    with pytest.raises(ValueError, match="n_classes"):
        synth.generate(tmp_path / "raw", cfg, seed=0, n_jobs=1)


# ----------------------------------------------------------------------------- generate: layout
def test_generate_writes_fat2019_layout(gen):
    d, stats = gen["a"]
    names = synth.class_names(6)
    for csv in ALL_CSVS:
        assert (d / csv).is_file(), csv
    for folder in FOLDERS.values():
        assert (d / folder).is_dir(), folder

    sub = pd.read_csv(d / "sample_submission.csv", dtype={"fname": str})
    assert list(sub.columns) == ["fname"] + names
    assert names == sorted(names)
    assert len(sub) == TINY_CFG["test"]["n_clips"]

    for split, csv in LABEL_CSVS.items():
        df = pd.read_csv(d / csv, dtype=str, keep_default_na=False)
        assert list(df.columns) == ["fname", "labels"], csv
        assert len(df) == TINY_CFG[split]["n_clips"], csv
        assert df["fname"].is_unique, csv
        # wav folder holds exactly the CSV's files
        on_disk = sorted(p.name for p in (d / FOLDERS[split]).iterdir())
        assert on_disk == sorted(df["fname"]), csv
        for labs in df["labels"]:
            parts = labs.split(",")
            assert parts and all(parts), f"{csv}: empty label in {labs!r}"
            assert set(parts) <= set(names), f"{csv}: {labs!r} outside vocabulary"
            assert len(set(parts)) == len(parts), f"{csv}: duplicate label in {labs!r}"
        assert stats[split]["clips"] == len(df)

    test = pd.read_csv(d / "test_labels.csv", dtype=str)
    assert list(sub["fname"]) == list(test["fname"])
    assert (sub[names] == 0).all().all()


@pytest.mark.parametrize("split", ["curated", "noisy", "test"])
def test_generated_wavs_format_and_duration(gen, split):
    d, _ = gen["a"]
    lo, hi = TINY_CFG[split]["duration"]
    lo = max(lo, 0.3)  # the generator never makes clips shorter than 0.3 s
    durations = []
    for p in sorted((d / FOLDERS[split]).iterdir()):
        info = sf.info(str(p))
        assert info.format == "WAV" and info.subtype == "PCM_16", p.name
        assert info.samplerate == SR and info.channels == 1, p.name
        dur = info.frames / info.samplerate
        assert lo - 1 / SR <= dur <= hi + 1 / SR, f"{p.name}: {dur} s outside [{lo}, {hi}]"
        durations.append(dur)
        y, _ = sf.read(str(p))
        peak = float(np.max(np.abs(y)))
        assert 0.29 <= peak <= 0.91, f"{p.name}: peak {peak} (generator normalises to 0.3-0.9)"
    assert max(durations) - min(durations) > 0.2, "durations are not varied"
    if TINY_CFG[split].get("long_share"):
        assert any(abs(x - hi) < 1e-3 for x in durations), "no clip at the maximum duration despite long_share"


def test_generate_stats(gen):
    _, stats = gen["a"]
    assert stats["n_classes"] == 6 and stats["sample_rate"] == SR
    assert stats["curated"]["label_noise_share"] == 0.0
    assert stats["test"]["label_noise_share"] == 0.0
    assert stats["noisy"]["label_noise_share"] > 0.0
    assert sum(stats["noisy"]["label_noise_kinds"].values()) == round(
        stats["noisy"]["label_noise_share"] * TINY_CFG["noisy"]["n_clips"]
    )


# ----------------------------------------------------------------------------- generate: determinism
def test_generate_deterministic_across_runs(gen, tmp_path):
    a, _ = gen["a"]
    again = tmp_path / "again"
    synth.generate(again, TINY_CFG, seed=1, n_jobs=1)
    fa, fb = _all_files(a), _all_files(again)
    assert fa.keys() == fb.keys()
    diff = [k for k in fa if fa[k] != fb[k]]
    assert not diff, f"files differ between identical runs: {diff[:5]}"


def test_generate_independent_of_n_jobs(gen):
    fa, fb = _all_files(gen["a"][0]), _all_files(gen["a_par"][0])
    assert fa.keys() == fb.keys()
    diff = [k for k in fa if fa[k] != fb[k]]
    assert not diff, f"n_jobs=1 and n_jobs=2 differ: {diff[:5]}"
    assert gen["a"][1] == gen["a_par"][1]


def test_generate_different_seed_differs(gen):
    a, b = gen["a"][0], gen["b"][0]
    for csv in ALL_CSVS:
        assert (a / csv).read_bytes() != (b / csv).read_bytes(), csv
    fa = {p.name for p in (a / "train_curated").iterdir()}
    fb = {p.name for p in (b / "train_curated").iterdir()}
    assert not (fa & fb), "different seeds share file names"
    # the audio itself differs, not only the names
    ya, _ = sf.read(str(sorted((a / "train_curated").iterdir())[0]))
    yb, _ = sf.read(str(sorted((b / "train_curated").iterdir())[0]))
    assert len(ya) != len(yb) or not np.array_equal(ya, yb)


def test_clip_fname_depends_on_seed_split_index():
    names = {synth.clip_fname(s, sp, i) for s in (0, 1) for sp in synth.SPLITS for i in range(50)}
    assert len(names) == 2 * 3 * 50
    assert synth.clip_fname(3, "noisy", 7) == synth.clip_fname(3, "noisy", 7)
    assert all(n.endswith(".wav") for n in names)


# ----------------------------------------------------------------------------- make_clip: labels
N_CLIPS = 400


def _spec(split, **kw):
    base = dict(
        split=split, n_clips=N_CLIPS, duration=(0.3, 0.3), long_share=0.0,
        label_counts_p=(0.75, 0.2, 0.05), class_skew=0.0, snr_db=None, label_noise=0.0,
    )
    base.update(kw)
    return synth.SplitSpec(**base)


def test_noisy_label_noise_rate_and_kinds():
    rate = 0.35
    spec = _spec("noisy", class_skew=0.8, snr_db=(0.0, 15.0), label_noise=rate)
    kinds = collections.Counter()
    for i in range(N_CLIPS):
        y, observed, true, kind = synth.make_clip(spec, i, 7, 6, SR)
        assert y.dtype == np.float32 and np.isfinite(y).all()
        assert observed == sorted(set(observed)) and true == sorted(set(true))
        assert all(0 <= c < 6 for c in observed + true)
        kinds[kind] += 1
        o, t = set(observed), set(true)
        if kind == "":
            assert o == t
        elif kind == "wrong":
            assert len(o) == len(t) and len(o ^ t) == 2, (observed, true)
        elif kind == "missing":
            assert o < t and len(t) == len(o) + 1, (observed, true)
        elif kind == "extra":
            assert t < o and len(o) == len(t) + 1, (observed, true)
        else:
            pytest.fail(f"unknown noise kind {kind!r}")
    share = 1 - kinds[""] / N_CLIPS
    assert abs(share - rate) < 0.08, f"label noise share {share:.3f}, configured {rate}"
    for k in ("wrong", "missing", "extra"):
        assert kinds[k] > 0, f"no {k!r} label noise in {N_CLIPS} clips"
    assert kinds["wrong"] > kinds["missing"] and kinds["wrong"] > kinds["extra"]


@pytest.mark.parametrize("split", ["curated", "test"])
def test_clean_splits_have_no_label_noise(split):
    spec = _spec(split)
    for i in range(80):
        _, observed, true, kind = synth.make_clip(spec, i, 7, 6, SR)
        assert kind == ""
        assert observed == true


def test_multi_label_share_matches_label_counts_p():
    p = (0.6, 0.3, 0.1)
    spec = _spec("curated", label_counts_p=p)
    counts = collections.Counter(len(synth.make_clip(spec, i, 11, 6, SR)[2]) for i in range(N_CLIPS))
    assert set(counts) <= {1, 2, 3}
    for k, pk in enumerate(p, start=1):
        share = counts[k] / N_CLIPS
        assert abs(share - pk) < 0.07, f"P({k} labels) = {share:.3f}, configured {pk}"


def test_single_label_when_configured():
    spec = _spec("curated", label_counts_p=(1.0,))
    for i in range(50):
        _, observed, true, _ = synth.make_clip(spec, i, 0, 6, SR)
        assert len(observed) == len(true) == 1


def test_class_skew_imbalances_primary_labels():
    balanced = collections.Counter()
    skewed = collections.Counter()
    for i in range(200):
        balanced.update(synth.make_clip(_spec("curated", label_counts_p=(1.0,)), i, 5, 6, SR)[2])
        skewed.update(synth.make_clip(_spec("curated", label_counts_p=(1.0,), class_skew=2.0), i, 5, 6, SR)[2])
    assert max(balanced.values()) / 200 < 0.3  # uniform: ~1/6 each
    assert max(skewed.values()) / 200 > 0.4  # Zipf skew 2: top class ~ 0.67


def test_make_clip_deterministic_and_split_seeded():
    spec_c, spec_t = _spec("curated"), _spec("test")
    y1, o1, t1, _ = synth.make_clip(spec_c, 3, 42, 6, SR)
    y2, o2, t2, _ = synth.make_clip(spec_c, 3, 42, 6, SR)
    np.testing.assert_array_equal(y1, y2)
    assert (o1, t1) == (o2, t2)
    y3, *_ = synth.make_clip(spec_t, 3, 42, 6, SR)
    assert not np.array_equal(y1, y3)

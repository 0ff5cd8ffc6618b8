"""Tests for fat/evaluation/predict.py: window layout, clip-level prediction and test-time augmentation."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import soundfile as sf
import torch

from fat.evaluation import predict
from fat.features.extract import build_store
from fat.features.store import FeatureStore, StoreWriter
from fat.params import Model, Tta
from fat.training import models
from fat.training.augment import fit_length

N_MELS = 16
LENGTH = 16
CPU = torch.device("cpu")
# clip lengths in frames: tiled (short), several windows with a ragged last one, long
LENGTHS = [7, 40, 33, 3, 50, 21]
TTA = Tta(beta=0.5, overlap_step=0.5, shifts=(0.0, 0.5), masked=1)
MASK = {"freq_masks": 1, "freq_frac": 0.1, "time_masks": 1, "time_frac": 0.1}


def write_store(root, clips, dtype="float32"):
    """A feature store (fat.features.store's writer) from (n_mels, frames) arrays."""
    with StoreWriter(root, clips[0].shape[0], dtype) as w:
        for i, c in enumerate(clips):
            w.add(f"clip{i}.wav", c.T, c.shape[1] / 10)
        w.close()
    return FeatureStore.open(root)


def make_clip(rng, n):
    """Log-mel-like (N_MELS, n) clip whose level drifts over time, so windows score differently."""
    t, f = np.arange(n)[None, :], np.arange(N_MELS)[:, None]
    level = np.linspace(rng.uniform(-60, -10), rng.uniform(-60, -10), n)[None, :]
    wave = 25 * np.sin(rng.uniform(0.2, 1.0) * t + rng.uniform(0.1, 0.8) * f + rng.uniform(0, 6))
    return (level + wave + rng.normal(0, 4, size=(N_MELS, n))).astype(np.float32)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(0)
    return write_store(tmp_path_factory.mktemp("store") / "feat", [make_clip(rng, n) for n in LENGTHS])


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = models.build(Model(**{"base_channels": 4, "n_blocks": 2, "channels": ["mel", "delta"]}), n_classes=3,
                     n_mels=N_MELS)
    m.train()  # give BatchNorm non-default running statistics
    with torch.no_grad():
        for i in range(3):
            m(torch.randn(8, N_MELS, LENGTH, generator=torch.Generator().manual_seed(i)) * 8 - 30)
        m.head[4].weight.mul_(30)  # spread the outputs so differences between windows are visible
    return m.eval()


def hand_windows(n, length, step, offset=0):
    """Independent statement of the window layout (n > length): starts from `offset` in steps,
    plus a final window flush with the clip end; short clips: one tiled window at the phase."""
    if n <= length:
        return [offset % n]
    s, out = min(offset, n - length), []
    while s + length <= n:
        out.append(s)
        s += step
    if out[-1] + length != n:
        out.append(n - length)
    return out


def hand_predict(model, store, rows, length, step, offset=0):
    probs, logits = [], []
    with torch.no_grad():
        for r in rows:
            clip = store.clip(r)
            wins = np.stack([fit_length(clip, length, s) for s in hand_windows(clip.shape[1], length, step, offset)])
            lg = model(torch.from_numpy(wins)).double()
            probs.append(torch.sigmoid(lg).mean(0).numpy())
            logits.append(lg.mean(0).numpy())
    return np.array(probs), np.array(logits)


# --------------------------------------------------------------------------- window_starts


@pytest.mark.parametrize("n,length,step", [(100, 16, 16), (100, 16, 5), (33, 16, 16), (17, 16, 8), (64, 16, 16),
                                           (200, 30, 1), (101, 20, 20)])
def test_window_starts_cover_every_frame_of_long_clips(n, length, step):
    starts = predict.window_starts(n, length, step)
    assert starts[0] == 0
    assert starts[-1] + length == n  # last window flush with the clip end
    assert all(0 <= s <= n - length for s in starts)
    assert starts == sorted(set(starts))  # increasing, no duplicates
    covered = np.zeros(n, bool)
    for s in starts:
        covered[s : s + length] = True
    assert covered.all()
    assert all(b - a <= step for a, b in zip(starts, starts[1:]))  # regular steps (last one shorter)
    assert starts == hand_windows(n, length, step)


def test_window_starts_with_offset():
    assert predict.window_starts(100, 16, 16, offset=8) == [8, 24, 40, 56, 72, 84]
    assert predict.window_starts(20, 16, 8, offset=10) == [4]  # offset beyond the last start


@pytest.mark.parametrize("n", [1, 5, 15, 16])
def test_short_clip_gives_one_window(n):
    assert predict.window_starts(n, 16, 8) == [0]
    assert predict.window_starts(n, 16, 8, offset=3) == [3 % n]


@pytest.mark.parametrize("step", [0, -1, -16])
def test_window_starts_rejects_non_positive_step(step):
    with pytest.raises(ValueError, match="step"):
        predict.window_starts(100, 16, step)


# --------------------------------------------------------------------------- predict_windows / plain


def test_predict_plain_is_mean_of_window_sigmoids(model, store):
    rows = np.arange(len(store))
    got = predict.predict_plain(model, store, rows, LENGTH, device=CPU, batch_size=4)
    want, _ = hand_predict(model, store, rows, LENGTH, LENGTH)
    assert got.shape == (len(rows), 3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert ((got > 0) & (got < 1)).all()
    # the mean of sigmoids, not the sigmoid of the mean logit, for multi-window clips
    _, lg = predict.predict_windows(model, store, rows, LENGTH, LENGTH, device=CPU)
    assert not np.allclose(got[1], 1 / (1 + np.exp(-lg[1])), rtol=0, atol=1e-9)


def test_predict_windows_overlapping_and_shifted(model, store):
    rows = np.array([4, 0, 1])  # any order, any subset
    for step, offset in [(8, 0), (8, 4), (5, 2)]:
        p, lg = predict.predict_windows(model, store, rows, LENGTH, step, device=CPU, offset=offset)
        hp, hl = hand_predict(model, store, rows, LENGTH, step, offset)
        np.testing.assert_allclose(p, hp, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(lg, hl, rtol=1e-5, atol=1e-5)


def test_predict_is_independent_of_batch_size(model, store):
    rows = np.arange(len(store))
    ref = predict.predict_windows(model, store, rows, LENGTH, 8, device=CPU, batch_size=64)
    for bs in (1, 2, 3, 7):
        got = predict.predict_windows(model, store, rows, LENGTH, 8, device=CPU, batch_size=bs)
        np.testing.assert_allclose(got[0], ref[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got[1], ref[1], rtol=1e-5, atol=1e-5)


def test_predict_puts_model_in_eval_mode(model, store):
    model.train()
    try:
        a = predict.predict_plain(model, store, [0, 1], LENGTH, device=CPU)
        assert not model.training
        b = predict.predict_plain(model, store, [0, 1], LENGTH, device=CPU)
        np.testing.assert_array_equal(a, b)  # dropout off, BatchNorm statistics frozen
    finally:
        model.eval()


def test_predict_with_no_rows_raises(model, store):
    with pytest.raises(ValueError, match="no clips"):
        predict.predict_plain(model, store, [], LENGTH, device=CPU)


def test_predict_on_store_built_from_wav_files(tmp_path, model):
    sr, hop = 8000, 128
    rng = np.random.default_rng(1)
    paths, fnames = [], []
    for i, n_frames in enumerate([10, 40, 70]):
        y = (0.1 * rng.standard_normal(hop * (n_frames - 1))).astype(np.float32)
        paths.append(tmp_path / f"w{i}.wav")
        fnames.append(f"w{i}.wav")
        sf.write(paths[-1], y, sr)
    kw = {"sr": sr, "n_fft": 256, "hop_length": hop, "n_mels": N_MELS, "fmin": 20.0, "fmax": sr / 2}
    meta = build_store(paths, fnames, tmp_path / "feat", kw, dtype="float16", n_jobs=1)
    store = FeatureStore.open(tmp_path / "feat")
    assert meta["clips"] == 3 and store.lengths.tolist() == [10, 40, 70]
    rows = store.position(["w2.wav", "w0.wav"])
    got = predict.predict_plain(model, store, rows, LENGTH, device=CPU, batch_size=2)
    want, _ = hand_predict(model, store, rows, LENGTH, LENGTH)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- TTA


def test_tta_views_layout():
    views = predict.tta_views(LENGTH, TTA)
    assert views == [{"step": 8, "offset": 0, "masked": False}, {"step": 8, "offset": 4, "masked": False},
                     {"step": 8, "offset": 0, "masked": True, "i": 0}]


def test_predict_tta_beta_one_returns_plain(model, store):
    rows = np.arange(len(store))
    plain, tta = predict.predict_tta(model, store, rows, LENGTH, dataclasses.replace(TTA, beta=1.0), MASK, device=CPU,
                                     seed=0)
    np.testing.assert_array_equal(tta, plain)
    np.testing.assert_allclose(plain, predict.predict_plain(model, store, rows, LENGTH, device=CPU), rtol=1e-6)


def test_predict_tta_blends_plain_with_mean_of_views(model, store):
    rows = np.arange(len(store))
    plain, tta = predict.predict_tta(model, store, rows, LENGTH, TTA, MASK, device=CPU, seed=3, batch_size=5)
    _, views_only = predict.predict_tta(model, store, rows, LENGTH, dataclasses.replace(TTA, beta=0.0), MASK,
                                        device=CPU, seed=3,
                                        batch_size=5)
    np.testing.assert_allclose(tta, 0.5 * plain + 0.5 * views_only, rtol=1e-12, atol=1e-12)
    assert not np.allclose(tta, plain)

    # the unmasked views, computed by hand: overlapping windows (step 8) at phases 0 and 4
    _, unmasked = predict.predict_tta(model, store, rows, LENGTH, dataclasses.replace(TTA, beta=0.0, masked=0), MASK,
                                      device=CPU, seed=3)
    v0, _ = hand_predict(model, store, rows, LENGTH, 8, 0)
    v1, _ = hand_predict(model, store, rows, LENGTH, 8, 4)
    np.testing.assert_allclose(unmasked, (v0 + v1) / 2, rtol=1e-5, atol=1e-6)
    # the masked view is the third of three views and differs from the unmasked overlap view
    masked_view = 3 * views_only - (v0 + v1)
    assert not np.allclose(masked_view, v0, atol=1e-4)
    assert ((masked_view > -1e-5) & (masked_view < 1 + 1e-5)).all()


def test_predict_tta_is_deterministic_for_seed(model, store):
    rows = np.arange(len(store))
    a = predict.predict_tta(model, store, rows, LENGTH, TTA, MASK, device=CPU, seed=11, batch_size=4)
    b = predict.predict_tta(model, store, rows, LENGTH, TTA, MASK, device=CPU, seed=11, batch_size=4)
    c = predict.predict_tta(model, store, rows, LENGTH, dataclasses.replace(TTA, masked=2), {**MASK, "freq_frac": 0.5,
                            "time_frac": 0.5}, device=CPU, seed=12, batch_size=4)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], c[0])
    assert not np.allclose(a[1], c[1])


def test_predict_tta_without_views_returns_plain(model, store):
    plain, tta = predict.predict_tta(model, store, [0, 1], LENGTH, dataclasses.replace(TTA, shifts=[], masked=0), MASK,
                                     device=CPU, seed=0)
    np.testing.assert_array_equal(plain, tta)


def test_predict_tta_with_clip_of_exactly_window_length(tmp_path, model):
    """Regression: a clip of exactly `length` frames in a shifted view used to be cropped to
    length - offset frames, so its window could not be stacked with the others."""
    rng = np.random.default_rng(0)
    st = write_store(tmp_path / "feat", [make_clip(rng, n) for n in (LENGTH, 40)])
    plain, tta = predict.predict_tta(model, st, [0, 1], LENGTH, TTA, MASK, device=CPU, seed=0)
    assert np.isfinite(tta).all()
    _, unmasked = predict.predict_tta(model, st, [0, 1], LENGTH, dataclasses.replace(TTA, beta=0.0, masked=0), MASK,
                                      device=CPU, seed=0)
    v0, _ = hand_predict(model, st, [0, 1], LENGTH, 8, 0)
    v1, _ = hand_predict(model, st, [0, 1], LENGTH, 8, 4)  # the exact-length clip: one window tiled at phase 4
    np.testing.assert_allclose(unmasked, (v0 + v1) / 2, rtol=1e-5, atol=1e-6)
    assert not np.allclose(v0[0], v1[0], atol=1e-6)


def test_predict_tta_blends_a_given_plain_prediction_instead_of_recomputing_it(model, store):
    """A training stage's saved plain predictions stand in for the plain pass: the blend uses them as given."""
    rows = np.arange(len(store))
    plain, tta = predict.predict_tta(model, store, rows, LENGTH, TTA, MASK, device=CPU, seed=3)
    other = np.full_like(plain, 0.25)
    got_plain, got = predict.predict_tta(model, store, rows, LENGTH, TTA, MASK, device=CPU, seed=3, plain=other)
    np.testing.assert_array_equal(got_plain, other)
    np.testing.assert_allclose(got, tta - 0.5 * plain + 0.5 * other, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="plain predictions for 2 clips given for 6 rows"):
        predict.predict_tta(model, store, rows, LENGTH, TTA, MASK, device=CPU, seed=3, plain=other[:2])


def test_member_plain_reads_a_members_predictions_in_the_order_asked_and_names_a_mismatch(tmp_path):
    from fat.evaluation import tta
    from fat.io import save_predictions

    probs = np.array([[0.1, 0.9], [0.5, 0.25]])
    save_predictions(tmp_path / "oof.csv", ["a.wav", "b.wav"], probs, ["x", "y"])
    np.testing.assert_allclose(tta.member_plain(tmp_path / "oof.csv", ["a.wav", "b.wav"], ["x", "y"]), probs)
    with pytest.raises(ValueError, match=r"oof\.csv: its clips are not the 2 clips being predicted"):
        tta.member_plain(tmp_path / "oof.csv", ["b.wav", "a.wav"], ["x", "y"])
    with pytest.raises(ValueError, match="class columns do not match"):
        tta.member_plain(tmp_path / "oof.csv", ["a.wav", "b.wav"], ["y", "x"])

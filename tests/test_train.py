"""Tests for fat/training/loop.py: the crop dataset, training loop, evaluation and device choice."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fat import metrics
from fat.evaluation.predict import predict_windows
from fat.features.store import FeatureStore, StoreWriter
from fat.params import Augment, Mixup, Model, Train
from fat.training import loop as train
from fat.training import models
from fat.training.augment import fit_length

N_MELS = 12
N_CLASSES = 3
LENGTH = 16
CPU = torch.device("cpu")
TINY = {"base_channels": 4, "n_blocks": 2, "dropout": 0.1, "channels": ["mel"], "head": "meanmax"}
TRAIN_CFG = {"epochs": 15, "batch_size": 4, "lr": 0.01, "weight_decay": 0.0, "warmup": 0.2, "eval_every": 1,
             "min_steps": 0,  # epochs as set (the default step floor would add epochs on these tiny sets)
             "label_smoothing": 0.0}  # hard targets, which the assertions on predictions below are written for
AUGMENT = {"p": 0.5, "freq_masks": 1, "freq_frac": 0.1, "time_masks": 1, "time_frac": 0.1}


def write_store(root, clips):
    """A float16 feature store (fat.features.store's writer) from (n_mels, frames) arrays."""
    with StoreWriter(root, N_MELS, "float16") as w:
        for i, c in enumerate(clips):
            w.add(f"c{i}.wav", c.T, c.shape[1] / 10)
        w.close()
    return FeatureStore.open(root)


def band_problem(root, n_clips=54, seed=0):
    """Class k puts energy into mel band group k (4 bands each); clip lengths 6..50 frames."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n_clips) % N_CLASSES
    rng.shuffle(labels)
    clips = []
    for k in labels:
        n = int(rng.integers(6, 51))
        x = rng.normal(-50, 3, size=(N_MELS, n))
        x[4 * k : 4 * k + 4] += 20 + rng.normal(0, 2, size=(4, n))
        clips.append(x.astype(np.float32))
    targets = np.eye(N_CLASSES, dtype=np.float32)[labels]
    return write_store(root, clips), targets


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    return band_problem(tmp_path_factory.mktemp("band") / "feat")


def new_model(seed=0, **cfg):
    torch.manual_seed(seed)
    return models.build(Model(**{**TINY, **cfg}), n_classes=N_CLASSES, n_mels=N_MELS)


# --------------------------------------------------------------------------- CropDataset


def test_crop_dataset_items_have_crop_length_and_targets(problem):
    store, targets = problem
    rows = np.arange(len(store))
    ds = train.CropDataset(store, rows, targets, LENGTH, seed=1)
    assert len(ds) == len(store)
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (N_MELS, LENGTH) and x.dtype == torch.float32
        assert torch.equal(y, torch.from_numpy(targets[i]))


def test_crop_dataset_crops_are_windows_of_the_clip(problem):
    store, targets = problem
    ds = train.CropDataset(store, np.arange(len(store)), targets, LENGTH, seed=2)
    long_rows = [r for r in range(len(store)) if store.lengths[r] >= LENGTH]
    assert long_rows
    for r in long_rows:
        clip = store.clip(r)
        x = ds[r][0].numpy()
        ok = [s for s in range(clip.shape[1] - LENGTH + 1) if np.array_equal(clip[:, s : s + LENGTH], x)]
        assert ok, f"crop of row {r} is not a window of its clip"


def test_crop_dataset_tiles_short_clips(problem):
    store, targets = problem
    short = [r for r in range(len(store)) if store.lengths[r] < LENGTH]
    assert short
    ds = train.CropDataset(store, short, targets[short], LENGTH, seed=3)
    for i, r in enumerate(short):
        clip, x = store.clip(r), ds[i][0].numpy()
        n = clip.shape[1]
        phases = [s for s in range(n) if np.array_equal(x, fit_length(clip, LENGTH, s))]
        assert phases, f"item {i} is not a tiling of its clip"
        s = phases[0]
        for j in range(LENGTH):
            np.testing.assert_array_equal(x[:, j], clip[:, (s + j) % n])


def test_crop_dataset_is_deterministic_and_changes_with_epoch(problem):
    store, targets = problem
    rows = np.arange(len(store))
    a = train.CropDataset(store, rows, targets, LENGTH, seed=5)
    b = train.CropDataset(store, rows, targets, LENGTH, seed=5)
    c = train.CropDataset(store, rows, targets, LENGTH, seed=6)
    for epoch in (0, 3):
        a.epoch = b.epoch = c.epoch = epoch
        for i in (4, 0, 17, 4):  # order of access does not matter
            assert torch.equal(a[i][0], b[i][0])
    a.epoch, b.epoch, c.epoch = 0, 1, 0
    long_items = [i for i in range(len(a)) if store.lengths[i] > LENGTH + 10]
    changed_epoch = sum(not torch.equal(a[i][0], b[i][0]) for i in long_items)
    changed_seed = sum(not torch.equal(a[i][0], c[i][0]) for i in long_items)
    assert changed_epoch >= len(long_items) // 2
    assert changed_seed >= len(long_items) // 2


def test_crop_dataset_rejects_mismatched_targets(problem):
    store, targets = problem
    with pytest.raises(ValueError, match="target"):
        train.CropDataset(store, np.arange(5), targets[:4], LENGTH, seed=0)


def test_crop_batch_equals_items_and_dispatches_over_concatenations(problem):
    store, targets = problem
    a = train.CropDataset(store, np.arange(0, 30), targets[:30], LENGTH, seed=7)
    b = train.CropDataset(store, np.arange(30, 54), targets[30:], LENGTH, seed=8)
    items = np.array([3, 29, 0, 3, 17])
    for epoch in (0, 2):
        a.epoch = epoch
        x, y = train.crop_batch(a, epoch, items)
        assert x.shape == (len(items), N_MELS, LENGTH) and x.dtype == torch.float32
        for j, i in enumerate(items):
            assert torch.equal(x[j], a[i][0]) and torch.equal(y[j], a[i][1])
    both = torch.utils.data.ConcatDataset([a, b])
    mixed = np.array([31, 2, 53, 30, 0])  # parts interleaved: order must be kept
    x, y = train.crop_batch(both, 1, mixed)
    a.epoch = b.epoch = 1
    for j, i in enumerate(mixed):
        ref = a[i] if i < 30 else b[i - 30]
        assert torch.equal(x[j], ref[0]) and torch.equal(y[j], ref[1])


def test_epoch_batch_sampler_is_a_seeded_shuffle_per_epoch():
    s = train.EpochBatchSampler(10, 3, seed=1)
    assert len(s) == 3
    first = list(s)
    assert [e for e, _ in first] == [0, 0, 0]
    seen = np.concatenate([b for _, b in first])
    assert len(seen) == 9 and len(set(seen.tolist())) == 9 and set(seen) <= set(range(10))  # last partial batch dropped
    assert all(np.array_equal(b1, b2) for (_, b1), (_, b2) in zip(first, train.EpochBatchSampler(10, 3, seed=1)))
    s.epoch = 1
    second = list(s)
    assert [e for e, _ in second] == [1, 1, 1]
    assert not np.array_equal(np.concatenate([b for _, b in second]), seen)
    other = train.EpochBatchSampler(10, 3, seed=2)
    assert not np.array_equal(np.concatenate([b for _, b in other]), seen)


def test_fit_rejects_an_empty_dataset(problem):
    store, targets = problem
    empty = train.CropDataset(store, np.arange(0), targets[:0], LENGTH, seed=0)
    with pytest.raises(ValueError, match="no training data"):
        train.fit(new_model(), empty, train=Train(**TRAIN_CFG), mixup=Mixup(alpha=0.0), augment=Augment(**AUGMENT),
                  seed=0, device=CPU)


def test_store_pickles_by_path_not_by_content(problem):
    """DataLoader workers started by spawn receive the dataset pickled: the store must reopen its
    memory map there, not ship the whole array."""
    import pickle

    store, _ = problem
    blob = pickle.dumps(store)
    assert len(blob) < 2000 < store.mels.nbytes
    again = pickle.loads(blob)
    assert isinstance(again.mels, np.memmap) and np.array_equal(again.clip(5), store.clip(5))


# --------------------------------------------------------------------------- evaluate


def test_evaluate_returns_probs_loss_and_lwlrap(problem):
    store, targets = problem
    rows = np.arange(10, 30)
    model = new_model()
    res = train.evaluate(model, store, rows, targets[rows], LENGTH, device=CPU, batch_size=7)
    probs, logits = predict_windows(model, store, rows, LENGTH, LENGTH, device=CPU)
    assert res["probs"].shape == (len(rows), N_CLASSES)
    np.testing.assert_allclose(res["probs"], probs, rtol=1e-5, atol=1e-6)
    assert res["lwlrap"] == pytest.approx(metrics.lwlrap(targets[rows], probs), abs=1e-9)
    t = targets[rows].astype(np.float64)
    bce = np.mean(np.logaddexp(0, logits) - t * logits)  # BCE with logits (on clip-mean logits)
    assert res["loss"] == pytest.approx(bce, rel=1e-5)
    # soft targets are thresholded at 0.5 for lwlrap; all-negative targets give NaN
    soft = np.where(targets[rows] > 0, 0.7, 0.1).astype(np.float32)
    assert train.evaluate(model, store, rows, soft, LENGTH, device=CPU)["lwlrap"] == pytest.approx(res["lwlrap"])
    assert np.isnan(train.evaluate(model, store, rows, np.zeros_like(soft) + 0.2, LENGTH, device=CPU)["lwlrap"])


# --------------------------------------------------------------------------- fit


def _fit(store, targets, seed, *, epochs=TRAIN_CFG["epochs"], augment=AUGMENT, mixup=0.2, workers=0, **model_cfg):
    tr, va = np.arange(0, 36), np.arange(36, len(store))
    model = new_model(seed, **model_cfg)
    data = train.CropDataset(store, tr, targets[tr], LENGTH, seed=seed)
    hist = train.fit(model, data, train=Train(**{**TRAIN_CFG, "epochs": epochs, "num_workers": workers}),
                     mixup=Mixup(alpha=mixup),
                     augment=Augment(**augment), seed=seed, device=CPU,
                     validate=lambda m: train.evaluate(m, store, va, targets[va], LENGTH, device=CPU))
    return model, hist, va


def test_fit_learns_the_band_problem(problem):
    store, targets = problem
    # band position only survives the frequency averaging through the conv stack: 8 base channels
    before = train.evaluate(new_model(0, base_channels=8), store, np.arange(36, len(store)), targets[36:], LENGTH,
                            device=CPU)
    model, hist, va = _fit(store, targets, seed=0, base_channels=8)
    assert [h["epoch"] for h in hist] == list(range(1, TRAIN_CFG["epochs"] + 1))
    assert all({"train_loss", "val_loss", "val_lwlrap", "samples_per_s"} <= set(h) for h in hist)
    losses = [h["train_loss"] for h in hist]
    assert np.mean(losses[-3:]) < 0.6 * losses[0]
    # chance lwlrap for 3 single-label classes is (1 + 1/2 + 1/3) / 3 ~= 0.61
    assert hist[-1]["val_lwlrap"] >= 0.9
    assert hist[-1]["val_loss"] < before["loss"]
    final = train.evaluate(model, store, va, targets[va], LENGTH, device=CPU)
    assert final["lwlrap"] == pytest.approx(hist[-1]["val_lwlrap"])
    assert (final["probs"].argmax(1) == targets[va].argmax(1)).mean() >= 0.9


def test_fit_is_deterministic_for_a_seed(problem):
    store, targets = problem
    m1, h1, _ = _fit(store, targets, seed=4, epochs=3)
    m2, h2, _ = _fit(store, targets, seed=4, epochs=3)
    strip = lambda h: [{k: v for k, v in r.items() if k != "samples_per_s"} for r in h]  # noqa: E731
    assert strip(h1) == strip(h2)
    sd1, sd2 = m1.state_dict(), m2.state_dict()
    assert sd1.keys() == sd2.keys()
    for k in sd1:
        assert torch.equal(sd1[k], sd2[k]), k
    m3, h3, _ = _fit(store, targets, seed=5, epochs=3)
    assert not torch.equal(sd1["features.0.0.weight"], m3.state_dict()["features.0.0.weight"])


def test_fit_with_loader_workers_equals_in_process_loading(problem):
    """DataLoader workers must see each epoch's crops (not the first epoch's forever): training with
    a worker process gives exactly the weights of in-process loading."""
    store, targets = problem
    m0, h0, _ = _fit(store, targets, seed=4, epochs=3, workers=0)
    m1, h1, _ = _fit(store, targets, seed=4, epochs=3, workers=1)
    strip = lambda h: [{k: v for k, v in r.items() if k != "samples_per_s"} for r in h]  # noqa: E731
    assert strip(h0) == strip(h1)
    for k, v in m0.state_dict().items():
        assert torch.equal(v, m1.state_dict()[k]), k


def test_validation_does_not_change_what_is_trained(problem):
    """How often validation runs (`train.eval_every`) changes the curves, never the weights: it takes
    no random numbers and leaves BatchNorm and dropout as they were, so validating less is free."""
    store, targets = problem
    tr, va = np.arange(0, 36), np.arange(36, 48)
    weights = []
    for every in (1, 3):
        model = new_model(2)
        data = train.CropDataset(store, tr, targets[tr], LENGTH, seed=2)
        hist = train.fit(model, data, train=Train(**{**TRAIN_CFG, "epochs": 4, "eval_every": every}),
                         mixup=Mixup(alpha=0.4), augment=Augment(**AUGMENT), seed=2, device=CPU,
                         validate=lambda m: train.evaluate(m, store, va, targets[va], LENGTH, device=CPU))
        assert sum("val_lwlrap" in h for h in hist) == (4 if every == 1 else 2)
        weights.append(model.state_dict())
    for k, v in weights[0].items():
        assert torch.equal(v, weights[1][k]), k


def test_fit_eval_every_and_without_validation(problem):
    store, targets = problem
    tr = np.arange(0, 36)
    model = new_model(1)
    calls = []

    def validate(m):
        calls.append(m.training)
        return {"loss": 1.0, "lwlrap": 0.5}

    data = train.CropDataset(store, tr, targets[tr], LENGTH, seed=1)
    hist = train.fit(model, data, train=Train(**{**TRAIN_CFG, "epochs": 5, "eval_every": 2}), mixup=Mixup(alpha=0.0),
                     augment=Augment(**{**AUGMENT, "p": 0.0}), seed=1, device=CPU, validate=validate)
    assert ["val_lwlrap" in h for h in hist] == [False, True, False, True, True]
    assert len(calls) == 3
    assert data.epoch == 4  # the dataset saw every epoch
    hist = train.fit(new_model(1), data, train=Train(**{**TRAIN_CFG, "epochs": 2}), mixup=Mixup(alpha=0.0),
                     augment=Augment(**AUGMENT), seed=1, device=CPU)
    assert len(hist) == 2 and all("val_lwlrap" not in h for h in hist)
    assert all(np.isfinite(h["train_loss"]) for h in hist)

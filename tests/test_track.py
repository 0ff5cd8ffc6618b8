"""Training curves: fit's on_epoch hook and the DVCLive files fat.training.track writes from it."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from fat.training import models, track
from fat.training import loop as train
from fat.features.store import FeatureStore


def tiny_store(root, n_clips=12, n_mels=8, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n_clips) % 2
    clips = []
    for k in labels:
        x = rng.normal(-50, 3, size=(int(rng.integers(8, 20)), n_mels))
        x[:, 4 * k: 4 * k + 4] += 20
        clips.append(x)
    root.mkdir(parents=True)
    np.save(root / "mels.npy", np.concatenate(clips).astype(np.float16))
    lengths = [len(c) for c in clips]
    pd.DataFrame({"fname": [f"c{i}.wav" for i in range(n_clips)], "offset": np.cumsum([0] + lengths[:-1]),
                  "length": lengths, "duration": lengths}).to_csv(root / "index.csv", index=False)
    (root / "meta.json").write_text(json.dumps({"n_mels": n_mels}))
    return FeatureStore.open(root), np.eye(2, dtype=np.float32)[labels]


def read_tsv(path):
    return pd.read_csv(path, sep="\t")


def test_fit_calls_on_epoch_with_each_completed_record_and_curves_are_logged(tmp_path):
    store, y = tiny_store(tmp_path / "feat")
    torch.manual_seed(0)
    model = models.build({"base_channels": 4, "n_blocks": 2, "dropout": 0.0, "channels": ["mel"]}, 2, 8)
    data = train.CropDataset(store, np.arange(len(y)), y, 8, seed=0)
    seen = []

    def validate(m):
        return train.evaluate(m, store, np.arange(len(y)), y, 8, device=torch.device("cpu"))

    live_dir = tmp_path / "metrics/train/baseline/fold0"
    with track.curves(live_dir) as log_curves:
        def on_epoch(rec):
            seen.append(dict(rec))  # a copy of the record as it was when the hook ran
            log_curves(rec)

        hist = train.fit(model, data, train_cfg={"epochs": 4, "batch_size": 4, "lr": 0.01, "eval_every": 2},
                         mixup_alpha=0.0, augment_cfg={"p": 0.0, "freq_masks": 1, "freq_frac": 0.1, "time_masks": 1,
                                                       "time_frac": 0.1},
                         seed=0, device=torch.device("cpu"), validate=validate, on_epoch=on_epoch)
    assert seen == hist  # called once per epoch, in order, after the record was complete (val keys included)
    assert [("val_lwlrap" in r) for r in seen] == [False, True, False, True]

    plots = live_dir / "plots/metrics"
    train_loss = read_tsv(plots / "train_loss.tsv")
    assert train_loss["step"].tolist() == [1, 2, 3, 4]  # x = the 1-based epoch
    np.testing.assert_allclose(train_loss["train_loss"], [r["train_loss"] for r in hist], rtol=1e-6)
    val = read_tsv(plots / "val_lwlrap.tsv")
    assert val["step"].tolist() == [2, 4]  # only the epochs that validated
    np.testing.assert_allclose(val["val_lwlrap"], [hist[1]["val_lwlrap"], hist[3]["val_lwlrap"]], rtol=1e-6)
    assert read_tsv(plots / "val_loss.tsv")["step"].tolist() == [2, 4]
    summary = json.loads((live_dir / "metrics.json").read_text())
    assert summary["val_lwlrap"] == pytest.approx(hist[-1]["val_lwlrap"])
    assert summary["train_loss"] == pytest.approx(hist[-1]["train_loss"])
    assert not (live_dir / "dvc.yaml").exists()  # dvc.yaml declares the plots by hand
    assert sorted(p.name for p in plots.iterdir()) == ["train_loss.tsv", "val_loss.tsv", "val_lwlrap.tsv"]


def test_curves_skip_nan_points_and_start_afresh(tmp_path):
    d = tmp_path / "live"
    with track.curves(d) as on_epoch:
        on_epoch({"epoch": 1, "train_loss": 0.9, "val_loss": 0.8, "val_lwlrap": float("nan")})
        on_epoch({"epoch": 2, "train_loss": 0.7})
    assert read_tsv(d / "plots/metrics/train_loss.tsv")["train_loss"].tolist() == [0.9, 0.7]
    assert not (d / "plots/metrics/val_lwlrap.tsv").exists()  # NaN is no point on a curve
    with track.curves(d) as on_epoch:  # a rerun replaces the old curves
        on_epoch({"epoch": 1, "train_loss": 0.5})
    assert read_tsv(d / "plots/metrics/train_loss.tsv")["train_loss"].tolist() == [0.5]
    assert not (d / "plots/metrics/val_loss.tsv").exists()

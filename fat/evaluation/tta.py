"""Stage logic of `predict@{family}-{k}`: the test-time-augmented predictions of one fold member
on its out-of-fold clips and on the test set (fat.evaluation.predict has the window and TTA maths)."""
from __future__ import annotations

import numpy as np

from fat import metrics
from fat.device import pick_device
from fat.evaluation.predict import predict_tta
from fat.features.store import FeatureStore
from fat.io import save_predictions
from fat.layout import Layout, tta_seeds
from fat.params import Augment, Tta
from fat.training import models
from fat.training.splits import curated_split


def predict_member(family: str, fold: int, tta: Tta, augment: Augment, seed: int,
                   layout: Layout = Layout()) -> dict:
    """Test-time-augmented predictions of member `family@fold` on its OOF clips and the test set,
    written to data/preds/<family>/fold<k>/{oof,test}.csv. Returns plain vs TTA OOF lwlrap."""
    device = pick_device()
    classes, store, _, _, va_rows, va_y, va_fnames = curated_split(layout, fold)
    model, ckpt = models.load(layout.member(family, fold) / "model.pt", classes=classes)
    model.to(device)
    crop = int(ckpt["crop_frames"])
    test_store = FeatureStore.open(layout.features("test"))
    oof_seed, test_seed = tta_seeds(seed, fold)
    mask_cfg = augment.masks()
    oof_plain, oof_tta = predict_tta(model, store, va_rows, crop, tta, mask_cfg, device=device, seed=oof_seed,
                                     desc=f"TTA {family}@{fold} oof")
    _, test_tta = predict_tta(model, test_store, np.arange(len(test_store)), crop, tta, mask_cfg,
                              device=device, seed=test_seed, desc=f"TTA {family}@{fold} test")
    out = layout.preds(family, fold)
    save_predictions(out / "oof.csv", va_fnames, oof_tta, classes)
    save_predictions(out / "test.csv", test_store.fnames, test_tta, classes)
    return {"fold": fold, "oof_lwlrap_plain": round(metrics.lwlrap(va_y, oof_plain), 6),
            "oof_lwlrap_tta": round(metrics.lwlrap(va_y, oof_tta), 6)}

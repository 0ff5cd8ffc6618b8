"""Stage logic of `predict@{family}`: the test-time-augmented predictions of each fold member of a
family on its out-of-fold clips and on the test set (fat.evaluation.predict has the window and TTA
maths). One stage per family, not per member: predicting is seconds per member, and a process per
member paid the interpreter, torch and DVC's per-stage bookkeeping again for each (~4 s a stage);
a change to one family's training still re-predicts only that family.

Each member's directory under data/preds also gets byte copies of its model.pt and of its plain
predictions (plain_oof.csv, plain_test.csv): the `ensemble` stage combines and bundles from
data/preds alone, so it depends on the members it combines (whichever `ensemble.members` lists)
through one declared directory."""
from __future__ import annotations

import shutil

import numpy as np

from fat import metrics
from fat.device import pick_device
from fat.evaluation.oof import PLAIN_COPY
from fat.evaluation.predict import predict_tta
from fat.features.store import FeatureStore
from fat.io import atomic_path, load_predictions, save_predictions
from fat.layout import Layout, tta_seeds
from fat.params import Augment, Tta
from fat.training import models
from fat.training.splits import curated_split


def member_plain(path, fnames, classes) -> np.ndarray:
    """A training stage's plain-window predictions (its oof.csv or test.csv), in `fnames` order: the
    `plain` part of the TTA blend, so the model's plain pass is not run a second time."""
    got, probs = load_predictions(path, classes)
    if list(got) != list(fnames):
        raise ValueError(f"{path}: its clips are not the {len(fnames)} clips being predicted, in that order "
                         "(retrain the member: its outputs predate the current folds or features)")
    return probs


def predict_member(family: str, fold: int, tta: Tta, augment: Augment, seed: int,
                   layout: Layout = Layout(), device=None) -> dict:
    """Test-time-augmented predictions of member `family@fold` on its OOF clips and the test set,
    written to data/preds/<family>/fold<k>/{oof,test}.csv. Returns plain vs TTA OOF lwlrap."""
    device = device or pick_device()
    classes, store, _, _, va_rows, va_y, va_fnames = curated_split(layout, fold)
    model, ckpt = models.load(layout.member(family, fold) / "model.pt", classes=classes)
    model.to(device)
    crop = int(ckpt["crop_frames"])
    test_store = FeatureStore.open(layout.features("test"))
    oof_seed, test_seed = tta_seeds(seed, fold)
    mask_cfg = augment.masks()
    member = layout.member(family, fold)
    oof_plain = member_plain(member / "oof.csv", va_fnames, classes)
    test_plain = member_plain(member / "test.csv", test_store.fnames, classes)
    oof_plain, oof_tta = predict_tta(model, store, va_rows, crop, tta, mask_cfg, device=device, seed=oof_seed,
                                     desc=f"TTA {family}@{fold} oof", plain=oof_plain)
    _, test_tta = predict_tta(model, test_store, np.arange(len(test_store)), crop, tta, mask_cfg,
                              device=device, seed=test_seed, desc=f"TTA {family}@{fold} test", plain=test_plain)
    out = layout.preds(family, fold)
    save_predictions(out / "oof.csv", va_fnames, oof_tta, classes)
    save_predictions(out / "test.csv", test_store.fnames, test_tta, classes)
    for name in ("model.pt", "oof.csv", "test.csv"):  # what the ensemble reads of the member, beside its TTA
        with atomic_path(out / (name if name == "model.pt" else PLAIN_COPY + name)) as tmp:
            shutil.copyfile(member / name, tmp)
    return {"fold": fold, "oof_lwlrap_plain": round(metrics.lwlrap(va_y, oof_plain), 6),
            "oof_lwlrap_tta": round(metrics.lwlrap(va_y, oof_tta), 6)}


def predict_family(family: str, folds, tta: Tta, augment: Augment, seed: int, layout: Layout = Layout()) -> dict:
    """`predict_member` for each of `folds`; returns {"folds": {"fold<k>": plain vs TTA OOF lwlrap}}."""
    device = pick_device()
    out = {}
    for fold in folds:
        result = predict_member(family, fold, tta, augment, seed, layout, device=device)
        out[f"fold{fold}"] = {k: v for k, v in result.items() if k != "fold"}
    return {"family": family, "folds": out}

"""Model families and what each trains on:

  pretrain   the whole noisy set with its own (unreliable) labels; scored on the curated set
  baseline   curated train folds, from scratch
  finetune   curated train folds, initialised from the pretrained weights (transfer)
  retrain    curated train folds + the fold's pseudo-labelled noisy clips (pseudo@k)

Fold members write `model.pt`, plain out-of-fold and test predictions and a training history
into their directory, and a small metrics JSON.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from torch.utils.data import ConcatDataset

from fat import data, metrics, models
from fat.features import FeatureStore
from fat.io import load_predictions, save_predictions, write_csv
from fat.predict import predict_plain
from fat.train import CropDataset, evaluate, fit, pick_device

log = logging.getLogger("fat.family")

FOLD_FAMILIES = ("baseline", "finetune", "retrain")


@dataclass(frozen=True)
class Layout:
    """Where the pipeline keeps things (relative to the project root)."""

    root: Path = Path(".")

    @property
    def raw(self) -> Path:
        return self.root / "data/raw"

    def features(self, split: str) -> Path:
        return self.root / "data/features" / split

    @property
    def folds(self) -> Path:
        return self.root / "data/folds.csv"

    @property
    def pretrain(self) -> Path:
        return self.root / "data/models/pretrain"

    def member(self, family: str, fold: int) -> Path:
        return self.root / "data/models" / family / f"fold{fold}"

    def pseudo(self, fold: int) -> Path:
        return self.root / "data/pseudo" / f"fold{fold}"

    def preds(self, family: str, fold: int) -> Path:
        return self.root / "data/preds" / family / f"fold{fold}"


def member_seed(seed: int, fold: int) -> int:
    """Fold k of every family starts from the same seed, so families are compared paired."""
    return int(seed) * 100 + int(fold)


def family_train_cfg(params: dict, family: str) -> dict:
    """Shared `train` settings overridden by the family's own section (epochs, lr, …)."""
    return {**params["train"], **{k: v for k, v in params.get(family, {}).items() if k in params["train"]}}


def curated_split(layout: Layout, fold: int):
    """(classes, store, train rows, train targets, val rows, val targets, val fnames) for fold k."""
    classes = data.vocabulary(layout.raw)
    table = data.split_table(layout.raw, "curated")
    folds = pd.read_csv(layout.folds, dtype={"fname": str})
    n_folds = int(folds["fold"].max()) + 1
    if not 0 <= fold < n_folds:
        raise ValueError(f"{layout.folds}: fold {fold} does not exist (folds 0..{n_folds - 1})")
    table = table.merge(folds, on="fname", how="left", validate="one_to_one")
    if table["fold"].isna().any():
        raise ValueError(f"{layout.folds}: {int(table['fold'].isna().sum())} curated clips have no fold; rerun `folds`")
    store = FeatureStore.open(layout.features("curated"))
    rows = store.position(table["fname"])
    y = data.multi_hot(table["labels"], classes)
    is_val = table["fold"].to_numpy() == fold
    return classes, store, rows[~is_val], y[~is_val], rows[is_val], y[is_val], table["fname"][is_val].tolist()


def load_pseudo(layout: Layout, fold: int, classes: list[str]) -> tuple[list[str], np.ndarray]:
    return load_predictions(layout.pseudo(fold) / "labels.csv", classes)


def train_member(family: str, fold: int, params: dict, layout: Layout = Layout()) -> dict:
    """Train fold `fold` of `family`; write model, plain OOF/test predictions and history.
    Returns the member's metrics."""
    if family not in FOLD_FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {FOLD_FAMILIES}")
    t0 = time.perf_counter()
    device = pick_device()
    classes, store, tr_rows, tr_y, va_rows, va_y, va_fnames = curated_split(layout, fold)
    train_cfg = family_train_cfg(params, family)
    crop = int(train_cfg["crop_frames"])
    seed = member_seed(params["seed"], fold)
    model = models.build(params["model"], len(classes), store.n_mels)
    fam_cfg = params.get(family, {})
    if family == "finetune" or (family == "retrain" and fam_cfg.get("init") == "pretrain"):
        models.load_backbone(model, layout.pretrain / "model.pt")

    datasets = [CropDataset(store, tr_rows, tr_y, crop, seed)]
    n_pseudo = 0
    if family == "retrain":
        p_fnames, p_y = load_pseudo(layout, fold, classes)
        if len(p_fnames):
            noisy = FeatureStore.open(layout.features("noisy"))
            datasets.append(CropDataset(noisy, noisy.position(p_fnames), p_y, crop, seed + 1))
            n_pseudo = len(p_fnames)
    train_data = datasets[0] if len(datasets) == 1 else ConcatCrops(datasets)

    def validate(m):
        return evaluate(m, store, va_rows, va_y, crop, device=device)

    history = fit(model, train_data, train_cfg=train_cfg, mixup_alpha=float(params["mixup"]["alpha"]),
                  augment_cfg=params["augment"], seed=seed, device=device, validate=validate,
                  desc=f"{family}@{fold}")
    final = validate(model)
    test_store = FeatureStore.open(layout.features("test"))
    test_probs = predict_plain(model, test_store, np.arange(len(test_store)), crop, device=device)

    out = layout.member(family, fold)
    models.save(out / "model.pt", model.cpu(), params["model"], classes, store.n_mels,
                extra={"family": family, "fold": fold, "crop_frames": crop})
    save_predictions(out / "oof.csv", va_fnames, final["probs"], classes)
    save_predictions(out / "test.csv", test_store.fnames, test_probs, classes)
    write_csv(out / "history.csv", pd.DataFrame(history))
    result = {
        "fold": fold, "lwlrap": round(final["lwlrap"], 6), "val_loss": round(final["loss"], 6),
        "train_clips": int(len(tr_rows)), "pseudo_clips": n_pseudo, "val_clips": int(len(va_rows)),
        "epochs": int(train_cfg["epochs"]), "seconds": round(time.perf_counter() - t0, 1),
        "device": device.type,
    }
    log.info("%s@%d done: %s", family, fold, result)
    return result


class ConcatCrops(ConcatDataset):
    """Concatenation of CropDatasets that forwards the epoch number to each part."""

    @property
    def epoch(self):
        return self.datasets[0].epoch

    @epoch.setter
    def epoch(self, value):
        for d in self.datasets:
            d.epoch = value


def score_family(family: str, folds: list[int], layout: Layout = Layout()) -> dict:
    """Per-fold and overall OOF lwlrap of a family's plain predictions, plus the test lwlrap of
    the fold-averaged test predictions when test labels exist."""
    classes = data.vocabulary(layout.raw)
    truth = data.split_table(layout.raw, "curated").set_index("fname")
    fn_all, p_all, per_fold = [], [], {}
    for k in folds:
        fn, p = load_predictions(layout.member(family, k) / "oof.csv", classes)
        y = data.multi_hot(truth.loc[fn, "labels"], classes)
        per_fold[f"fold{k}"] = round(metrics.lwlrap(y, p), 6)
        fn_all += fn
        p_all.append(p)
    p_all = np.concatenate(p_all)
    if len(set(fn_all)) != len(fn_all):
        raise ValueError(f"{family}: out-of-fold predictions overlap between folds")
    y_all = data.multi_hot(truth.loc[fn_all, "labels"], classes)
    out = {"oof_lwlrap": round(metrics.lwlrap(y_all, p_all), 6), "folds": per_fold, "oof_clips": len(fn_all)}
    if data.has_test_labels(layout.raw):
        test = data.split_table(layout.raw, "test").set_index("fname")
        tests = [load_predictions(layout.member(family, k) / "test.csv", classes) for k in folds]
        fn = tests[0][0]
        p = np.mean([t[1] for t in tests], axis=0)
        out["test_lwlrap"] = round(metrics.lwlrap(data.multi_hot(test.loc[fn, "labels"], classes), p), 6)
    return out


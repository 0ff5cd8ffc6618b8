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

import numpy as np
import pandas as pd
from torch.utils.data import ConcatDataset

from fat import metrics
from fat.data import tables as data
from fat.training import dist, models, track
from fat.training.checkpoint import Checkpointer, file_digest, fingerprint
from fat.features.store import FeatureStore
from fat.layout import FOLD_FAMILIES, Layout
from fat.io import load_predictions, save_predictions, write_csv
from fat.evaluation.predict import predict_plain
from fat.device import pick_device
from fat.training.loop import CropDataset, check_settings, evaluate, fit, seed_everything
from fat.training.splits import curated_split, load_pseudo, member_seed

log = logging.getLogger("fat.family")


FAMILY_ONLY_KEYS = {"retrain": {"init"}}  # family keys that are not `train` overrides


def retrain_init(params: dict) -> str:
    """Where retrain@k starts: `pretrain` (default, the noisy-pretrained weights) or `scratch`."""
    init = (params.get("retrain") or {}).get("init", "pretrain")
    if init not in ("pretrain", "scratch"):
        raise ValueError(f"params.yaml: retrain.init must be 'pretrain' or 'scratch', got {init!r}")
    return init


def family_train_cfg(params: dict, family: str) -> dict:
    """Shared `train` settings overridden by the family's own section (epochs, lr, …).
    A key that is neither a `train` setting nor the family's own raises (typos do not pass)."""
    own = params.get(family) or {}
    unknown = sorted(set(own) - set(params["train"]) - FAMILY_ONLY_KEYS.get(family, set()))
    if unknown:
        raise ValueError(f"params.yaml: {family}.{unknown[0]} is not a setting; a family section may override "
                         f"{sorted(params['train'])}{' or set ' + str(sorted(FAMILY_ONLY_KEYS[family])) if family in FAMILY_ONLY_KEYS else ''}")
    if family == "retrain":
        retrain_init(params)
    overrides = {k: v for k, v in own.items() if k in params["train"]}
    cfg = {**params["train"], **overrides}
    check_settings(cfg, params["mixup"]["alpha"], params["augment"], sections={k: family for k in overrides})
    return cfg


def history_frame(history: list[dict]) -> pd.DataFrame:
    """The per-epoch records as saved: timings (which vary run to run) are logged, not written, so
    the same params give byte-identical outputs."""
    return pd.DataFrame(history).drop(columns=["samples_per_s"], errors="ignore")


def checkpointer(name: str, params: dict, inputs: list, layout: Layout) -> Checkpointer:
    """The checkpoint of training run `name`, fingerprinted by the params and its input files."""
    digests = {str(p): file_digest(p) for p in inputs}
    return Checkpointer(layout.checkpoint(name), fingerprint(name=name, params=params, inputs=digests))


def _feature_index(layout: Layout, split: str) -> list:
    return [layout.features(split) / "index.csv", layout.features(split) / "meta.json"]


def train_member(family: str, fold: int, params: dict, layout: Layout = Layout()) -> dict | None:
    """Train fold `fold` of `family`; write model, plain OOF/test predictions and history.
    Returns the member's metrics (None on ranks other than 0 under torchrun: they write nothing)."""
    if family not in FOLD_FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {FOLD_FAMILIES}")
    t0 = time.perf_counter()
    device = dist.setup(pick_device()).device
    classes, store, tr_rows, tr_y, va_rows, va_y, va_fnames = curated_split(layout, fold)
    train_cfg = family_train_cfg(params, family)
    crop = int(train_cfg["crop_frames"])
    seed = member_seed(params["seed"], fold)
    seed_everything(seed)  # the model's initial weights come from the seeded global RNG
    model = models.build(params["model"], len(classes), store.n_mels)
    inputs = [layout.folds, *_feature_index(layout, "curated")]
    if family == "finetune" or (family == "retrain" and retrain_init(params) == "pretrain"):
        models.load_backbone(model, layout.pretrain / "model.pt")
        inputs.append(layout.pretrain / "model.pt")
    if family == "retrain":
        inputs += [layout.pseudo(fold) / "labels.csv", *_feature_index(layout, "noisy")]
    ckpt = checkpointer(f"{family}@{fold}", params, inputs, layout)

    datasets = [CropDataset(store, tr_rows, tr_y, crop, seed)]
    n_pseudo = 0
    if family == "retrain":
        p_fnames, p_y = load_pseudo(layout, fold, classes)
        if len(p_fnames):
            noisy = FeatureStore.open(layout.features("noisy"))
            datasets.append(CropDataset(noisy, noisy.position(p_fnames), p_y, crop, seed + 1))
            n_pseudo = len(p_fnames)
    train_data = datasets[0] if len(datasets) == 1 else ConcatCrops(datasets)

    last: dict = {}

    def validate(m):
        last.update(evaluate(m, store, va_rows, va_y, crop, device=device))
        return last

    with track.curves(layout.curves(family, fold), enabled=dist.is_main()) as on_epoch:
        history = fit(model, train_data, train_cfg=train_cfg, mixup_alpha=float(params["mixup"]["alpha"]),
                      augment_cfg=params["augment"], seed=seed, device=device, validate=validate,
                      desc=f"{family}@{fold}", on_epoch=on_epoch, checkpoint=ckpt)
    if not dist.is_main():
        return None
    final = last  # fit validates after the last epoch
    test_store = FeatureStore.open(layout.features("test"))
    test_probs = predict_plain(model, test_store, np.arange(len(test_store)), crop, device=device)

    out = layout.member(family, fold)
    models.save(out / "model.pt", model.cpu(), params["model"], classes, store.n_mels,
                extra={"family": family, "fold": fold, "crop_frames": crop})
    save_predictions(out / "oof.csv", va_fnames, final["probs"], classes)
    save_predictions(out / "test.csv", test_store.fnames, test_probs, classes)
    write_csv(out / "history.csv", history_frame(history))
    ckpt.clear()
    result = {
        "fold": fold, "lwlrap": round(final["lwlrap"], 6), "val_loss": round(final["loss"], 6),
        "train_clips": int(len(tr_rows)), "pseudo_clips": n_pseudo, "val_clips": int(len(va_rows)),
        "epochs": int(train_cfg["epochs"]),
    }  # metrics are deterministic for fixed params; wall time and device go to the log only
    log.info("%s@%d done in %.1f s on %s: %s", family, fold, time.perf_counter() - t0, device.type, result)
    return result


def train_pretrain(params: dict, layout: Layout = Layout()) -> dict | None:
    """Train on the whole noisy set with its own labels; score on the curated set (never seen).
    Returns the metrics (None on ranks other than 0 under torchrun)."""
    t0 = time.perf_counter()
    device = dist.setup(pick_device()).device
    classes = data.vocabulary(layout.raw)
    noisy = FeatureStore.open(layout.features("noisy"))
    noisy_table = data.split_table(layout.raw, "noisy")
    curated = FeatureStore.open(layout.features("curated"))
    cur_table = data.split_table(layout.raw, "curated")
    cur_rows, cur_y = curated.position(cur_table["fname"]), data.multi_hot(cur_table["labels"], classes)
    train_cfg = family_train_cfg(params, "pretrain")
    crop = int(train_cfg["crop_frames"])
    seed = member_seed(params["seed"], 99)
    seed_everything(seed)
    model = models.build(params["model"], len(classes), noisy.n_mels)
    train_data = CropDataset(noisy, noisy.position(noisy_table["fname"]),
                             data.multi_hot(noisy_table["labels"], classes), crop, seed)
    ckpt = checkpointer("pretrain", params, _feature_index(layout, "noisy") + _feature_index(layout, "curated"), layout)
    last: dict = {}

    def validate(m):
        last.update(evaluate(m, curated, cur_rows, cur_y, crop, device=device))
        return last

    with track.curves(layout.curves("pretrain"), enabled=dist.is_main()) as on_epoch:
        history = fit(model, train_data, train_cfg=train_cfg, mixup_alpha=float(params["mixup"]["alpha"]),
                      augment_cfg=params["augment"], seed=seed, device=device, validate=validate, desc="pretrain",
                      on_epoch=on_epoch, checkpoint=ckpt)
    if not dist.is_main():
        return None
    out = layout.pretrain
    models.save(out / "model.pt", model.cpu(), params["model"], classes, noisy.n_mels,
                extra={"family": "pretrain", "crop_frames": crop})
    write_csv(out / "history.csv", history_frame(history))
    ckpt.clear()
    result = {"curated_lwlrap": round(last["lwlrap"], 6), "curated_loss": round(last["loss"], 6),
              "train_clips": len(train_data), "epochs": int(train_cfg["epochs"])}
    log.info("pretrain done in %.1f s on %s: %s", time.perf_counter() - t0, device.type, result)
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

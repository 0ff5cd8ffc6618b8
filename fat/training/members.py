"""Model families and what each trains on:

  pretrain   the whole noisy set with its own (unreliable) labels; scored on the curated set
  baseline   curated train folds, from scratch (opt-in: the folds in `baseline.folds`; not ensembled)
  finetune   curated train folds, initialised from the pretrained weights (transfer)
  retrain    curated train folds + the fold's pseudo-labelled noisy clips (pseudo@k); optionally the
             noisy-set methods of fat.training.noisy (noisy head, L-soft, relabelled share, MixMatch);
             with `retrain.stages` > 1, staged selection: the stage-s retrain@k model picks the noisy
             clips again (the `pseudo` rules) and stage s+1 trains afresh on curated + those

Every family trains through one skeleton (`_train`: checkpointed `fit` with per-epoch validation
and DVCLive curves, then `model.pt` and the training history); the families differ only in what
goes in (`Run`). Fold members also write plain out-of-fold and test predictions into their
directory; each stage writes a small metrics JSON.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import ConcatDataset, Dataset

from fat.data import tables
from fat.device import pick_device
from fat.evaluation.predict import predict_plain
from fat.features.store import FeatureStore
from fat.io import save_predictions, write_csv
from fat.layout import Layout
from fat.params import FOLD_FAMILIES, Params, Train
from fat.training import dist, models, noisy, pseudo, track
from fat.training.checkpoint import Checkpointer, for_run
from fat.training.loop import CropDataset, evaluate, fit, seed_everything
from fat.training.splits import curated_split, load_pseudo, member_seed

log = logging.getLogger(__name__)


@dataclass
class Run:
    """One training run: its name (`baseline@0`, `pretrain`: checkpoint and progress bar), its
    settings and seed, the model (built after seeding), what it trains and validates on, where its
    curves go, and the files its checkpoint is fingerprinted by."""

    name: str
    train: Train
    seed: int
    model: torch.nn.Module
    data: Dataset
    val: tuple[FeatureStore, np.ndarray, np.ndarray]  # store, rows, targets
    curves: Path
    inputs: list[Path] = field(default_factory=list)
    extra: noisy.Parts | None = None  # noisy-set parts of every batch (fat.training.noisy), None = off


def history_frame(history: list[dict]) -> pd.DataFrame:
    """The per-epoch records as saved: timings (which vary run to run) are logged, not written, so
    the same params give byte-identical outputs."""
    return pd.DataFrame(history).drop(columns=["samples_per_s"], errors="ignore")


def _feature_index(layout: Layout, split: str) -> list:
    return [layout.features(split) / "index.csv", layout.features(split) / "meta.json"]


def _build_model(p: Params, seed: int, n_classes: int, n_mels: int):
    seed_everything(seed)  # the model's initial weights come from the seeded global RNG
    return models.build(p.model, n_classes, n_mels)


def _train(run: Run, p: Params, layout: Layout, device) -> tuple[list[dict], dict, Checkpointer] | None:
    """Fit `run.model` (resuming a matching checkpoint), validating as `train.eval_every` says.
    Returns (history, last validation, the checkpoint to clear once the outputs are written) on
    rank 0, None on the other ranks (they write nothing)."""
    ckpt = for_run(run.name, p.as_dict(), run.inputs, layout.checkpoint(run.name))
    store, rows, targets = run.val
    last: dict = {}

    def validate(m):
        last.update(evaluate(m, store, rows, targets, run.train.crop_frames, device=device))
        return last

    with track.curves(run.curves, enabled=dist.is_main()) as on_epoch:
        history = fit(run.model, run.data, train=run.train, mixup=p.mixup, augment=p.augment, seed=run.seed,
                      device=device, validate=validate, desc=run.name, on_epoch=on_epoch, checkpoint=ckpt,
                      extra=run.extra)
    if not dist.is_main():
        return None
    return history, last, ckpt  # fit validates after the last epoch


def _save(out: Path, run: Run, p: Params, classes: list[str], n_mels: int, history: list[dict], extra: dict) -> None:
    models.save(out / "model.pt", run.model.cpu(), p.model, classes, n_mels,
                extra={**extra, "crop_frames": run.train.crop_frames})
    write_csv(out / "history.csv", history_frame(history))


def train_member(family: str, fold: int, p: Params, layout: Layout = Layout()) -> dict | None:
    """Train fold `fold` of `family`; write model, plain OOF/test predictions and history.
    Returns the member's metrics (None on ranks other than 0 under torchrun: they write nothing)."""
    if family not in FOLD_FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {FOLD_FAMILIES}")
    t0 = time.perf_counter()
    device = dist.setup(pick_device()).device
    classes, store, tr_rows, tr_y, va_rows, va_y, va_fnames = curated_split(layout, fold)
    train = p.train_for(family)
    seed = member_seed(p.training_seed(family), fold)
    model = _build_model(p, seed, len(classes), store.n_mels)
    inputs = [layout.folds, *_feature_index(layout, "curated")]
    if family == "finetune" or (family == "retrain" and p.retrain.init == "pretrain"):
        models.load_backbone(model, layout.pretrain / "model.pt")
        inputs.append(layout.pretrain / "model.pt")
    p_fnames, p_y = [], np.zeros((0, len(classes)), dtype=np.float32)
    if family == "retrain":
        inputs += [layout.pseudo(fold) / "labels.csv", *_feature_index(layout, "noisy")]
        p_fnames, p_y = load_pseudo(layout, fold, classes)
        if noisy.active(train):
            inputs.append(layout.raw / "train_noisy.csv")
    n_stages = p.retrain.stages if family == "retrain" else 1
    per_stage = []
    extra = None
    for stage in range(1, n_stages + 1):
        if stage > 1:  # staged selection: this fold's own last model picks the noisy clips again
            p_fnames, p_y, _ = pseudo.score_and_select(model, train.crop_frames, p.pseudo, layout, device,
                                                       desc=f"{family}@{fold} stage {stage}: score noisy")
            model = _build_model(p, seed, len(classes), store.n_mels)
            if p.retrain.init == "pretrain":
                models.load_backbone(model, layout.pretrain / "model.pt")
        datasets = [CropDataset(store, tr_rows, tr_y, train.crop_frames, seed, stretch=train.stretch)]
        pseudo_data = None
        if len(p_fnames):
            noisy_store = FeatureStore.open(layout.features("noisy"))
            pseudo_data = CropDataset(noisy_store, noisy_store.position(p_fnames), p_y, train.crop_frames, seed + 1,
                                      stretch=train.stretch)
        if family == "retrain" and noisy.active(train):  # the noisy-set methods: parts at set shares of a batch
            extra = _noisy_parts(train, layout, classes, seed, pseudo_data)
        if pseudo_data is not None and (extra is None or extra.relabelled is None):
            datasets.append(pseudo_data)  # appended to the curated clips (relabelled_share 0: the plain recipe)
        per_stage.append(len(p_fnames))
        run = Run(name=f"{family}@{fold}" if stage == 1 else f"{family}@{fold}.stage{stage}", train=train,
                  seed=seed, model=model, data=datasets[0] if len(datasets) == 1 else ConcatCrops(datasets),
                  val=(store, va_rows, va_y), curves=layout.curves(family, fold), inputs=inputs, extra=extra)
        done = _train(run, p, layout, device)  # every rank trains every stage; rank 0 writes
        if stage < n_stages and done is not None:
            done[2].clear()
    n_pseudo = per_stage[-1]
    if done is None:
        return None
    history, final, ckpt = done
    test_store = FeatureStore.open(layout.features("test"))
    test_probs = predict_plain(model, test_store, np.arange(len(test_store)), train.crop_frames, device=device)

    out = layout.member(family, fold)
    _save(out, run, p, classes, store.n_mels, history, extra={"family": family, "fold": fold})
    save_predictions(out / "oof.csv", va_fnames, final["probs"], classes)
    save_predictions(out / "test.csv", test_store.fnames, test_probs, classes)
    ckpt.clear()
    result = {
        "fold": fold, "lwlrap": round(final["lwlrap"], 6), "val_loss": round(final["loss"], 6),
        "train_clips": int(len(tr_rows)), "pseudo_clips": n_pseudo, "val_clips": int(len(va_rows)),
        "epochs": len(history),  # train.epochs, or more when train.min_steps asks for them
    }  # metrics are deterministic for fixed params; wall time and device go to the log only
    if extra is not None:  # only with the noisy-set methods on: the plain recipe's metrics stay as they were
        result["noisy_methods"] = train.noisy_keys()
    if n_stages > 1:
        result["pseudo_clips_per_stage"] = per_stage
    log.info("%s@%d done in %.1f s on %s: %s", family, fold, time.perf_counter() - t0, device.type, result)
    return result


def _noisy_parts(train: Train, layout: Layout, classes: list[str], seed: int, pseudo_data) -> noisy.Parts:
    """The noisy set's parts of a retrain member's batches: the whole noisy set with its own labels
    (raw share, MixMatch's unlabelled views) and the pseudo@k clips (relabelled share)."""
    store = FeatureStore.open(layout.features("noisy"))
    table = tables.split_table(layout.raw, "noisy")
    return noisy.parts_for(train, store, store.position(table["fname"]), tables.multi_hot(table["labels"], classes),
                           pseudo_data, seed)


def train_pretrain(p: Params, layout: Layout = Layout()) -> dict | None:
    """Train on the whole noisy set with its own labels; score on the curated set (never seen).
    Returns the metrics (None on ranks other than 0 under torchrun)."""
    t0 = time.perf_counter()
    device = dist.setup(pick_device()).device
    classes = tables.vocabulary(layout.raw)
    noisy = FeatureStore.open(layout.features("noisy"))
    noisy_table = tables.split_table(layout.raw, "noisy")
    curated = FeatureStore.open(layout.features("curated"))
    cur_table = tables.split_table(layout.raw, "curated")
    cur_rows, cur_y = curated.position(cur_table["fname"]), tables.multi_hot(cur_table["labels"], classes)
    train = p.train_for("pretrain")
    seed = member_seed(p.training_seed("pretrain"), 99)
    model = _build_model(p, seed, len(classes), noisy.n_mels)
    train_data = CropDataset(noisy, noisy.position(noisy_table["fname"]),
                             tables.multi_hot(noisy_table["labels"], classes), train.crop_frames, seed,
                             stretch=train.stretch)
    run = Run(name="pretrain", train=train, seed=seed, model=model, data=train_data, val=(curated, cur_rows, cur_y),
              curves=layout.curves("pretrain"),
              inputs=_feature_index(layout, "noisy") + _feature_index(layout, "curated"))
    done = _train(run, p, layout, device)
    if done is None:
        return None
    history, last, ckpt = done
    _save(layout.pretrain, run, p, classes, noisy.n_mels, history, extra={"family": "pretrain"})
    ckpt.clear()
    result = {"curated_lwlrap": round(last["lwlrap"], 6), "curated_loss": round(last["loss"], 6),
              "train_clips": len(train_data), "epochs": len(history)}
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

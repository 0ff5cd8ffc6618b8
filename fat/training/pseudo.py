"""Pseudo-labelling the noisy set.

For fold k, the noisy set is scored by the fold-k fine-tuned model only. That model never saw
fold k's curated validation clips, so the pseudo-labels retrain@k learns from carry no
information about them and retrain@k's out-of-fold score stays honest. (Labelling with an
ensemble of all folds would leak every validation clip into every fold's training data.)

Selection (`select: confidence`, the default), in order:
  1. predicted labels of a clip: classes with p >= `label_threshold`, at most `top_k`, and
     always the top class;
  2. keep clips whose top probability is >= `min_confidence`;
  3. `agree`: keep only clips where a predicted label is among the noisy set's own labels
     (the targets then are the predicted labels that agree with the noisy labels);
  4. `per_class_cap`: most confident first, a clip is kept while each of its target classes has
     fewer than this many kept clips (0 = no cap);
  5. `max_clips`: keep the most confident clips up to this count (0 = no cap).
`select: lwlrap` (staged selection, 8th place of FAT2019) replaces steps 1-3: keep the clips whose
predictions agree with their noisy labels exactly in rank, i.e. every noisy label scores above
every other class (the clip's own lwlrap is 1); the targets are the noisy labels and a clip's
confidence is the probability of its weakest noisy label. Steps 4-5 follow.
Targets are `hard` (0/1 labels from above) or `soft` (the model's probabilities sharpened
with `temperature`: sigmoid(logit(p) / T), T < 1 sharpens; non-kept classes keep their soft
value too).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from fat.data import tables as data
from fat.device import pick_device
from fat.evaluation.predict import predict_plain
from fat.features.store import FeatureStore
from fat.io import save_predictions, write_csv
from fat.layout import Layout
from fat.params import Pseudo
from fat.training import models


def predicted_labels(probs: np.ndarray, label_threshold: float, top_k: int) -> np.ndarray:
    """n x C 0/1 matrix of predicted labels (top class always included, at most top_k)."""
    probs = np.asarray(probs, dtype=np.float64)
    if top_k < 1:
        raise ValueError(f"pseudo.top_k must be >= 1, got {top_k}")
    order = np.argsort(-probs, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(probs.shape[1])[None, :].repeat(len(probs), 0), axis=1)
    return ((rank == 0) | ((probs >= label_threshold) & (rank < top_k))).astype(np.float32)


def sharpen(probs: np.ndarray, temperature: float) -> np.ndarray:
    if temperature <= 0:
        raise ValueError(f"pseudo.temperature must be > 0, got {temperature}")
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-6, 1 - 1e-6)
    return 1.0 / (1.0 + np.exp(-np.log(p / (1 - p)) / temperature))


def rank_agreement(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, agrees) per clip: agrees when every labelled class scores strictly above every
    other class (the clip's lwlrap against `labels` is 1); confidence = the lowest labelled score."""
    pos = labels > 0
    has = pos.any(axis=1) & ~pos.all(axis=1)
    low = np.where(pos, probs, np.inf).min(axis=1)
    high = np.where(pos, -np.inf, probs).max(axis=1)
    return np.where(has, low, 0.0), has & (low > high)


def cap_per_class(order: np.ndarray, targets: np.ndarray, cap: int) -> np.ndarray:
    """The clips of `order` (best first) kept while each of their target classes has < cap kept clips."""
    counts = np.zeros(targets.shape[1], dtype=np.int64)
    kept = []
    for i in order:
        classes = np.flatnonzero(targets[i] > 0)
        if np.all(counts[classes] < cap):
            counts[classes] += 1
            kept.append(i)
    return np.asarray(kept, dtype=np.int64)


def select(probs: np.ndarray, noisy_labels: np.ndarray, cfg: Pseudo) -> tuple[np.ndarray, np.ndarray]:
    """(indices of kept clips, their targets). `noisy_labels` is the noisy set's multi-hot."""
    probs = np.asarray(probs, dtype=np.float64)
    noisy_labels = np.asarray(noisy_labels, dtype=np.float32)
    if probs.shape != noisy_labels.shape:
        raise ValueError(f"pseudo: predictions {probs.shape} and noisy labels {noisy_labels.shape} differ in shape")
    if cfg.select == "lwlrap":
        pred = noisy_labels.copy()
        conf, keep = rank_agreement(probs, noisy_labels)
    else:
        pred = predicted_labels(probs, cfg.label_threshold, cfg.top_k)
        conf = probs.max(axis=1)
        keep = conf >= cfg.min_confidence
        if cfg.agree:
            pred = pred * noisy_labels
            keep &= pred.sum(axis=1) > 0
    idx = np.flatnonzero(keep)
    idx = idx[np.argsort(-conf[idx], kind="stable")]
    if cfg.per_class_cap > 0:
        idx = cap_per_class(idx, pred, cfg.per_class_cap)
    cap = cfg.max_clips
    if cap > 0:
        idx = idx[:cap]
    idx = np.sort(idx)
    mode = cfg.targets
    if mode == "hard":
        targets = pred[idx]
    elif mode == "soft":
        targets = sharpen(probs[idx], cfg.temperature).astype(np.float32)
    else:
        raise ValueError(f"pseudo.targets must be 'hard' or 'soft', got {mode!r}")
    return idx, targets


def report(idx: np.ndarray, targets: np.ndarray, probs: np.ndarray, noisy_labels: np.ndarray,
           classes: list[str]) -> dict:
    """How many clips were kept, per class, and how often the kept labels agree with the noisy ones."""
    hard = (targets >= 0.5).astype(np.float32)
    top = probs.argmax(axis=1)
    agree_all = noisy_labels[np.arange(len(top)), top] > 0
    return {
        "noisy_clips": int(len(probs)),
        "kept": int(len(idx)),
        "kept_share": round(len(idx) / max(len(probs), 1), 4),
        "top1_agrees_with_noisy_label": round(float(agree_all.mean()), 4) if len(probs) else None,
        "kept_top1_agrees": round(float(agree_all[idx].mean()), 4) if len(idx) else None,
        "labels_per_kept_clip": round(float(hard.sum(axis=1).mean()), 3) if len(idx) else 0.0,
        "per_class": {c: int(n) for c, n in zip(classes, hard.sum(axis=0))},
    }


def per_class_table(rep: dict) -> pd.DataFrame:
    return pd.DataFrame({"class": list(rep["per_class"]), "kept": list(rep["per_class"].values())})


def score_noisy(model, crop_frames: int, layout: Layout, device, desc: str | None = None):
    """The noisy table and `model`'s plain-window probabilities for its clips, in table order."""
    table = data.split_table(layout.raw, "noisy")
    noisy = FeatureStore.open(layout.features("noisy"))
    probs = predict_plain(model, noisy, noisy.position(table["fname"]), int(crop_frames), device=device, desc=desc)
    return table, probs


def select_from_scores(table: pd.DataFrame, probs: np.ndarray, cfg: Pseudo, classes: list[str]):
    """Select clips from the noisy set's probabilities: (fnames, targets, report)."""
    noisy_y = data.multi_hot(table["labels"], classes)
    idx, targets = select(probs, noisy_y, cfg)
    rep = report(idx, targets, probs, noisy_y, classes)
    return table["fname"].iloc[idx].tolist(), targets, rep


def score_and_select(model, crop_frames: int, cfg: Pseudo, layout: Layout, device, desc: str | None = None):
    """Score the whole noisy set with `model` and select clips: (fnames, targets, report)."""
    table, probs = score_noisy(model, crop_frames, layout, device, desc)
    return select_from_scores(table, probs, cfg, data.vocabulary(layout.raw))


def label_fold(fold: int, cfg: Pseudo, layout: Layout | None = None) -> dict:
    """Score the noisy set with the fold-`fold` fine-tuned model, select clips and write
    data/pseudo/fold<k>/labels.csv (fname + class targets), per_class.csv and scores.csv (the
    model's probabilities for every noisy clip, which the label-issue report reuses). Returns the report."""
    layout = layout or Layout()
    device = pick_device()
    classes = data.vocabulary(layout.raw)
    model, ckpt = models.load(layout.member("finetune", fold) / "model.pt", classes=classes)
    model.to(device)
    table, probs = score_noisy(model, int(ckpt["crop_frames"]), layout, device, desc=f"pseudo@{fold} score noisy")
    fnames, targets, rep = select_from_scores(table, probs, cfg, classes)
    out = layout.pseudo(fold)
    save_predictions(out / "labels.csv", fnames, targets, classes)
    save_predictions(layout.pseudo_scores(fold), table["fname"].tolist(), probs, classes)
    write_csv(out / "per_class.csv", per_class_table(rep))
    return {"fold": fold, **rep}

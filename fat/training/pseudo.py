"""Pseudo-labelling the noisy set.

For fold k, the noisy set is scored by the fold-k fine-tuned model only. That model never saw
fold k's curated validation clips, so the pseudo-labels retrain@k learns from carry no
information about them and retrain@k's out-of-fold score stays honest. (Labelling with an
ensemble of all folds would leak every validation clip into every fold's training data.)

Selection, in order:
  1. predicted labels of a clip: classes with p >= `label_threshold`, at most `top_k`, and
     always the top class;
  2. keep clips whose top probability is >= `min_confidence`;
  3. `agree`: keep only clips where a predicted label is among the noisy set's own labels
     (the targets then are the predicted labels that agree with the noisy labels);
  4. `max_clips`: keep the most confident clips up to this count (0 = no cap).
Targets are `hard` (0/1 labels from above) or `soft` (the model's probabilities sharpened
with `temperature`: sigmoid(logit(p) / T), T < 1 sharpens; non-kept classes keep their soft
value too).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from fat.data import tables as data
from fat.training import models
from fat.features.store import FeatureStore
from fat.io import save_predictions, write_csv
from fat.layout import Layout
from fat.evaluation.predict import predict_plain
from fat.device import pick_device


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


def select(probs: np.ndarray, noisy_labels: np.ndarray, cfg: dict) -> tuple[np.ndarray, np.ndarray]:
    """(indices of kept clips, their targets). `noisy_labels` is the noisy set's multi-hot."""
    probs = np.asarray(probs, dtype=np.float64)
    noisy_labels = np.asarray(noisy_labels, dtype=np.float32)
    if probs.shape != noisy_labels.shape:
        raise ValueError(f"pseudo: predictions {probs.shape} and noisy labels {noisy_labels.shape} differ in shape")
    pred = predicted_labels(probs, float(cfg["label_threshold"]), int(cfg["top_k"]))
    conf = probs.max(axis=1)
    keep = conf >= float(cfg["min_confidence"])
    if cfg.get("agree", False):
        pred = pred * noisy_labels
        keep &= pred.sum(axis=1) > 0
    idx = np.flatnonzero(keep)
    idx = idx[np.argsort(-conf[idx], kind="stable")]
    cap = int(cfg.get("max_clips", 0) or 0)
    if cap > 0:
        idx = idx[:cap]
    idx = np.sort(idx)
    mode = cfg.get("targets", "hard")
    if mode == "hard":
        targets = pred[idx]
    elif mode == "soft":
        targets = sharpen(probs[idx], float(cfg.get("temperature", 1.0))).astype(np.float32)
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


def label_fold(fold: int, params: dict, layout: Layout | None = None) -> dict:
    """Score the noisy set with the fold-`fold` fine-tuned model, select clips and write
    data/pseudo/fold<k>/labels.csv (fname + class targets) and per_class.csv. Returns the report."""
    layout = layout or Layout()
    device = pick_device()
    classes = data.vocabulary(layout.raw)
    table = data.split_table(layout.raw, "noisy")
    noisy = FeatureStore.open(layout.features("noisy"))
    model, ckpt = models.load(layout.member("finetune", fold) / "model.pt", classes=classes)
    model.to(device)
    probs = predict_plain(model, noisy, noisy.position(table["fname"]), int(ckpt["crop_frames"]), device=device,
                          desc=f"pseudo@{fold} score noisy")
    noisy_y = data.multi_hot(table["labels"], classes)
    idx, targets = select(probs, noisy_y, params["pseudo"])
    rep = report(idx, targets, probs, noisy_y, classes)
    out = layout.pseudo(fold)
    save_predictions(out / "labels.csv", table["fname"].iloc[idx].tolist(), targets, classes)
    write_csv(out / "per_class.csv", per_class_table(rep))
    return {"fold": fold, **rep}

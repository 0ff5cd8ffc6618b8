"""lwlrap: label-weighted label-ranking average precision (the FAT2019 metric).

For every (clip, true class) pair, precision at that class's rank = (true classes of the clip
scored at or above it) / (classes scored at or above it). lwlrap is the mean over all pairs;
per class, the mean over that class's pairs, weighted by the class's share of positive labels.
Ties are ranked pessimistically (as sklearn's label_ranking_average_precision_score does).
"""
from __future__ import annotations

import numpy as np


def _count_at_or_above(scores: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """For every entry, how many entries of its row are >= it (its rank with ties counted
    pessimistically, as scipy.stats.rankdata(-scores, method="max", axis=1) gives; done in numpy,
    so that importing this module does not load scipy.stats, ~0.5 s in every stage)."""
    out = np.empty(scores.shape, dtype=np.int64)
    for i in range(0, len(scores), chunk):
        s = scores[i : i + chunk]
        out[i : i + chunk] = (s[:, None, :] >= s[:, :, None]).sum(axis=2)
    return out


def _check(truth, scores) -> tuple[np.ndarray, np.ndarray]:
    truth = np.asarray(truth)
    scores = np.asarray(scores, dtype=np.float64)
    if truth.ndim != 2 or scores.ndim != 2:
        raise ValueError(f"lwlrap needs 2-D arrays (clips x classes), got truth {truth.shape} "
                         f"and scores {scores.shape}")
    if truth.shape != scores.shape:
        raise ValueError(f"lwlrap: truth shape {truth.shape} does not match scores shape {scores.shape}")
    if not np.isin(truth, (0, 1)).all():
        raise ValueError("lwlrap: truth must contain only 0 and 1")
    if not np.isfinite(scores).all():
        raise ValueError("lwlrap: scores contain NaN or infinite values")
    if truth.sum() == 0:
        raise ValueError("lwlrap: truth has no positive labels")
    return truth.astype(bool), scores


def pair_precisions(truth, scores) -> np.ndarray:
    """n x C matrix: precision at rank for every true (clip, class) pair, 0 elsewhere."""
    truth, scores = _check(truth, scores)
    rank_all = _count_at_or_above(scores)  # classes scored >= this one
    true_only = np.where(truth, scores, -np.inf)
    rank_true = _count_at_or_above(true_only)  # true classes scored >= this one
    return np.where(truth, rank_true / rank_all, 0.0)


def lwlrap_per_class(truth, scores) -> tuple[np.ndarray, np.ndarray]:
    """(per-class lwlrap, per-class weight). Classes without positives get NaN and weight 0."""
    prec = pair_precisions(truth, scores)
    pos = np.asarray(truth, dtype=bool).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(pos > 0, prec.sum(axis=0) / pos, np.nan)
    return per_class, pos / pos.sum()


def lwlrap(truth, scores) -> float:
    """Overall lwlrap (= per-class lwlrap weighted by each class's share of positive labels)."""
    prec = pair_precisions(truth, scores)
    return float(prec.sum() / np.asarray(truth, dtype=bool).sum())

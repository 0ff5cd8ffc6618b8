"""Multilabel-stratified K-fold assignment of the curated set (iterative stratification)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

from fat.data import tables as data


def make_folds(fnames, targets: np.ndarray, n_folds: int, seed: int) -> pd.DataFrame:
    """`fname, fold` with every clip in exactly one validation fold, label balance kept per fold."""
    targets = np.asarray(targets)
    if n_folds < 2:
        raise ValueError(f"cv.n_folds must be at least 2, got {n_folds}")
    if len(fnames) < n_folds:
        raise ValueError(f"cannot split {len(fnames)} clips into {n_folds} folds")
    fold = np.full(len(fnames), -1, dtype=int)
    skf = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, val) in enumerate(skf.split(np.zeros(len(fnames)), targets)):
        fold[val] = k
    return pd.DataFrame({"fname": list(fnames), "fold": fold})


def curated_folds(raw_dir: str | Path, n_folds: int, seed: int) -> pd.DataFrame:
    """Folds of the curated split of a FAT2019-layout directory, stratified on its labels."""
    table = data.split_table(raw_dir, "curated")
    y = data.multi_hot(table["labels"], data.vocabulary(raw_dir))
    return make_folds(table["fname"].tolist(), y, n_folds, seed)

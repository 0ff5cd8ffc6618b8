"""Multilabel-stratified K-fold assignment of the curated set (iterative stratification).

With a group column (`cv.group_column`: clips cut from one recording, one speaker, …), whole groups
are assigned: the groups' label counts are stratified with the same multilabel stratifier, so
each group lands in one fold and label balance is kept as far as the groups allow."""
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


def make_group_folds(fnames, targets: np.ndarray, groups, n_folds: int, seed: int) -> pd.DataFrame:
    """`fname, fold` keeping every group in one fold: groups are the units of the multilabel
    stratification (each described by its clips' label counts, as 0/1 label presence)."""
    targets = np.asarray(targets)
    groups = pd.Series(list(groups), dtype=str)
    if len(groups) != len(fnames):
        raise ValueError(f"{len(groups)} group values for {len(fnames)} clips")
    codes, uniq = pd.factorize(groups, sort=True)
    if len(uniq) < n_folds:
        raise ValueError(f"cannot split {len(uniq)} groups into {n_folds} folds")
    presence = np.zeros((len(uniq), targets.shape[1]))
    np.add.at(presence, codes, targets)
    group_fold = make_folds(list(uniq), (presence > 0).astype(int), n_folds, seed)["fold"].to_numpy()
    return pd.DataFrame({"fname": list(fnames), "fold": group_fold[codes]})


def read_groups(raw_dir: str | Path, column: str, fnames) -> list[str]:
    """The `column` of train_curated.csv for `fnames`; a missing column or an empty value is an error."""
    path = Path(raw_dir) / data.SPLITS["curated"][0]
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    if column not in df.columns:
        raise ValueError(f"{path}: cv.group_column {column!r} is not a column (columns: {', '.join(df.columns)})")
    values = df.set_index("fname")[column].reindex(list(fnames))
    empty = [(i + 2, f) for i, (f, v) in enumerate(zip(fnames, values)) if not str(v).strip() or pd.isna(v)]
    if empty:
        rows = ", ".join(f"row {r} ({f})" for r, f in empty[:5])
        raise ValueError(f"{path}: {len(empty)} clips have an empty {column!r} value (cv.group_column): {rows}")
    return [str(v).strip() for v in values]


def curated_folds(raw_dir: str | Path, n_folds: int, seed: int, group_column: str | None = None) -> pd.DataFrame:
    """Folds of the curated split of a FAT2019-layout directory, stratified on its labels; with
    `group_column`, clips sharing a value of that column of train_curated.csv share a fold."""
    table = data.split_table(raw_dir, "curated")
    y = data.multi_hot(table["labels"], data.vocabulary(raw_dir))
    if group_column:
        groups = read_groups(raw_dir, group_column, table["fname"].tolist())
        return make_group_folds(table["fname"].tolist(), y, groups, n_folds, seed)
    return make_folds(table["fname"].tolist(), y, n_folds, seed)

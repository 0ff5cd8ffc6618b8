"""What fold member k trains and is validated on: the curated clips outside / inside fold k (from
data/folds.csv), its pseudo-labelled noisy clips, and its seed."""
from __future__ import annotations

import numpy as np
import pandas as pd

from fat.data import tables as data
from fat.features.store import FeatureStore
from fat.io import load_predictions
from fat.layout import Layout, member_seed  # noqa: F401  (re-exported; in fat.layout for the torch-free model card)


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

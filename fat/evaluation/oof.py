"""A family's written predictions, read and checked once for scoring and ensembling: the
out-of-fold predictions of every fold (together they cover each curated clip once) and each fold
model's test predictions (the same clips in every fold). Reads CSVs only (no torch)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fat.io import load_predictions
from fat.layout import Layout


@dataclass
class FamilyPredictions:
    folds: list[int]
    oof: list[tuple[list[str], np.ndarray]]  # per fold: (fnames, probabilities)
    test_fnames: list[str]
    test: list[np.ndarray]  # per fold model, rows in test_fnames order

    @property
    def oof_fnames(self) -> list[str]:
        return [f for fn, _ in self.oof for f in fn]

    @property
    def oof_probs(self) -> np.ndarray:
        return np.concatenate([p for _, p in self.oof])


PLAIN_COPY = "plain_"  # predict@<family> copies a member's plain oof.csv / test.csv as plain_oof.csv / plain_test.csv


def load_family(family: str, folds: list[int], layout: Layout, tta: bool, classes: list[str],
                from_preds: bool = False) -> FamilyPredictions:
    """The predictions of `family`'s fold members: plain (data/models/<family>/fold<k>) or
    test-time-augmented (`tta`: data/preds/<family>/fold<k>). With `from_preds`, the plain ones
    are read from the copies in data/preds/<family>/fold<k> (what the `ensemble` stage depends on).
    Raises ValueError naming the file when the folds' out-of-fold clips overlap or their test
    clips differ."""
    where = layout.preds if tta or from_preds else layout.member
    prefix = PLAIN_COPY if from_preds and not tta else ""
    oof, tests, test_fn = [], [], None
    for k in folds:
        oof.append(load_predictions(where(family, k) / f"{prefix}oof.csv", classes))
        tfn, tp = load_predictions(where(family, k) / f"{prefix}test.csv", classes)
        if test_fn is not None and tfn != test_fn:
            raise ValueError(f"{where(family, k) / f'{prefix}test.csv'}: test clips differ from fold {folds[0]}")
        test_fn = tfn
        tests.append(tp)
    out = FamilyPredictions(list(folds), oof, test_fn, tests)
    fnames = out.oof_fnames
    if len(set(fnames)) != len(fnames):
        raise ValueError(f"{family}: out-of-fold predictions overlap between folds")
    return out

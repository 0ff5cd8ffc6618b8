"""Scores of a model family from its written predictions: per-fold and overall out-of-fold lwlrap,
plain and test-time-augmented, and the test lwlrap of the fold-averaged test predictions.

It reads prediction CSVs only (no torch); each predict@<family> stage scores its family after its
TTA pass (metrics/<family>.json).
"""
from __future__ import annotations

import numpy as np

from fat import metrics
from fat.data import tables as data
from fat.evaluation.oof import load_family
from fat.layout import Layout


def score_family(family: str, folds: list[int], layout: Layout = Layout(), from_preds: bool = False) -> dict:
    """Per-fold and overall OOF lwlrap of a family, plain and with TTA, plus the test lwlrap of
    the fold-averaged test predictions when test labels exist. `from_preds`: the plain predictions
    from predict@<family>'s copies in data/preds (fat.evaluation.oof.load_family)."""
    classes = data.vocabulary(layout.raw)
    truth = data.split_table(layout.raw, "curated").set_index("fname")
    test = data.split_table(layout.raw, "test").set_index("fname") if data.has_test_labels(layout.raw) else None
    out: dict = {"folds": {f"fold{k}": {} for k in folds}}
    for variant in ("plain", "tta"):
        suffix = "" if variant == "plain" else "_tta"
        preds = load_family(family, folds, layout, tta=variant == "tta", classes=classes, from_preds=from_preds)
        for k, (fn, p) in zip(folds, preds.oof):
            y = data.multi_hot(truth.loc[fn, "labels"], classes)
            out["folds"][f"fold{k}"][variant] = round(metrics.lwlrap(y, p), 6)
        fn_all = preds.oof_fnames
        y_all = data.multi_hot(truth.loc[fn_all, "labels"], classes)
        out[f"oof_lwlrap{suffix}"] = round(metrics.lwlrap(y_all, preds.oof_probs), 6)
        if test is not None:
            p = np.mean(preds.test, axis=0)
            y = data.multi_hot(test.loc[preds.test_fnames, "labels"], classes)
            out[f"test_lwlrap{suffix}"] = round(metrics.lwlrap(y, p), 6)
    out["oof_clips"] = len(fn_all)
    out["folds"] = out.pop("folds")  # keep the per-fold table last
    return out

"""Scores of a model family from its written predictions: per-fold and overall out-of-fold lwlrap,
plain and test-time-augmented, and the test lwlrap of the fold-averaged test predictions.

It reads prediction CSVs only (no torch), so the `score` stages start in about a second.
"""
from __future__ import annotations

import numpy as np

from fat import metrics
from fat.data import tables as data
from fat.io import load_predictions
from fat.layout import Layout


def score_family(family: str, folds: list[int], layout: Layout = Layout()) -> dict:
    """Per-fold and overall OOF lwlrap of a family, plain and with TTA, plus the test lwlrap of
    the fold-averaged test predictions when test labels exist."""
    classes = data.vocabulary(layout.raw)
    truth = data.split_table(layout.raw, "curated").set_index("fname")
    test = data.split_table(layout.raw, "test").set_index("fname") if data.has_test_labels(layout.raw) else None
    out: dict = {"folds": {f"fold{k}": {} for k in folds}}
    for variant, where in (("plain", layout.member), ("tta", layout.preds)):
        suffix = "" if variant == "plain" else "_tta"
        fn_all, p_all, tests = [], [], []
        for k in folds:
            fn, p = load_predictions(where(family, k) / "oof.csv", classes)
            out["folds"][f"fold{k}"][variant] = round(metrics.lwlrap(data.multi_hot(truth.loc[fn, "labels"], classes), p), 6)
            fn_all += fn
            p_all.append(p)
            tests.append(load_predictions(where(family, k) / "test.csv", classes))
        if len(set(fn_all)) != len(fn_all):
            raise ValueError(f"{family}: out-of-fold predictions overlap between folds")
        y_all = data.multi_hot(truth.loc[fn_all, "labels"], classes)
        out[f"oof_lwlrap{suffix}"] = round(metrics.lwlrap(y_all, np.concatenate(p_all)), 6)
        if any(t[0] != tests[0][0] for t in tests):
            raise ValueError(f"{family}: the folds' test predictions list different clips")
        if test is not None:
            fn = tests[0][0]
            p = np.mean([t[1] for t in tests], axis=0)
            out[f"test_lwlrap{suffix}"] = round(metrics.lwlrap(data.multi_hot(test.loc[fn, "labels"], classes), p), 6)
    out["oof_clips"] = len(fn_all)
    out["folds"] = out.pop("folds")  # keep the per-fold table last
    return out

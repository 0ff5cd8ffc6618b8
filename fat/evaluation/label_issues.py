"""Label-issue report: the curated and noisy clips whose given labels the models disagree with,
ranked, as suggested corrections in the `data.corrections` format (fat/data/corrections.py).

Predictions come from the fine-tuned family (`finetune@k`, the family `pseudo@k` labels the noisy
set with):
  - curated clips: its out-of-fold predictions (fold k's model never saw fold k's clips);
  - noisy clips: the mean of its fold models' probabilities, as pseudo@k scored the noisy set with
    them (data/pseudo/fold<k>/scores.csv: no model runs here). They fine-tune on curated clips
    only, from weights pretrained on the noisy set with its given labels, so those labels had a few
    epochs of influence: docs/label-issues.md has the precision and recall this gives on real recordings.
cleanlab's multi-label `find_label_issues` flags the clips (per class, from the confident joint of
given labels and predictions), `get_label_quality_scores` scores every clip (0..1, low = the
given labels are likely wrong); each split is examined on its own (their noise rates differ), and
the flagged clips of both are written in one table, lowest score first.

Each row suggests `relabel` (to the model's labels: classes with p >= `label_threshold`, at most
`top_k`, the top class always) when the model's top probability reaches `relabel_min_p`, else
`drop`. The table is a suggestion to review: copy the rows you accept into your own corrections
file and point `data.corrections` at it (docs/label-issues.md).

`evaluate` scores a table against a provenance CSV (the true labels of every clip): precision and
recall of the top-N suggestions against the clips whose given labels are wrong.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fat.data import files
from fat.data import tables as data
from fat.errors import DataError, rows
from fat.io import load_predictions

COLUMNS = ["fname", "action", "labels", "note", "split", "given", "score"]


def model_labels(probs: np.ndarray, label_threshold: float, top_k: int) -> np.ndarray:
    """n x C 0/1 matrix: classes with p >= label_threshold among a clip's top_k, the top class always."""
    probs = np.asarray(probs, dtype=np.float64)
    order = np.argsort(-probs, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(probs.shape[1]), probs.shape).copy(), axis=1)
    return ((rank == 0) | ((probs >= label_threshold) & (rank < top_k))).astype(np.float32)


def find_issues(given: np.ndarray, probs: np.ndarray,
                filter_by: str = "prune_by_noise_rate") -> tuple[np.ndarray, np.ndarray]:
    """(flagged mask, label quality score per clip) for multi-hot `given` labels and probabilities
    `probs` (n x C) from models that never trained on `given`. Deterministic (one process). A class
    that every clip carries is left out of the flagging (cleanlab judges each class against clips
    without it); with no class left, nothing is flagged and every score is 1."""
    from cleanlab.multilabel_classification import filter as cl_filter
    from cleanlab.multilabel_classification import rank as cl_rank

    given = np.asarray(given)
    probs = np.asarray(probs, dtype=np.float64)
    if given.shape != probs.shape:
        raise ValueError(f"label issues: labels {given.shape} and predictions {probs.shape} differ in shape")
    empty = np.flatnonzero(given.sum(axis=1) == 0)
    if len(empty):
        raise ValueError(f"label issues: {len(empty)} clips have no label (rows {empty[:10].tolist()})")
    judged = ~given.astype(bool).all(axis=0)  # a class every clip carries has no negatives to compare with
    if not judged.any():
        return np.zeros(len(given), dtype=bool), np.ones(len(given))
    labels = [np.flatnonzero(r).tolist() for r in given[:, judged]]
    scores = cl_rank.get_label_quality_scores(labels, probs[:, judged])
    flagged = cl_filter.find_label_issues(labels, probs[:, judged], filter_by=filter_by, n_jobs=1)
    return np.asarray(flagged, dtype=bool), np.asarray(scores, dtype=np.float64)


def issue_table(split: str, fnames: list[str], given: np.ndarray, probs: np.ndarray, classes: list[str],
                flagged: np.ndarray, scores: np.ndarray, *, label_threshold: float, top_k: int,
                relabel_min_p: float) -> pd.DataFrame:
    """The `flagged` clips of one split (see find_issues) as suggestion rows (COLUMNS), lowest score first."""
    pred = model_labels(probs, label_threshold, top_k)
    out = []
    for i in np.flatnonzero(flagged):
        mine = [classes[c] for c in np.flatnonzero(pred[i])]
        theirs = [classes[c] for c in np.flatnonzero(given[i])]
        top = int(np.argmax(probs[i]))
        if set(mine) == set(theirs) and probs[i, top] >= relabel_min_p:
            continue  # the model's labels are the given ones: nothing to suggest
        action = "relabel" if probs[i, top] >= relabel_min_p else "drop"
        given_p = ", ".join(f"{classes[c]} {probs[i, c]:.2f}" for c in np.flatnonzero(given[i]))
        note = f"{split}: model top {classes[top]} p={probs[i, top]:.2f}; given {given_p}"
        out.append({"fname": fnames[i], "action": action, "labels": ",".join(mine) if action == "relabel" else "",
                    "note": note, "split": split, "given": ",".join(theirs), "score": round(float(scores[i]), 6)})
    df = pd.DataFrame(out, columns=COLUMNS)
    return df.sort_values(["score", "fname"], kind="stable").reset_index(drop=True)


def combine(tables: list[pd.DataFrame]) -> pd.DataFrame:
    df = pd.concat([t for t in tables if len(t)], ignore_index=True) if any(len(t) for t in tables) else \
        pd.DataFrame(columns=COLUMNS)
    return df.sort_values(["score", "fname"], kind="stable").reset_index(drop=True)


def summary(table: pd.DataFrame, examined: dict[str, int]) -> dict:
    """Counts per split and action (the stage's metrics JSON)."""
    out = {"examined": dict(examined), "suggested": int(len(table))}
    for split in examined:
        part = table[table["split"] == split]
        out[split] = {"suggested": int(len(part)), "share": round(len(part) / max(examined[split], 1), 4),
                      **{a: int((part["action"] == a).sum()) for a in ("relabel", "drop")}}
    return out


def figure(table: pd.DataFrame, scores: dict[str, np.ndarray], classes: list[str]) -> Figure:
    """Left: suggestions per given class and split; right: label quality scores of all clips per
    split, the suggested ones marked."""
    fig = Figure(figsize=(11, max(3.5, 0.28 * len(classes) + 1.2)))
    ax, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    splits = list(scores)
    colors = {"curated": "#1f77b4", "noisy": "#ff7f0e"}
    y = np.arange(len(classes))
    left = np.zeros(len(classes))
    for split in splits:
        part = table[table["split"] == split]
        counts = np.array([sum(c in data.split_labels(g) for g in part["given"]) for c in classes], dtype=float)
        ax.barh(y, counts, left=left, color=colors.get(split), label=split)
        left += counts
    ax.set_yticks(y, classes, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("suggested corrections (by given label)")
    ax.legend(loc="lower right")
    bins = np.linspace(0, 1, 26)
    for split in splits:
        ax2.hist(scores[split], bins=bins, alpha=0.5, color=colors.get(split), label=f"{split} (all)")
    for split in splits:
        s = table.loc[table["split"] == split, "score"].to_numpy(dtype=float)
        ax2.plot(s, np.zeros_like(s), "|", color=colors.get(split), markersize=14)
    ax2.set_xlabel("label quality score (| = suggested)")
    ax2.set_ylabel("clips")
    ax2.legend()
    fig.suptitle(f"Label-issue report: {len(table)} suggestions")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- evaluation
def _label_set(s) -> frozenset:
    return frozenset(data.split_labels(s))


def read_issues(path: str | Path) -> pd.DataFrame:
    """A label-issue table (COLUMNS), checked: fnames present and unique, scores numeric."""
    path = Path(path)
    df = files.read_csv(path, required=("fname", "action", "labels"), expected=",".join(COLUMNS))
    problems = []
    blank = [int(i) for i in df.index[(df["fname"].str.strip() == "").to_numpy()]]
    if blank:
        problems.append(f"{path}: column fname: empty on line(s) {blank[:10]}")
    dup = df["fname"][df["fname"].duplicated()].unique()
    if len(dup):
        problems.append(f"{path}: column fname: {len(dup)} duplicate fnames: {rows(dup)}")
    if "score" in df.columns:
        bad = df[pd.to_numeric(df["score"], errors="coerce").isna()]
        if len(bad):
            problems.append(f"{path}: column score: not a number on line(s) {[int(i) for i in bad.index[:10]]} "
                            f"({rows(bad['fname'])})")
    if problems:
        raise DataError(*problems)
    return df.reset_index(drop=True)


def read_provenance(path: str | Path) -> pd.DataFrame:
    """fname, split, true and given labels per clip (the dev-set builder's provenance.csv)."""
    path = Path(path)
    df = files.read_csv(path, required=("split", "fname", "true_labels", "given_labels"),
                        expected="split,fname,true_labels,given_labels,…")
    empty = df[df["true_labels"].str.strip() == ""]
    if len(empty):
        raise DataError(f"{path}: column true_labels: empty on line(s) {[int(i) for i in empty.index[:10]]} "
                        f"({rows(empty['fname'])})")
    dup = df["fname"][df["fname"].duplicated()].unique()
    if len(dup):
        raise DataError(f"{path}: column fname: {len(dup)} duplicate fnames: {rows(dup)}")
    return df.set_index("fname")


def evaluate(issues: pd.DataFrame, provenance: pd.DataFrame, tops: list[int], *, issues_path: str = "issues",
             splits: tuple[str, ...] = ("train_curated", "train_noisy")) -> dict:
    """Precision and recall of the top-N suggestions against the clips of `splits` whose given
    labels differ from their true labels; and how often a `relabel` suggestion is the true label set.
    Raises DataError naming the file and rows when a suggested fname is not in the provenance."""
    missing = issues.loc[~issues["fname"].isin(provenance.index), "fname"]
    if len(missing):
        raise DataError(f"{issues_path}: column fname: {len(missing)} suggested clips are not in the provenance: "
                        f"{rows(missing)}")
    prov = provenance[provenance["split"].isin(splits)]
    wrong = {f for f, t, g in zip(prov.index, prov["true_labels"], prov["given_labels"])
             if _label_set(t) != _label_set(g)}
    out = {"corrupted_clips": len(wrong), "clips": int(len(prov)), "suggestions": int(len(issues)),
           "per_split_corrupted": {s: int(sum(provenance.at[f, "split"] == s for f in wrong)) for s in splits},
           "top": []}
    for n in tops:
        if n < 1:
            raise ValueError(f"top-N must be >= 1, got {n}")
        top = issues.iloc[:n]
        hit = top["fname"].isin(wrong).to_numpy()
        relabel = top[(top["action"] == "relabel").to_numpy() & hit]
        right = sum(_label_set(lab) == _label_set(provenance.at[f, "true_labels"])
                    for f, lab in zip(relabel["fname"], relabel["labels"]))
        out["top"].append({
            "n": int(n), "taken": int(len(top)), "hits": int(hit.sum()),
            "precision": round(float(hit.mean()), 4) if len(top) else None,
            "recall": round(hit.sum() / len(wrong), 4) if wrong else None,
            "relabel_exact": f"{right}/{len(relabel)}",
        })
    return out


# ----------------------------------------------------------------------------- the stage's work
FAMILY = "finetune"  # the fold family whose predictions judge the given labels


def family_predictions(layout, folds: list[int], classes: list[str], split: str) -> tuple[list[str], np.ndarray]:
    """The predictions that judge `split`'s given labels: for curated, the fine-tuned members'
    out-of-fold predictions; for noisy, the mean of the fine-tuned fold models' probabilities over
    the noisy set (plain windows, no TTA), as pseudo@k wrote them (data/pseudo/fold<k>/scores.csv)."""
    from fat.evaluation.oof import load_family

    if split == "curated":
        fam = load_family(FAMILY, folds, layout, tta=False, classes=classes)
        return fam.oof_fnames, fam.oof_probs
    fnames = data.split_table(layout.raw, split)["fname"].tolist()
    probs = []
    for k in folds:
        path = layout.pseudo_scores(k)
        got, p = load_predictions(path, classes)
        if list(got) != fnames:
            raise ValueError(f"{path}: its clips are not the {len(fnames)} clips of train_{split}.csv, in that order "
                             f"(rerun pseudo@{k}: its scores predate the current noisy set)")
        probs.append(p)
    return fnames, np.mean(probs, axis=0)


def build(cfg, folds: list[int], layout) -> tuple[pd.DataFrame, dict, Figure]:
    """The suggestion table, its summary and its figure for the splits of `cfg` (a LabelIssues)."""
    classes = data.vocabulary(layout.raw)
    tables, scores, examined = [], {}, {}
    for split in cfg.splits:
        fnames, probs = family_predictions(layout, folds, classes, split)
        given_table = data.split_table(layout.raw, split).set_index("fname")
        given = data.multi_hot(given_table.loc[fnames, "labels"], classes)
        flagged, scores[split] = find_issues(given, probs, cfg.filter_by)
        tables.append(issue_table(split, fnames, given, probs, classes, flagged, scores[split],
                                  label_threshold=cfg.label_threshold, top_k=cfg.top_k,
                                  relabel_min_p=cfg.relabel_min_p))
        examined[split] = len(fnames)
    table = combine(tables)
    return table, summary(table, examined), figure(table, scores, classes)

"""The FAT2019 data layout: class vocabulary, label CSVs, multi-hot targets."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from fat.data import files
from fat.errors import DataError, rows

# split name -> (labels CSV, audio folder). Test labels are optional.
SPLITS = {
    "curated": ("train_curated.csv", "train_curated"),
    "noisy": ("train_noisy.csv", "train_noisy"),
    "test": ("test_labels.csv", "test"),
}
SAMPLE_SUBMISSION = "sample_submission.csv"


def vocabulary(raw_dir: str | Path) -> list[str]:
    """The class vocabulary: the columns of `sample_submission.csv` after `fname`. Raises DataError
    for a missing or unreadable file and for empty, duplicated, reserved or space-padded names."""
    path = Path(raw_dir) / SAMPLE_SUBMISSION
    if not os.path.lexists(path):
        raise DataError(f"{path}: missing; the class vocabulary is read from its columns")
    lines = files.read_rows(path)
    if not lines:
        raise DataError(f"{path}: empty file; expected a header 'fname,<class>,<class>,…'")
    cols = lines[0][1]
    if not cols or cols[0].strip() != "fname" or len(cols) < 3:
        raise DataError(f"{path}: expected columns 'fname' followed by one column per class, got {cols[:5]}")
    problems = files.header_problems(path, cols)
    padded = [c for c in cols[1:] if c != c.strip() and c.strip()]
    if padded:
        problems.append(f"{path}: class names with leading or trailing spaces: {padded[:10]}; "
                        f"labels are matched exactly, so remove the spaces")
    if problems:
        raise DataError(*problems)
    return cols[1:]


def split_labels(labels: str) -> list[str]:
    return [s.strip() for s in str(labels).split(",") if s.strip()]


def read_labels(path: str | Path, classes: list[str]) -> pd.DataFrame:
    """Read a `fname,labels` CSV; every label must be in the vocabulary (DataError naming the rows)."""
    path = Path(path)
    df = files.read_csv(path, required=("fname", "labels"))
    if list(df.columns[:2]) != ["fname", "labels"]:
        raise DataError(f"{path}: expected columns 'fname,labels', got {','.join(df.columns)}")
    problem = unknown_labels(df, classes, f"the vocabulary of {SAMPLE_SUBMISSION}")
    if problem:
        raise DataError(f"{path}: {problem}")
    return df[["fname", "labels"]].reset_index(drop=True)


def unknown_labels(df: pd.DataFrame, classes: list[str], vocab: str = "the vocabulary") -> str | None:
    """'column labels: N label(s) not in <vocab>: 'X' on 3 rows: 'a.wav', …' for a fname,labels
    table: each unknown label with the fnames that carry it (first 10 labels, 10 fnames each); or None."""
    known = set(classes)
    carriers: dict[str, list[str]] = {}
    for fname, labs in zip(df["fname"], df["labels"]):
        for lab in split_labels(labs):
            if lab not in known:
                carriers.setdefault(lab, []).append(fname)
    if not carriers:
        return None
    labels = sorted(carriers)
    more = f"; … ({len(labels) - 10} more labels)" if len(labels) > 10 else ""
    return (f"column labels: {len(labels)} label(s) not in {vocab}: "
            + "; ".join(f"{lab!r} on {rows(carriers[lab])}" for lab in labels[:10]) + more)


def multi_hot(labels: pd.Series, classes: list[str]) -> np.ndarray:
    """n x C float32 0/1 matrix from comma-joined label strings."""
    pos = {c: i for i, c in enumerate(classes)}
    y = np.zeros((len(labels), len(classes)), dtype=np.float32)
    for r, labs in enumerate(labels):
        for lab in split_labels(labs):
            y[r, pos[lab]] = 1.0
    return y


def split_table(raw_dir: str | Path, split: str) -> pd.DataFrame | None:
    """`fname,labels` for a split; for test without labels, fnames from sample_submission."""
    raw_dir = Path(raw_dir)
    csv_name, _ = SPLITS[split]
    path = raw_dir / csv_name
    if os.path.lexists(path):
        return read_labels(path, vocabulary(raw_dir))
    if split == "test":
        df = files.read_csv(raw_dir / SAMPLE_SUBMISSION, required=("fname",))[["fname"]].reset_index(drop=True)
        df["labels"] = ""
        return df
    raise DataError(f"{path}: missing")


def audio_dir(raw_dir: str | Path, split: str) -> Path:
    return Path(raw_dir) / SPLITS[split][1]


def has_test_labels(raw_dir: str | Path) -> bool:
    return os.path.lexists(Path(raw_dir) / SPLITS["test"][0])

"""The FAT2019 data layout: class vocabulary, label CSVs, multi-hot targets."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


# split name -> (labels CSV, audio folder). Test labels are optional.
SPLITS = {
    "curated": ("train_curated.csv", "train_curated"),
    "noisy": ("train_noisy.csv", "train_noisy"),
    "test": ("test_labels.csv", "test"),
}
SAMPLE_SUBMISSION = "sample_submission.csv"


def vocabulary(raw_dir: str | Path) -> list[str]:
    """The class vocabulary: the columns of `sample_submission.csv` after `fname`."""
    path = Path(raw_dir) / SAMPLE_SUBMISSION
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; the class vocabulary is read from its columns")
    try:
        cols = list(pd.read_csv(path, nrows=0).columns)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: empty file; expected a header 'fname,<class>,<class>,…'") from None
    if not cols or cols[0] != "fname" or len(cols) < 3:
        raise ValueError(f"{path}: expected columns 'fname' followed by one column per class, got {cols[:5]}")
    return cols[1:]


def split_labels(labels: str) -> list[str]:
    return [s.strip() for s in str(labels).split(",") if s.strip()]


def read_labels(path: str | Path, classes: list[str]) -> pd.DataFrame:
    """Read a `fname,labels` CSV; every label must be in the vocabulary."""
    path = Path(path)
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    if list(df.columns[:2]) != ["fname", "labels"]:
        raise ValueError(f"{path}: expected columns 'fname,labels', got {','.join(df.columns)}")
    known = set(classes)
    bad = sorted({lab for labs in df["labels"] for lab in split_labels(labs)} - known)
    if bad:
        raise ValueError(f"{path}: labels not in the vocabulary of {SAMPLE_SUBMISSION}: {bad[:10]}")
    return df[["fname", "labels"]]


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
    if path.exists():
        return read_labels(path, vocabulary(raw_dir))
    if split == "test":
        df = pd.read_csv(raw_dir / SAMPLE_SUBMISSION, usecols=["fname"], dtype=str)
        df["labels"] = ""
        return df
    raise FileNotFoundError(f"{path}: missing")


def audio_dir(raw_dir: str | Path, split: str) -> Path:
    return Path(raw_dir) / SPLITS[split][1]


def has_test_labels(raw_dir: str | Path) -> bool:
    return (Path(raw_dir) / SPLITS["test"][0]).exists()

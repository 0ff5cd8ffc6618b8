"""Atomic output helpers: every file a stage writes goes to a temp name first and is renamed into
place only when complete, so a killed stage never leaves a half-written output behind."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary sibling path; on success rename it onto `path` (file or directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if path.is_dir() and not path.is_symlink():  # directories cannot be replaced in one step:
            old = tmp / ".old"  # move the old one aside first, delete it after the swap
            os.replace(path, old)
            os.replace(target, path)
        else:  # files (and symlinks): one atomic rename over the old one
            os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_csv(path: str | Path, df: pd.DataFrame, **kwargs) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, **kwargs)


def save_predictions(path: str | Path, fnames, probs: np.ndarray, classes) -> None:
    """Predictions in Kaggle submission format: `fname` + one probability column per class."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (len(fnames), len(classes)):
        raise ValueError(
            f"{path}: predictions of shape {probs.shape} do not match "
            f"{len(fnames)} clips x {len(classes)} classes"
        )
    df = pd.DataFrame(probs, columns=list(classes))
    df.insert(0, "fname", list(fnames))
    write_csv(path, df, float_format="%.6g")


def load_predictions(path: str | Path, classes=None) -> tuple[list[str], np.ndarray]:
    df = pd.read_csv(path)
    if "fname" not in df.columns:
        raise ValueError(f"{path}: prediction file has no 'fname' column")
    cols = [c for c in df.columns if c != "fname"]
    if classes is not None and list(classes) != cols:
        raise ValueError(f"{path}: class columns do not match the vocabulary")
    return df["fname"].tolist(), df[cols].to_numpy(dtype=np.float64)

"""The FAT2019 data layout: vocabulary, label CSVs, multi-hot targets, and `prepare` (bringing a
source — the embedded generator or a directory in the FAT2019 layout — into `data/raw/`)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from fat.log import progress

from fat import synth
from fat.io import atomic_path

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
    cols = list(pd.read_csv(path, nrows=0).columns)
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


# ----------------------------------------------------------------------------- prepare
def validate_layout(src: str | Path) -> list[str]:
    """All problems with a FAT2019-layout directory, each naming the file. Empty list: valid."""
    src = Path(src)
    problems = []
    if not src.is_dir():
        return [f"{src}: not a directory"]
    try:
        classes = vocabulary(src)
    except (FileNotFoundError, ValueError) as e:
        return [str(e)]
    for split, (csv_name, folder) in SPLITS.items():
        csv = src / csv_name
        if not csv.exists():
            if split != "test":
                problems.append(f"{csv}: missing")
            continue
        if not (src / folder).is_dir():
            problems.append(f"{src / folder}: missing audio folder for {csv_name}")
            continue
        try:
            df = read_labels(csv, classes)
        except ValueError as e:
            problems.append(str(e))
            continue
        dup = df["fname"][df["fname"].duplicated()].unique()
        if len(dup):
            problems.append(f"{csv}: duplicate fnames {list(dup[:5])}")
        present = {p.name for p in (src / folder).iterdir()}
        missing = [f for f in df["fname"] if f not in present]
        if missing:
            problems.append(f"{csv}: {len(missing)} rows have no file in {folder}/, e.g. {missing[:3]}")
        empty = df["fname"][df["labels"].map(lambda s: not split_labels(s))]
        if len(empty):
            problems.append(f"{csv}: {len(empty)} rows without labels, e.g. {list(empty[:3])}")
    if not (src / "test").is_dir():
        problems.append(f"{src / 'test'}: missing test audio folder")
    return problems


def _link_or_copy(src: Path, dst: Path) -> str:
    try:
        os.link(src, dst)
        return "hardlink"
    except OSError:
        shutil.copy2(src, dst)
        return "copy"


def import_directory(src: str | Path, out_dir: Path) -> dict:
    """Bring a FAT2019-layout directory into `out_dir`, hard-linking files where possible."""
    src = Path(src)
    problems = validate_layout(src)
    if problems:
        raise ValueError(f"data.source {src} is not a valid FAT2019 layout:\n  " + "\n  ".join(problems))
    out_dir.mkdir(parents=True)
    modes: dict[str, int] = {}
    files = [src / SAMPLE_SUBMISSION] + [src / c for c, _ in SPLITS.values() if (src / c).exists()]
    for f in files:
        shutil.copy2(f, out_dir / f.name)
    for split, (_, folder) in SPLITS.items():
        (out_dir / folder).mkdir()
        df = split_table(src, split)
        for fname in progress(df["fname"], desc=f"import {split}"):
            mode = _link_or_copy(src / folder / fname, out_dir / folder / fname)
            modes[mode] = modes.get(mode, 0) + 1
    return {"source": str(src), "files": modes}


def prepare(source: str, out_dir: str | Path, synth_cfg: dict, seed: int, n_jobs: int = 0) -> dict:
    """Write `out_dir` (data/raw) atomically from `source` ('synthetic' or a directory)."""
    with atomic_path(out_dir) as tmp:
        if source == "synthetic":
            stats = synth.generate(tmp, synth_cfg, seed=seed, n_jobs=n_jobs)
            stats["source"] = "synthetic"
        else:
            stats = import_directory(Path(source).expanduser(), tmp)
        stats.update(summarize(tmp))
    return stats


def summarize(raw_dir: str | Path) -> dict:
    classes = vocabulary(raw_dir)
    out = {"classes": len(classes)}
    for split in SPLITS:
        df = split_table(raw_dir, split)
        n_labels = df["labels"].map(lambda s: len(split_labels(s)))
        out[f"{split}_clips"] = int(len(df))
        if n_labels.sum():
            out[f"{split}_labels_per_clip"] = round(float(n_labels.mean()), 3)
    return out

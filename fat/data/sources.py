"""The directory layouts `data.source` may point at, read into one in-memory form.

Two layouts are recognised:

* **kaggle** — the competition download, unzipped: `train_curated.csv`, `train_noisy.csv`,
  `sample_submission.csv` (+ optional `test_labels.csv`) beside `train_curated/`, `train_noisy/`,
  `test/`. This is also the layout of `data/raw/` itself.
* **zenodo** — the post-competition release FSDKaggle2019 (record 3612637), unzipped (e.g. by
  `fat fetch`): `FSDKaggle2019.meta/` with `train_curated_post_competition.csv`,
  `train_noisy_post_competition.csv`, `test_post_competition_scoring_clips.csv` (test labels) and
  `vocabulary.csv`, beside `FSDKaggle2019.audio_train_curated/`, `…audio_train_noisy/`, `…audio_test/`.

Reading checks the tables (columns, empty files, duplicate fnames, labels outside the vocabulary,
rows without labels) and reports every problem, each naming its file; stray spaces around labels and
fnames are normalised and counted, not treated as errors.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from fat.data import tables as data

ZENODO_META = "FSDKaggle2019.meta"
ZENODO_TABLES = {  # split -> (meta CSV, audio folder)
    "curated": ("train_curated_post_competition.csv", "FSDKaggle2019.audio_train_curated"),
    "noisy": ("train_noisy_post_competition.csv", "FSDKaggle2019.audio_train_noisy"),
    "test": ("test_post_competition_scoring_clips.csv", "FSDKaggle2019.audio_test"),
}
ZENODO_VOCABULARY = "vocabulary.csv"


@dataclass
class Source:
    """A labelled dataset on disk, whatever its layout: per split, a `fname,labels` table (labels
    comma-joined, normalised), the CSV it came from (for messages) and its audio folder."""
    root: Path
    layout: str
    classes: list[str]
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    csvs: dict[str, Path] = field(default_factory=dict)
    folders: dict[str, Path] = field(default_factory=dict)
    test_labelled: bool = False
    normalised: int = 0  # rows whose fname or labels had stray spaces
    dropped: dict[str, set[str]] = field(default_factory=dict)  # split -> fnames removed by corrections
    corrected: dict[str, int] = field(default_factory=dict)  # correction action -> rows changed


def detect_layout(root: Path) -> str | None:
    """'kaggle', 'zenodo' or None when neither layout's marker file is present."""
    if (root / data.SAMPLE_SUBMISSION).exists():
        return "kaggle"
    if (root / ZENODO_META / ZENODO_VOCABULARY).exists() or (root / ZENODO_META).is_dir():
        return "zenodo"
    return None


def read_source(root: str | Path) -> tuple[Source | None, list[str]]:
    """(source, problems). `source` is None when the tables could not be read at all; otherwise
    every table that could be read is in it, and `problems` lists what is wrong with them."""
    root = Path(root).expanduser()
    if not root.is_dir():
        return None, [f"{root}: not a directory"]
    layout = detect_layout(root)
    if layout == "kaggle":
        return _read_kaggle(root)
    if layout == "zenodo":
        return _read_zenodo(root)
    return None, [f"{root}: neither a Kaggle FAT2019 layout (no {data.SAMPLE_SUBMISSION}) nor the "
                  f"FSDKaggle2019 Zenodo layout (no {ZENODO_META}/ folder)"]


def _read_table(path: Path, classes: list[str], *, need_labels: bool = True) -> tuple[pd.DataFrame | None, list[str], int]:
    """(table with fname,labels normalised, problems, rows normalised) for one labels CSV."""
    if not path.exists():
        return None, [f"{path}: missing"], 0
    if path.stat().st_size == 0:
        return None, [f"{path}: empty file; expected a header 'fname,labels' and one row per clip"], 0
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
        return None, [f"{path}: unreadable CSV ({e})"], 0
    df.columns = [str(c).strip() for c in df.columns]
    cols = ["fname", "labels"] if need_labels else ["fname"]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        return None, [f"{path}: missing column(s) {missing}; expected 'fname,labels', "
                      f"got {','.join(df.columns)}"], 0
    if len(df) == 0:
        return None, [f"{path}: no rows (only a header)"], 0
    df = df[cols].copy() if need_labels else df[["fname"]].assign(labels="")
    fn = df["fname"].str.strip()
    labs = df["labels"].map(lambda s: ",".join(data.split_labels(s)))
    normalised = int(((fn != df["fname"]) | (labs != df["labels"])).sum())
    df["fname"], df["labels"] = fn, labs
    problems = []
    blank = df.index[df["fname"] == ""]
    if len(blank):
        problems.append(f"{path}: {len(blank)} rows with an empty fname (lines {[i + 2 for i in blank[:5]]})")
    dup = df["fname"][df["fname"].duplicated() & (df["fname"] != "")].unique()
    if len(dup):
        problems.append(f"{path}: {len(dup)} duplicate fnames: {list(dup[:10])}")
    if need_labels:
        known = set(classes)
        unknown = sorted({lab for s in df["labels"] for lab in data.split_labels(s)} - known)
        if unknown:
            problems.append(f"{path}: {len(unknown)} labels not in the vocabulary: {unknown[:10]}")
        empty = df["fname"][df["labels"] == ""]
        if len(empty):
            problems.append(f"{path}: {len(empty)} rows without labels: {list(empty[:10])}")
    return df.reset_index(drop=True), problems, normalised


def _read_kaggle(root: Path) -> tuple[Source | None, list[str]]:
    try:
        classes = data.vocabulary(root)
    except (FileNotFoundError, ValueError) as e:
        return None, [str(e)]
    src = Source(root=root, layout="kaggle", classes=classes)
    problems = []
    for split, (csv_name, folder) in data.SPLITS.items():
        path = root / csv_name
        if split == "test" and not path.exists():  # no test labels: the test clips are sample_submission's rows
            path, need_labels = root / data.SAMPLE_SUBMISSION, False
        else:
            need_labels = True
            src.test_labelled |= split == "test"
        df, errs, n = _read_table(path, classes, need_labels=need_labels)
        problems += errs
        src.normalised += n
        if df is not None:
            src.tables[split], src.csvs[split], src.folders[split] = df, path, root / folder
    if src.test_labelled and "test" in src.tables:
        sub = pd.read_csv(root / data.SAMPLE_SUBMISSION, usecols=["fname"], dtype=str)["fname"].str.strip()
        if set(sub) != set(src.tables["test"]["fname"]):
            problems.append(f"{root / 'test_labels.csv'}: its fnames differ from those of "
                            f"{root / data.SAMPLE_SUBMISSION} ({len(set(sub) ^ set(src.tables['test']['fname']))} differ)")
    return src, problems


def read_vocabulary_csv(path: Path) -> list[str]:
    """FSDKaggle2019's vocabulary.csv: `index,label` rows without a header, in class order."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; the class vocabulary is read from it")
    try:
        df = pd.read_csv(path, header=None, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: empty file; expected rows 'index,label'") from None
    if df.shape[1] < 2:
        raise ValueError(f"{path}: expected rows 'index,label', got {df.shape[1]} column(s)")
    if not str(df.iloc[0, 0]).strip().isdigit():  # tolerate a header row
        df = df.iloc[1:]
    labels = [s.strip() for s in df.iloc[:, 1]]
    if len(labels) < 2 or len(set(labels)) != len(labels) or "" in labels:
        raise ValueError(f"{path}: expected distinct, non-empty class names, got {labels[:5]}…")
    return labels


def _read_zenodo(root: Path) -> tuple[Source | None, list[str]]:
    meta = root / ZENODO_META
    try:
        classes = read_vocabulary_csv(meta / ZENODO_VOCABULARY)
    except (FileNotFoundError, ValueError) as e:
        return None, [str(e)]
    src = Source(root=root, layout="zenodo", classes=classes, test_labelled=True)
    problems = []
    for split, (csv_name, folder) in ZENODO_TABLES.items():
        path = meta / csv_name
        df, errs, n = _read_table(path, classes)
        problems += errs
        src.normalised += n
        if df is not None:
            src.tables[split], src.csvs[split], src.folders[split] = df, path, root / folder
    return src, problems


def sample_submission(classes: list[str], fnames) -> pd.DataFrame:
    """A Kaggle `sample_submission.csv`: fname + one zero column per class, in vocabulary order."""
    sub = pd.DataFrame(0, index=range(len(fnames)), columns=classes)
    sub.insert(0, "fname", list(fnames))
    return sub

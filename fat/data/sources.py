"""The directory layouts `data.source` may point at, read into one in-memory form.

Two layouts are recognised:

* **kaggle** — the competition download, unzipped: `train_curated.csv`, `train_noisy.csv`,
  `sample_submission.csv` (+ optional `test_labels.csv`) beside `train_curated/`, `train_noisy/`,
  `test/`. This is also the layout of `data/raw/` itself.
* **zenodo** — the post-competition release FSDKaggle2019 (record 3612637), unzipped (e.g. by
  `fat fetch`): `FSDKaggle2019.meta/` with `train_curated_post_competition.csv`,
  `train_noisy_post_competition.csv`, `test_post_competition_scoring_clips.csv` (test labels) and
  `vocabulary.csv`, beside `FSDKaggle2019.audio_train_curated/`, `…audio_train_noisy/`, `…audio_test/`.

Reading checks the tables (fat.data.files: file kinds, encodings, headers, field counts; then empty,
duplicate or path-like fnames, fnames shared across splits, labels outside the vocabulary, rows
without labels) and reports every problem, each naming its file, its column, the offending values
and the fnames (rows) that carry them; stray spaces around labels and fnames are normalised and
counted, not treated as errors.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from fat import errors
from fat.data import files
from fat.data import tables as data
from fat.errors import DataError

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
    """'kaggle', 'zenodo' or None when neither layout's marker is present (whatever kind of file
    the marker is: a directory or FIFO named sample_submission.csv is reported when it is read)."""
    if os.path.lexists(root / data.SAMPLE_SUBMISSION):
        return "kaggle"
    if os.path.lexists(root / ZENODO_META):
        return "zenodo"
    return None


def read_source(root: str | Path) -> tuple[Source | None, list[str]]:
    """(source, problems). `source` is None when the tables could not be read at all; otherwise
    every table that could be read is in it, and `problems` lists what is wrong with them."""
    root = Path(root).expanduser()
    problem = files.folder_problem(root)
    if problem:
        return None, [f"{root}: not a directory ({problem})" if problem.startswith("is ") else
                      f"{root}: not a directory: {problem}"]
    layout = detect_layout(root)
    if layout == "kaggle":
        src, problems = _read_kaggle(root)
    elif layout == "zenodo":
        src, problems = _read_zenodo(root)
    else:
        return None, [f"{root}: neither a Kaggle FAT2019 layout (no {data.SAMPLE_SUBMISSION}) nor the "
                      f"FSDKaggle2019 Zenodo layout (no {ZENODO_META}/ folder)"]
    if src is not None:
        problems += _shared_fnames(src)
    return src, problems


def _shared_fnames(src: Source) -> list[str]:
    """Every clip belongs to one split: a fname in two tables would mix splits (test leaking into
    train) and make two clips one in the feature store."""
    where: dict[str, list[str]] = {}
    for split, df in src.tables.items():
        for f in set(df["fname"]) - {""}:
            where.setdefault(f, []).append(src.csvs[split].name)
    shared = sorted(f for f, csvs in where.items() if len(csvs) > 1)
    if not shared:
        return []
    detail = "; ".join(f"{f!r} in {' and '.join(where[f])}" for f in shared[:10])
    more = f"; … ({len(shared) - 10} more)" if len(shared) > 10 else ""
    return [f"{src.root}: {len(shared)} fname(s) appear in more than one table (a clip belongs to one split): "
            f"{detail}{more}"]


def _read_table(path: Path, classes: list[str], *, need_labels: bool = True,
                vocab: str = f"the vocabulary of {data.SAMPLE_SUBMISSION}", keep_extra: bool = False,
                ) -> tuple[pd.DataFrame | None, list[str], int]:
    """(table with fname,labels normalised (with `keep_extra`, any further columns as they are, e.g.
    a recording id for cv.group_column), problems, rows normalised) for one labels CSV.
    Every problem names the file, the column, the offending values and the fnames carrying them."""
    cols = ("fname", "labels") if need_labels else ("fname",)
    try:
        df = files.read_csv(path, required=cols, expected="fname,labels" if need_labels else "fname,<class>,…")
    except DataError as e:
        return None, e.problems, 0
    if len(df) == 0:
        return None, [f"{path}: no rows (only a header)"], 0
    extra = [c for c in df.columns if c not in ("fname", "labels")] if keep_extra else []  # e.g. a recording id
    df = df[list(cols) + extra].copy() if need_labels else df[["fname"]].assign(labels="")
    lines = df.index
    fn = df["fname"].str.strip()
    labs = df["labels"].map(lambda s: ",".join(data.split_labels(s)))
    normalised = int(((fn != df["fname"]) | (labs != df["labels"])).sum())
    df["fname"], df["labels"] = fn, labs
    problems = []
    blank = list(lines[(df["fname"] == "").to_numpy()])
    if blank:
        problems.append(f"{path}: column fname: {len(blank)} row(s) with an empty fname "
                        f"(line{'s' if len(blank) > 1 else ''} {', '.join(map(str, blank[:10]))})")
    problems += files.fname_problems(path, df["fname"])
    named = df[df["fname"] != ""]
    dup = named["fname"][named["fname"].duplicated(keep=False)]
    if len(dup):
        groups = [f"{f!r} (lines {', '.join(map(str, list(dup.index[dup == f])[:10]))})" for f in dup.unique()[:10]]
        more = f", … ({dup.nunique() - 10} more)" if dup.nunique() > 10 else ""
        problems.append(f"{path}: column fname: {dup.nunique()} duplicate fnames: {', '.join(groups)}{more}")
    if need_labels:
        unknown = data.unknown_labels(df, classes, vocab)
        if unknown:
            problems.append(f"{path}: {unknown}")
        empty = df["fname"][(df["labels"] == "") & (df["fname"] != "")]
        if len(empty):
            problems.append(f"{path}: column labels: rows without labels: {errors.rows(empty)}")
    return df.reset_index(drop=True), problems, normalised


def _read_kaggle(root: Path) -> tuple[Source | None, list[str]]:
    try:
        classes = data.vocabulary(root)
    except DataError as e:
        return None, e.problems
    src = Source(root=root, layout="kaggle", classes=classes)
    problems = []
    for split, (csv_name, folder) in data.SPLITS.items():
        path = root / csv_name
        if split == "test" and not os.path.lexists(path):  # no test labels: the test clips are sample_submission's rows
            path, need_labels = root / data.SAMPLE_SUBMISSION, False
        else:
            need_labels = True
            src.test_labelled |= split == "test"
        df, errs, n = _read_table(path, classes, need_labels=need_labels, keep_extra=split == "curated")
        problems += errs
        src.normalised += n
        if df is not None:
            src.tables[split], src.csvs[split], src.folders[split] = df, path, root / folder
    if src.test_labelled and "test" in src.tables:
        sub_df, _, _ = _read_table(root / data.SAMPLE_SUBMISSION, classes, need_labels=False)
        if sub_df is not None:
            sub, test = set(sub_df["fname"]), set(src.tables["test"]["fname"])
            if sub != test:
                only_t, only_s = sorted(test - sub), sorted(sub - test)
                parts = ([f"{len(only_t)} only in test_labels.csv: {errors.names(only_t)}"] if only_t else []) + \
                        ([f"{len(only_s)} only in {data.SAMPLE_SUBMISSION}: {errors.names(only_s)}"] if only_s else [])
                problems.append(f"{root / 'test_labels.csv'}: its fnames differ from those of "
                                f"{root / data.SAMPLE_SUBMISSION}: " + "; ".join(parts))
    return src, problems


def read_vocabulary_csv(path: Path) -> list[str]:
    """FSDKaggle2019's vocabulary.csv: `index,label` rows without a header, in class order."""
    if not os.path.lexists(path):
        raise DataError(f"{path}: missing; the class vocabulary is read from it")
    rows_ = files.read_rows(path)
    if not rows_:
        raise DataError(f"{path}: empty file; expected rows 'index,label'")
    if min(len(f) for _, f in rows_) < 2:
        line = next(line for line, f in rows_ if len(f) < 2)
        raise DataError(f"{path}: line {line}: expected rows 'index,label', got 1 column")
    if not rows_[0][1][0].strip().isdigit():  # tolerate a header row
        rows_ = rows_[1:]
    labels = [f[1].strip() for _, f in rows_]
    dup = sorted({lab for lab in labels if labels.count(lab) > 1})
    if len(labels) < 2 or dup or "" in labels:
        raise DataError(f"{path}: expected at least 2 distinct, non-empty class names, got {labels[:5]}…"
                        + (f" (duplicated: {dup[:10]})" if dup else ""))
    return labels


def _read_zenodo(root: Path) -> tuple[Source | None, list[str]]:
    meta = root / ZENODO_META
    problem = files.folder_problem(meta)
    if problem:
        return None, [f"{meta}: {problem}"]
    try:
        classes = read_vocabulary_csv(meta / ZENODO_VOCABULARY)
    except DataError as e:
        return None, e.problems
    src = Source(root=root, layout="zenodo", classes=classes, test_labelled=True)
    problems = []
    for split, (csv_name, folder) in ZENODO_TABLES.items():
        path = meta / csv_name
        df, errs, n = _read_table(path, classes, vocab=f"the vocabulary of {ZENODO_VOCABULARY}",
                                  keep_extra=split == "curated")  # cv.group_column
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

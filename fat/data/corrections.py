"""Label corrections applied in `prepare`: a CSV `fname,action,labels,note` where `action` is
`relabel` (replace the clip's labels with `labels`, comma-joined) or `drop` (remove the clip).

`params.yaml: data.corrections` is null (none), the name of a file shipped in `fat/corrections/`
(e.g. `fat2019_curated`, the known-bad curated clips of FAT2019) or a path to your own CSV. Files
inside `fat/corrections/` are DVC dependencies of `prepare`, so editing one re-runs it; keep your
own file there for the same effect."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from fat.data import files
from fat.data import tables as data
from fat.errors import DataError, names, rows

SHIPPED_DIR = Path(__file__).parent / "corrections"
ACTIONS = ("relabel", "drop")


def resolve(spec) -> Path | None:
    """The corrections file that `data.corrections` names, or None."""
    if spec is None or (isinstance(spec, str) and spec.strip() in ("", "null")):
        return None
    if not isinstance(spec, str):
        raise DataError(f"data.corrections: expected null, the name of a shipped corrections file or a path, "
                        f"got {spec!r} ({type(spec).__name__})")
    shipped = SHIPPED_DIR / f"{spec}.csv"
    if "/" not in spec and shipped.exists():
        return shipped
    path = Path(spec).expanduser()
    if not os.path.lexists(path):
        names = sorted(p.stem for p in SHIPPED_DIR.glob("*.csv"))
        raise DataError(f"data.corrections: {spec}: no such file, and not one of the shipped "
                        f"corrections {names}")
    return path


def read(path: str | Path) -> pd.DataFrame:
    """The corrections table, checked: known columns, known actions, one row per fname. Raises
    DataError naming the file, the column, the values and the fnames of every problem."""
    path = Path(path)
    df = files.read_csv(path, required=("fname", "action"), comments=True, expected="fname,action,labels,note")
    if "labels" not in df.columns:
        df["labels"] = ""
    df["fname"] = df["fname"].str.strip()
    df["action"] = df["action"].str.strip().str.lower()
    df["labels"] = df["labels"].map(lambda s: ",".join(data.split_labels(s)))
    problems = files.fname_problems(path, df["fname"])
    blank = list(df.index[(df["fname"] == "").to_numpy()])
    if blank:
        problems.append(f"{path}: column fname: {len(blank)} row(s) with an empty fname (lines {blank[:10]})")
    bad = df[~df["action"].isin(ACTIONS)]
    for action in sorted(set(bad["action"])):
        problems.append(f"{path}: column action: {action!r} is not one of {list(ACTIONS)}, on "
                        f"{rows(bad['fname'][bad['action'] == action])}")
    nolab = df[(df["action"] == "relabel") & (df["labels"] == "")]
    if len(nolab):
        problems.append(f"{path}: column labels: 'relabel' rows need labels; empty on {rows(nolab['fname'])}")
    named = df[df["fname"] != ""]
    dup = named["fname"][named["fname"].duplicated()].unique()
    if len(dup):
        problems.append(f"{path}: column fname: {len(dup)} duplicate fnames: {names(dup)}")
    if problems:
        raise DataError(*problems)
    df = df.reset_index(drop=True)
    df.attrs["path"] = str(path)
    return df[["fname", "action", "labels"]]


def apply(src, corrections: pd.DataFrame) -> list[str]:
    """Apply `corrections` to the tables of a fat.sources.Source in place; returns the problems
    (fnames in no table, labels outside the vocabulary, dropped test clips), each naming the
    corrections file, the column, the values and the fnames."""
    path = corrections.attrs.get("path", "corrections")
    problems = []
    unknown = data.unknown_labels(corrections, src.classes)
    if unknown:
        return [f"{path}: {unknown}"]
    found = set()
    for split, df in src.tables.items():
        hit = corrections[corrections["fname"].isin(set(df["fname"]))]
        if hit.empty:
            continue
        found |= set(hit["fname"])
        relabel = hit[hit["action"] == "relabel"].set_index("fname")["labels"]
        drop = set(hit.loc[hit["action"] == "drop", "fname"])
        if split == "test" and drop:
            problems.append(f"{path}: column action: cannot drop test clips (the submission needs a row for each): "
                            f"'drop' on {rows(sorted(drop))}")
            drop = set()
        df.loc[df["fname"].isin(relabel.index), "labels"] = df["fname"].map(relabel)
        src.tables[split] = df[~df["fname"].isin(drop)].reset_index(drop=True)
        src.dropped.setdefault(split, set()).update(drop)
        for action, n in (("relabel", len(relabel)), ("drop", len(drop))):
            src.corrected[action] = src.corrected.get(action, 0) + n
    absent = sorted(set(corrections["fname"]) - found)
    if absent:
        problems.append(f"{path}: column fname: {len(absent)} fnames are in no table of {src.root}: "
                        f"{names(absent)}")
    return problems

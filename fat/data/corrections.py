"""Label corrections applied in `prepare`: a CSV `fname,action,labels,note` where `action` is
`relabel` (replace the clip's labels with `labels`, comma-joined) or `drop` (remove the clip).

`params.yaml: data.corrections` is null (none), the name of a file shipped in `fat/corrections/`
(e.g. `fat2019_curated`, the known-bad curated clips of FAT2019) or a path to your own CSV. Files
inside `fat/corrections/` are DVC dependencies of `prepare`, so editing one re-runs it; keep your
own file there for the same effect."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from fat.data import tables as data

SHIPPED_DIR = Path(__file__).parent / "corrections"
ACTIONS = ("relabel", "drop")


def resolve(spec: str | None) -> Path | None:
    """The corrections file that `data.corrections` names, or None."""
    if spec in (None, "", "null"):
        return None
    shipped = SHIPPED_DIR / f"{spec}.csv"
    if shipped.exists():
        return shipped
    path = Path(str(spec)).expanduser()
    if not path.exists():
        names = sorted(p.stem for p in SHIPPED_DIR.glob("*.csv"))
        raise FileNotFoundError(f"data.corrections: {spec}: no such file, and not one of the shipped "
                                f"corrections {names}")
    return path


def read(path: str | Path) -> pd.DataFrame:
    """The corrections table, checked: known columns, known actions, one row per fname."""
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, comment="#")
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: empty file; expected a header 'fname,action,labels,note'") from None
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in ("fname", "action") if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected 'fname,action,labels,note'")
    if "labels" not in df.columns:
        df["labels"] = ""
    df["fname"] = df["fname"].str.strip()
    df["action"] = df["action"].str.strip().str.lower()
    df["labels"] = df["labels"].map(lambda s: ",".join(data.split_labels(s)))
    problems = []
    bad = df[~df["action"].isin(ACTIONS)]
    if len(bad):
        problems.append(f"actions must be one of {list(ACTIONS)}; got {sorted(set(bad['action']))} "
                        f"for {list(bad['fname'][:5])}")
    nolab = df[(df["action"] == "relabel") & (df["labels"] == "")]
    if len(nolab):
        problems.append(f"'relabel' rows need labels: {list(nolab['fname'][:5])}")
    dup = df["fname"][df["fname"].duplicated()].unique()
    if len(dup):
        problems.append(f"duplicate fnames {list(dup[:5])}")
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    df.attrs["path"] = str(path)
    return df[["fname", "action", "labels"]]


def apply(src, corrections: pd.DataFrame) -> list[str]:
    """Apply `corrections` to the tables of a fat.sources.Source in place; returns the problems
    (fnames in no table, labels outside the vocabulary), each naming the corrections file."""
    path = corrections.attrs.get("path", "corrections")
    problems = []
    unknown = sorted({lab for s in corrections["labels"] for lab in data.split_labels(s)} - set(src.classes))
    if unknown:
        problems.append(f"{path}: labels not in the vocabulary: {unknown[:10]}")
        return problems
    found = set()
    for split, df in src.tables.items():
        hit = corrections[corrections["fname"].isin(set(df["fname"]))]
        if hit.empty:
            continue
        found |= set(hit["fname"])
        relabel = hit[hit["action"] == "relabel"].set_index("fname")["labels"]
        drop = set(hit.loc[hit["action"] == "drop", "fname"])
        if split == "test" and drop:
            problems.append(f"{path}: cannot drop test clips (the submission needs a row for each): "
                            f"{sorted(drop)[:5]}")
            drop = set()
        df.loc[df["fname"].isin(relabel.index), "labels"] = df["fname"].map(relabel)
        src.tables[split] = df[~df["fname"].isin(drop)].reset_index(drop=True)
        src.dropped.setdefault(split, set()).update(drop)
        for action, n in (("relabel", len(relabel)), ("drop", len(drop))):
            src.corrected[action] = src.corrected.get(action, 0) + n
    absent = sorted(set(corrections["fname"]) - found)
    if absent:
        problems.append(f"{path}: {len(absent)} fnames are in no table of {src.root}: {absent[:10]}")
    return problems

"""Stage logic of `prepare`: bring `data.source` — the embedded generator (`synthetic`) or a
directory in the FAT2019 layout — into `data/raw/`, validated, written atomically."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd

from fat import data, synth
from fat.io import atomic_path
from fat.log import progress


def _check_split(src: Path, csv: Path, folder: str, df, classes: list[str]) -> list[str]:
    """Every problem of one split's table against its audio folder."""
    problems = []
    if list(df.columns[:2]) != ["fname", "labels"]:
        return [f"{csv}: expected columns 'fname,labels', got {','.join(map(str, df.columns))}"]
    known = set(classes)
    unknown = sorted({lab for labs in df["labels"] for lab in data.split_labels(labs)} - known)
    if unknown:
        problems.append(f"{csv}: labels not in the vocabulary of {data.SAMPLE_SUBMISSION}: {unknown[:10]}")
    empty = df["fname"][df["labels"].map(lambda s: not data.split_labels(s))]
    if len(empty):
        problems.append(f"{csv}: {len(empty)} rows without labels, e.g. {list(empty[:3])}")
    problems += _check_files(src, csv, folder, df["fname"])
    return problems


def _check_files(src: Path, csv: Path, folder: str, fnames) -> list[str]:
    problems = []
    dup = fnames[fnames.duplicated()].unique()
    if len(dup):
        problems.append(f"{csv}: duplicate fnames {list(dup[:5])}")
    if not (src / folder).is_dir():
        return problems + [f"{src / folder}: missing audio folder for {csv.name}"]
    present = {p.name for p in (src / folder).iterdir()}
    missing = [f for f in fnames if f not in present]
    if missing:
        problems.append(f"{csv}: {len(missing)} rows have no file in {folder}/, e.g. {missing[:3]}")
    extra = sorted(present - set(fnames))
    if extra:
        problems.append(f"{src / folder}: {len(extra)} files have no row in {csv.name}, e.g. {extra[:3]}")
    return problems


def validate_layout(src: str | Path) -> list[str]:
    """All problems with a FAT2019-layout directory in one pass, each naming the file.
    An empty list means the directory can be imported."""
    src = Path(src)
    if not src.is_dir():
        return [f"{src}: not a directory"]
    try:
        classes = data.vocabulary(src)
    except (FileNotFoundError, ValueError) as e:
        return [str(e)]
    problems = []
    for split, (csv_name, folder) in data.SPLITS.items():
        csv = src / csv_name
        if not csv.exists():
            if split == "test":  # no test labels: the test clips are sample_submission's rows
                sub = pd.read_csv(src / data.SAMPLE_SUBMISSION, usecols=["fname"], dtype=str)["fname"]
                problems += _check_files(src, src / data.SAMPLE_SUBMISSION, folder, sub)
            else:
                problems.append(f"{csv}: missing")
            continue
        try:
            df = pd.read_csv(csv, dtype=str, keep_default_na=False)
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
            problems.append(f"{csv}: unreadable CSV ({e})")
            continue
        problems += _check_split(src, csv, folder, df, classes)
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
    files = [src / data.SAMPLE_SUBMISSION] + [src / c for c, _ in data.SPLITS.values() if (src / c).exists()]
    for f in files:
        shutil.copy2(f, out_dir / f.name)
    for split, (_, folder) in data.SPLITS.items():
        (out_dir / folder).mkdir()
        df = data.split_table(src, split)
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
    classes = data.vocabulary(raw_dir)
    out = {"classes": len(classes)}
    for split in data.SPLITS:
        df = data.split_table(raw_dir, split)
        n_labels = df["labels"].map(lambda s: len(data.split_labels(s)))
        out[f"{split}_clips"] = int(len(df))
        if n_labels.sum():
            out[f"{split}_labels_per_clip"] = round(float(n_labels.mean()), 3)
    return out

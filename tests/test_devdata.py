"""On the real-recordings development set, when one is built (see docs/real-audio.md): it
imports as a data source, its provenance gives a recording-group column, and group-aware folds
keep every recording group in one fold. Skipped when the set is absent.

FAT_DEVDATA names the built set (default ../devdata/data next to the repository); its
provenance.csv is read from the parent directory, as the builder writes it."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from fat.data import tables as data
from fat.data.folds import curated_folds
from fat.data.prepare import prepare
from fat.params import Data, Synth

ROOT = Path(os.environ.get("FAT_DEVDATA", Path(__file__).resolve().parents[2] / "devdata" / "data"))
PROVENANCE = ROOT.parent / "provenance.csv"

pytestmark = pytest.mark.skipif(not (ROOT / "train_curated.csv").exists() or not PROVENANCE.exists(),
                                reason=f"no real-recordings dev set at {ROOT} (set FAT_DEVDATA)")


def grouped_copy(dst: Path) -> Path:
    """The dev set with a `recording_group` column (the clip's first source group) added to
    train_curated.csv; audio folders linked, not copied."""
    dst.mkdir()
    prov = pd.read_csv(PROVENANCE, dtype=str)
    first = prov[prov["split"] == "train_curated"].set_index("fname")["source_groups"].str.split(";").str[0]
    cur = pd.read_csv(ROOT / "train_curated.csv", dtype=str)
    cur["recording_group"] = cur["fname"].map(first)
    cur.to_csv(dst / "train_curated.csv", index=False)
    for name in ("train_noisy.csv", "test_labels.csv", "sample_submission.csv"):
        shutil.copy(ROOT / name, dst / name)
    for folder in ("train_curated", "train_noisy", "test"):
        (dst / folder).symlink_to(ROOT / folder)
    return dst


def test_real_dev_set_imports_with_its_group_column_and_folds_keep_groups(tmp_path):
    src = grouped_copy(tmp_path / "src")
    raw = tmp_path / "raw"
    stats, bad = prepare(Data(source=str(src), n_jobs=2), Synth(), seed=0, out_dir=raw)
    assert bad.empty and stats["curated_clips"] == len(pd.read_csv(src / "train_curated.csv"))
    table = pd.read_csv(raw / "train_curated.csv", dtype=str)
    assert "recording_group" in table.columns and table["recording_group"].str.len().gt(0).all()
    folds = curated_folds(raw, 3, seed=2019, group_column="recording_group").merge(table, on="fname")
    assert (folds.groupby("recording_group")["fold"].nunique() == 1).all()
    plain = curated_folds(raw, 3, seed=2019).merge(table, on="fname")
    assert (plain.groupby("recording_group")["fold"].nunique() > 1).any()  # clip-level folds split recordings
    y = data.multi_hot(folds["labels"], data.vocabulary(raw))
    for k in range(3):  # every class is still present in every validation fold
        assert (y[folds["fold"].to_numpy() == k].sum(0) > 0).all()

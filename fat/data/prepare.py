"""Stage logic of `prepare`: bring `data.source` — the embedded generator (`synthetic`) or a
directory in the Kaggle or FSDKaggle2019 (Zenodo) layout — into `data/raw/`, validated, written
atomically.

A directory source is validated in one pass (fat.data.validate): table problems always stop the stage;
audio problems stop it too under `data.on_bad_audio: error` (the default), or, under `skip`, the
bad files are left out and listed with their reasons in the quarantine report (never silent zeros).
Audio files are hard-linked into data/raw where the filesystem allows, copied otherwise."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd

from fat.data import corrections as corr
from fat.data import sources, synth, validate
from fat.data import tables as data
from fat.io import atomic_path
from fat.log import progress

POLICIES = ("error", "skip")
DEFAULTS = {"on_bad_audio": "error", "corrections": None, "max_seconds": 60.0, "min_peak_dbfs": -80.0, "n_jobs": 0}


def _link_or_copy(src: Path, dst: Path) -> str:
    try:
        os.link(src, dst)
        return "hardlink"
    except OSError:
        shutil.copy2(src, dst)
        return "copy"


def _fail(root: Path, lines: list[str], hint: str = "") -> ValueError:
    return ValueError(f"data.source {root}: {len(lines)} problem(s):\n  " + "\n  ".join(lines) + hint)


def import_directory(root: str | Path, out_dir: Path, cfg: dict | None = None) -> tuple[dict, pd.DataFrame]:
    """Validate `root` and write it into `out_dir` in the data/raw layout. Returns (stats, the
    quarantined files: split, fname, file, problem). Raises ValueError listing every problem."""
    cfg = {**DEFAULTS, **(cfg or {})}
    policy = str(cfg["on_bad_audio"])
    if policy not in POLICIES:
        raise ValueError(f"data.on_bad_audio: {policy!r} is not one of {list(POLICIES)}")
    root = Path(root).expanduser()
    path = corr.resolve(cfg["corrections"])
    report = validate.validate(root, max_seconds=float(cfg["max_seconds"]), min_peak_dbfs=float(cfg["min_peak_dbfs"]),
                               n_jobs=int(cfg["n_jobs"]), corrections=None if path is None else corr.read(path))
    if report.errors or (policy == "error" and len(report.bad)):
        hint = ("\n(set data.on_bad_audio: skip to leave bad audio files out and list them in the quarantine report)"
                if policy == "error" and len(report.bad) and not report.errors else "")
        raise _fail(root, report.problems(), hint)
    bad = report.bad
    in_test = bad[(bad["split"] == "test") & ~bad["problem"].str.startswith("no row")]
    if len(in_test):
        raise _fail(root, [f"{r.file}: {r.problem}" for r in in_test.itertuples()],
                    "\n(test clips cannot be skipped: the submission needs a row for every clip of "
                    "sample_submission.csv; fix or replace these files)")
    src = report.source
    out_dir.mkdir(parents=True)
    tables = {s: df[~df["fname"].isin(set(bad.loc[bad["split"] == s, "fname"]))] for s, df in src.tables.items()}
    if src.layout == "kaggle":
        shutil.copy2(root / data.SAMPLE_SUBMISSION, out_dir / data.SAMPLE_SUBMISSION)
    else:
        sources.sample_submission(src.classes, tables["test"]["fname"]).to_csv(out_dir / data.SAMPLE_SUBMISSION, index=False)
    modes: dict[str, int] = {}
    for split, (csv_name, folder) in data.SPLITS.items():
        if split != "test" or src.test_labelled:
            tables[split].to_csv(out_dir / csv_name, index=False)
        (out_dir / folder).mkdir()
        for fname in progress(tables[split]["fname"], desc=f"import {split}"):
            mode = _link_or_copy(src.folders[split] / fname, out_dir / folder / fname)
            modes[mode] = modes.get(mode, 0) + 1
    stats = {"source": str(root), "layout": src.layout, "files": modes, "formats": report.formats,
             "audio_hours": round(report.seconds / 3600, 3), "labels_normalised": src.normalised,
             "corrections": src.corrected, "quarantined": {s: int((bad["split"] == s).sum()) for s in data.SPLITS}}
    return stats, bad


def prepare(source: str, out_dir: str | Path, synth_cfg: dict, seed: int, n_jobs: int = 0,
            cfg: dict | None = None) -> tuple[dict, pd.DataFrame]:
    """Write `out_dir` (data/raw) atomically from `source` ('synthetic' or a directory).
    `cfg` is params' `data` section (policy, corrections, limits). Returns (stats, quarantined)."""
    cfg = {**DEFAULTS, **(cfg or {}), "n_jobs": n_jobs}
    with atomic_path(out_dir) as tmp:
        if source == "synthetic":
            if cfg["corrections"] not in (None, ""):
                raise ValueError("data.corrections applies to a directory data.source, not to the synthetic data")
            stats = synth.generate(tmp, synth_cfg, seed=seed, n_jobs=n_jobs)
            stats["source"] = "synthetic"
            bad = pd.DataFrame(columns=validate.QUARANTINE_COLUMNS)
        else:
            stats, bad = import_directory(source, tmp, cfg)
        stats.update(summarize(tmp))
    return stats, bad


def validate_layout(src: str | Path, **kwargs) -> list[str]:
    """All problems with a source directory (either layout) in one pass, each naming the file.
    An empty list means the directory can be imported under `data.on_bad_audio: error`."""
    return validate.validate(src, **kwargs).problems()


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

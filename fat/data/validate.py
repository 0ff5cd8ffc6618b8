"""Validation of a data source in one pass: the tables (fat.data.sources), the corrections, and every
audio file — missing, unreadable or truncated, empty, too long, NaN/inf samples, silent — plus wav
files that no table row names. Every problem names its file.

Formats that are merely unusual (stereo, 8/24/32-bit or float samples, sample rates other than
44.1 kHz) are not problems: `fat.audio.load` mixes them to mono and resamples them; they are counted
in the report's `formats` so a person sees what the data holds."""
from __future__ import annotations

import multiprocessing as mp
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from fat.data import audio, sources
from fat.data import corrections as corr
from fat.log import progress

QUARANTINE_COLUMNS = ["split", "fname", "file", "problem"]


@dataclass
class Report:
    """What validation found. `errors`: problems with the tables or the corrections (never
    skippable); `bad`: one row per audio problem (columns QUARANTINE_COLUMNS)."""
    source: sources.Source | None
    errors: list[str] = field(default_factory=list)
    bad: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=QUARANTINE_COLUMNS))
    formats: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def problems(self) -> list[str]:
        """Every problem as one line naming the file."""
        return self.errors + [f"{r.file}: {r.problem}" for r in self.bad.itertuples()]


def scan_file(path: str | Path, max_seconds: float, min_peak_dbfs: float) -> dict:
    """Facts about one wav and its problem (None when usable). Reads the samples: NaN/inf and
    silence can only be seen there."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return {"problem": "missing"}
    if size == 0:
        return {"problem": "empty file (0 bytes)"}
    try:
        audio.check_wav_complete(path)
        info = sf.info(str(path))
        if info.frames == 0:
            return {"problem": "contains no samples"}
        seconds = info.frames / info.samplerate
        out = {"sr": info.samplerate, "channels": info.channels, "subtype": info.subtype, "seconds": seconds}
        if seconds > max_seconds:
            return out | {"problem": f"too long: {seconds:.1f} s > data.max_seconds {max_seconds:g} s"}
        y, _ = sf.read(str(path), dtype="float32", always_2d=True)
    except audio.AudioError as e:
        return {"problem": str(e).removeprefix(f"{path}: ")}
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        return {"problem": f"unreadable audio ({e})"}
    if not np.isfinite(y).all():
        return out | {"problem": "contains NaN or infinite samples"}
    peak = float(np.abs(y).max())
    if peak <= 10 ** (min_peak_dbfs / 20):
        level = f"{20 * np.log10(peak):.0f} dBFS" if peak > 0 else "all zero"
        return out | {"problem": f"silent: peak {level} <= data.min_peak_dbfs {min_peak_dbfs:g}"}
    return out | {"problem": None}


def _scan_star(args):
    return scan_file(*args)


def _format(r: dict) -> str:
    ch = {1: "mono", 2: "stereo"}.get(r["channels"], f"{r['channels']}ch")
    return f"{r['subtype']} {ch} {r['sr']} Hz"


def scan_audio(src: sources.Source, *, max_seconds: float, min_peak_dbfs: float, n_jobs: int = 0) -> Report:
    """Scan every file the tables name, and find the wav files no row names."""
    rows, jobs = [], []
    for split, df in src.tables.items():
        folder = src.folders[split]
        for fname in df["fname"]:
            rows.append((split, fname, folder / fname))
            jobs.append((folder / fname, max_seconds, min_peak_dbfs))
    n_jobs = n_jobs or os.cpu_count() or 1
    desc = "validate audio"
    if n_jobs > 1 and len(jobs) > 64:
        with mp.get_context("spawn").Pool(n_jobs) as pool:
            results = list(progress(pool.imap(_scan_star, jobs, chunksize=64), total=len(jobs), desc=desc))
    else:
        results = [scan_file(*j) for j in progress(jobs, desc=desc)]
    report = Report(source=src)
    bad, formats, seconds = [], Counter(), 0.0
    for (split, fname, path), r in zip(rows, results):
        if "sr" in r:
            formats[_format(r)] += 1
        if r["problem"] == "missing":
            bad.append((split, fname, str(path), f"missing: named in {src.csvs[split]} but there is no such file"))
        elif r["problem"]:
            bad.append((split, fname, str(path), r["problem"]))
        else:
            seconds += r["seconds"]
    for split, df in src.tables.items():
        folder = src.folders[split]
        if not folder.is_dir():
            report.errors.append(f"{folder}: missing audio folder for {src.csvs[split]}")
            bad = [b for b in bad if b[0] != split]  # one line, not one per row
            continue
        named = set(df["fname"]) | src.dropped.get(split, set())
        for p in sorted(folder.iterdir()):
            if p.name not in named and p.suffix.lower() == ".wav":
                bad.append((split, p.name, str(p), f"no row in {src.csvs[split].name}"))
    report.bad = pd.DataFrame(bad, columns=QUARANTINE_COLUMNS)
    report.formats = dict(sorted(formats.items()))
    report.seconds = round(seconds, 1)
    return report


def validate(root: str | Path, *, max_seconds: float = 60.0, min_peak_dbfs: float = -80.0, n_jobs: int = 0,
             corrections=None) -> Report:
    """Read the tables, apply `corrections` (a table from fat.corrections.read, or None), scan the audio:
    every problem found, in one pass."""
    src, errors = sources.read_source(root)
    if src is None:
        return Report(source=None, errors=errors)
    if corrections is not None:
        errors += corr.apply(src, corrections)
    report = scan_audio(src, max_seconds=max_seconds, min_peak_dbfs=min_peak_dbfs, n_jobs=n_jobs)
    report.errors = errors + report.errors
    return report

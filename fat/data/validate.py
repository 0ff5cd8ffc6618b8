"""Validation of a data source in one pass: the tables (fat.data.sources), the corrections, and every
audio file — missing, unreadable or truncated, empty, too long, NaN/inf samples, silent — plus wav
files that no table row names. Every problem names its file.

Also refused: anything but a regular file where a wav belongs (directory, FIFO, device, symlink loop,
dangling symlink), sample rates outside SAMPLE_RATES, float samples beyond +24 dBFS, and clips that
are silent after the mono mix (stereo channels that cancel out), since the mix is what the pipeline
hears. Float clips slightly over full scale are usable and counted (`over_full_scale`).

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

from fat.data import audio, files, sources
from fat.data import corrections as corr
from fat.log import progress

QUARANTINE_COLUMNS = ["split", "fname", "file", "problem"]
SAMPLE_RATES = (4000, 768000)  # Hz: below, not audio worth tagging; above, no audio interface records
MAX_PEAK_DBFS = 24.0  # float samples beyond +24 dBFS (|x| > 15.8) are a scaling error, not a signal


@dataclass
class Report:
    """What validation found. `errors`: problems with the tables or the corrections (never
    skippable); `bad`: one row per audio problem (columns QUARANTINE_COLUMNS)."""
    source: sources.Source | None
    errors: list[str] = field(default_factory=list)
    bad: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=QUARANTINE_COLUMNS))
    formats: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    over_full_scale: int = 0  # usable float clips whose peak exceeds 1.0 (counted, not refused)

    def problems(self) -> list[str]:
        """Every problem as one line naming the file."""
        return self.errors + [f"{r.file}: {r.problem}" for r in self.bad.itertuples()]


def scan_file(path: str | Path, max_seconds: float, min_peak_dbfs: float) -> dict:
    """Facts about one wav and its problem (None when usable). Reads the samples: NaN/inf, absurd
    values and silence (of the mono mix the pipeline uses) can only be seen there."""
    path = Path(path)
    problem = files.file_problem(path)
    if problem:
        return {"problem": problem}
    if path.stat().st_size == 0:
        return {"problem": "empty file (0 bytes)"}
    try:
        info = audio.info(path)
        if info.frames == 0:
            return {"problem": "contains no samples"}
        if not SAMPLE_RATES[0] <= info.sample_rate <= SAMPLE_RATES[1]:
            return {"problem": f"sample rate {info.sample_rate} Hz is outside {SAMPLE_RATES[0]}-{SAMPLE_RATES[1]} Hz "
                               f"(a corrupt header?)"}
        seconds = info.seconds
        out = {"sr": info.sample_rate, "channels": info.channels, "subtype": info.subtype, "seconds": seconds}
        if seconds > max_seconds:
            return out | {"problem": f"too long: {seconds:.1f} s > data.max_seconds {max_seconds:g} s"}
        finite, peak, mono_peak = True, 0.0, 0.0
        # as stored (every channel's peak counts), in blocks (memory stays bounded whatever the rate and
        # channel count), float64 (float wavs beyond the float32 range stay finite, reported for what they are)
        for y in audio.blocks(path):
            if not np.isfinite(y).all():
                finite = False
                break
            peak = max(peak, float(np.abs(y).max()))
            mono_peak = max(mono_peak, float(np.abs(y.mean(axis=1)).max()))
    except audio.AudioError as e:
        return {"problem": str(e).removeprefix(f"{path}: ")}
    if not finite:
        return out | {"problem": "contains NaN or infinite samples"}
    if peak > 10 ** (MAX_PEAK_DBFS / 20):
        return out | {"problem": f"samples up to {peak:.3g}: beyond full scale (|x| <= 1) by "
                                 f"{20 * np.log10(peak):.0f} dB, more than the +{MAX_PEAK_DBFS:g} dB accepted "
                                 f"(a float wav written unscaled?)"}
    floor = 10 ** (min_peak_dbfs / 20)
    if mono_peak <= floor:
        level = f"{20 * np.log10(mono_peak):.0f} dBFS" if mono_peak > 0 else "all zero"
        if peak > floor:
            return out | {"problem": f"silent after the mono mix: its channels cancel out "
                                     f"(peak {20 * np.log10(peak):.0f} dBFS per channel, {level} mixed) "
                                     f"<= data.min_peak_dbfs {min_peak_dbfs:g}"}
        return out | {"problem": f"silent: peak {level} <= data.min_peak_dbfs {min_peak_dbfs:g}"}
    return out | {"problem": None, "over_full_scale": peak > 1.0}


def _printable(name: str) -> str:
    """A file name as text: bytes that are not UTF-8 (decoded by Python as surrogates) become \\xNN."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _scan_star(args):
    return scan_file(*args)


def _format(r: dict) -> str:
    ch = {1: "mono", 2: "stereo"}.get(r["channels"], f"{r['channels']}ch")
    return f"{r['subtype']} {ch} {r['sr']} Hz"


def scan_audio(src: sources.Source, *, max_seconds: float, min_peak_dbfs: float, n_jobs: int = 0) -> Report:
    """Scan every file the tables name, and find the wav files no row names."""
    report = Report(source=src)
    rows, jobs, bad = [], [], []
    for split, df in src.tables.items():
        folder = src.folders[split]
        problem = files.folder_problem(folder)
        if problem:  # one line, not one per row
            report.errors.append(f"{folder}: audio folder for {src.csvs[split]}: {problem}")
            continue
        for fname in df["fname"]:
            if not fname or files.fname_problem(fname):  # a table problem already: never read outside the folder
                continue
            rows.append((split, fname, folder / fname))
            jobs.append((folder / fname, max_seconds, min_peak_dbfs))
    n_jobs = n_jobs or os.cpu_count() or 1
    desc = "validate audio"
    if n_jobs > 1 and len(jobs) > 64:
        with mp.get_context("spawn").Pool(n_jobs) as pool:
            results = list(progress(pool.imap(_scan_star, jobs, chunksize=64), total=len(jobs), desc=desc))
    else:
        results = [scan_file(*j) for j in progress(jobs, desc=desc)]
    formats, seconds = Counter(), 0.0
    for (split, fname, path), r in zip(rows, results):
        if "sr" in r:
            formats[_format(r)] += 1
        if r["problem"] == "missing":
            bad.append((split, fname, str(path), f"missing: named in {src.csvs[split]} but there is no such file"))
        elif r["problem"]:
            bad.append((split, fname, str(path), r["problem"]))
        else:
            seconds += r["seconds"]
            report.over_full_scale += r["over_full_scale"]
    for split, df in src.tables.items():
        folder = src.folders[split]
        if files.folder_problem(folder):
            continue
        named = set(df["fname"]) | src.dropped.get(split, set())
        for p in sorted(folder.iterdir()):
            if p.name not in named and p.suffix.lower() == ".wav":
                bad.append((split, _printable(p.name), _printable(str(p)), f"no row in {src.csvs[split].name}"))
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

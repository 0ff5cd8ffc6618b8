"""Know your data: what `prepare` brought into data/raw, before anything is trained on it.

For every split (curated, noisy, test) the report reads each wav's header (`soundfile.info`:
sample rate, channels, sample format, duration) and its samples (`fat.audio.load` at the file's
own rate, mixed to mono as the features see it: peak and RMS level), then summarises
  - clips per class, per split, and labels per clip;
  - clip durations, sample rates, channel counts and sample formats found;
  - silent clips (peak below `report.silence_dbfs`) and short clips (shorter than `report.short_s`),
    listed one per line so a person can listen to them;
  - the label distribution shift between the noisy and the curated set (each class's share of all
    labels in a split; total variation distance and Jensen-Shannon divergence between the two).
It works on the embedded synthetic data and on the real FSDKaggle2019 directory alike.
"""
from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from fat.data import audio
from fat.data import tables as data
from fat.log import progress

SPLITS = ("curated", "noisy", "test")


def clip_stats(path: str | Path) -> dict:
    """Header facts and levels of one wav; unreadable files raise AudioError naming the file."""
    path = Path(path)
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise audio.AudioError(f"{path}: unreadable audio ({e})") from e
    y = audio.load(path, info.samplerate)  # mono, native rate (no resampling)
    peak = float(np.max(np.abs(y)))
    rms = float(np.sqrt(np.mean(np.square(y, dtype=np.float64))))
    return {
        "sample_rate": int(info.samplerate), "channels": int(info.channels), "subtype": str(info.subtype),
        "duration": round(info.frames / info.samplerate, 4),
        "peak_dbfs": round(_dbfs(peak), 2), "rms_dbfs": round(_dbfs(rms), 2),
    }


def _dbfs(x: float) -> float:
    return float(20 * np.log10(max(x, 1e-10)))


def scan_split(raw_dir: str | Path, split: str, n_jobs: int = 0) -> pd.DataFrame:
    """One row per clip of `split`: fname, labels, n_labels and the `clip_stats` columns."""
    table = data.split_table(raw_dir, split)
    folder = data.audio_dir(raw_dir, split)
    paths = [folder / f for f in table["fname"]]
    n_jobs = n_jobs or mp.cpu_count()
    desc = f"report {split}"
    if n_jobs > 1 and len(paths) > 1:
        with mp.get_context("spawn").Pool(min(n_jobs, len(paths))) as pool:
            stats = list(progress(pool.imap(clip_stats, paths, chunksize=16), total=len(paths), desc=desc))
    else:
        stats = [clip_stats(p) for p in progress(paths, desc=desc)]
    out = table.reset_index(drop=True).copy()
    out["n_labels"] = out["labels"].map(lambda s: len(data.split_labels(s)))
    return pd.concat([out, pd.DataFrame(stats, index=out.index)], axis=1)


def class_counts(tables: dict[str, pd.DataFrame], classes: list[str]) -> pd.DataFrame:
    """class + clips per class of each labelled split, + each class's share of the split's labels."""
    out = pd.DataFrame({"class": classes})
    for split, t in tables.items():
        if t["n_labels"].sum() == 0:  # test without labels
            continue
        y = data.multi_hot(t["labels"], classes)
        out[split] = y.sum(axis=0).astype(int)
        out[f"{split}_share"] = np.round(out[split] / max(int(out[split].sum()), 1), 6)
    if "curated" in out and "noisy" in out:
        out["shift"] = np.round(out["noisy_share"] - out["curated_share"], 6)
    return out


def label_shift(p: np.ndarray, q: np.ndarray) -> dict:
    """Total variation distance and Jensen-Shannon divergence (bits) between two class distributions."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if p.sum() <= 0 or q.sum() <= 0:
        raise ValueError("label_shift: a split has no labels")
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a, b):
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / b[nz])))

    return {"total_variation": round(0.5 * float(np.abs(p - q).sum()), 6),
            "js_divergence_bits": round(0.5 * kl(p, m) + 0.5 * kl(q, m), 6)}


def split_summary(t: pd.DataFrame, classes: list[str], silence_dbfs: float, short_s: float) -> dict:
    d = t["duration"]
    out = {
        "clips": int(len(t)),
        "hours": round(float(d.sum()) / 3600, 3),
        "duration_s": {"min": round(float(d.min()), 3), "median": round(float(d.median()), 3),
                       "mean": round(float(d.mean()), 3), "max": round(float(d.max()), 3)},
        "sample_rates": _counts(t["sample_rate"]),
        "channels": _counts(t["channels"]),
        "subtypes": _counts(t["subtype"]),
        "silent_clips": int((t["peak_dbfs"] < silence_dbfs).sum()),
        "short_clips": int((d < short_s).sum()),
    }
    if t["n_labels"].sum():
        out["labels_per_clip"] = _counts(t["n_labels"])
        out["mean_labels_per_clip"] = round(float(t["n_labels"].mean()), 3)
        out["multi_label_share"] = round(float((t["n_labels"] > 1).mean()), 4)
        per_class = data.multi_hot(t["labels"], classes).sum(axis=0)
        out["clips_per_class"] = {"min": int(per_class.min()), "median": float(np.median(per_class)),
                                  "max": int(per_class.max())}
        out["classes_without_clips"] = int((per_class == 0).sum())
    return out


def _counts(s: pd.Series) -> dict:
    """{value: count} with string keys in sorted value order (JSON / dvc metrics friendly)."""
    vc = s.value_counts()
    return {str(k): int(vc[k]) for k in sorted(vc.index)}


def flagged_clips(tables: dict[str, pd.DataFrame], silence_dbfs: float, short_s: float) -> pd.DataFrame:
    """split, fname, problem (silent / short), duration, peak_dbfs: the clips worth a listen."""
    rows = []
    for split, t in tables.items():
        for problem, mask in (("silent", t["peak_dbfs"] < silence_dbfs), ("short", t["duration"] < short_s)):
            for _, r in t[mask].iterrows():
                rows.append({"split": split, "fname": r["fname"], "problem": problem,
                             "duration": r["duration"], "peak_dbfs": r["peak_dbfs"]})
    return pd.DataFrame(rows, columns=["split", "fname", "problem", "duration", "peak_dbfs"])


def build(raw_dir: str | Path, cfg: dict, n_jobs: int = 0) -> dict:
    """Scan every split of `raw_dir`. Returns {"metrics": JSON-able dict, "tables": per-split frames,
    "class_counts": frame, "flagged": frame}."""
    silence_dbfs, short_s = float(cfg["silence_dbfs"]), float(cfg["short_s"])
    classes = data.vocabulary(raw_dir)
    tables = {s: scan_split(raw_dir, s, n_jobs) for s in SPLITS}
    counts = class_counts(tables, classes)
    metrics = {"classes": len(classes), "silence_dbfs": silence_dbfs, "short_s": short_s,
               "splits": {s: split_summary(t, classes, silence_dbfs, short_s) for s, t in tables.items()}}
    shift = label_shift(counts["curated"], counts["noisy"])
    order = counts.sort_values("shift")
    metrics["noisy_vs_curated"] = {  # shift = a class's share of the noisy labels minus its curated share
        **shift,
        "most_over_represented": str(order["class"].iloc[-1]), "max_shift": float(order["shift"].iloc[-1]),
        "most_under_represented": str(order["class"].iloc[0]), "min_shift": float(order["shift"].iloc[0]),
    }
    return {"metrics": metrics, "tables": tables, "class_counts": counts,
            "flagged": flagged_clips(tables, silence_dbfs, short_s)}


def figures(rep: dict, short_s: float) -> dict:
    """{name: matplotlib Figure} of the report (see fat.evaluation.plots)."""
    from fat.evaluation import plots

    tables = rep["tables"]
    return {
        "class_counts": plots.class_counts(rep["class_counts"]),
        "label_shift": plots.label_shift(rep["class_counts"]),
        "labels_per_clip": plots.labels_per_clip({s: t["n_labels"] for s, t in tables.items() if t["n_labels"].sum()}),
        "durations": plots.durations({s: t["duration"].to_numpy() for s, t in tables.items()}, short_s),
        "audio_formats": plots.audio_formats({s: t for s, t in tables.items()}),
    }

"""Result and data figures as PNG (matplotlib, no display needed), declared as DVC plots in dvc.yaml
so that `dvc plots show` / `dvc plots diff` put them on the page next to the vega plots.

Each function returns a `matplotlib.figure.Figure`; `save_png` writes it atomically. The same data
give byte-identical files (no timestamps in the PNG), so git only sees real changes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fat.io import atomic_path

SPLIT_COLORS = {"curated": "#1f77b4", "noisy": "#ff7f0e", "test": "#2ca02c"}
MEMBER_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2"]


def save_png(fig: Figure, path: str | Path, dpi: int = 100) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})


def correlation_heatmap(correlation: dict, scores: dict, kept: list, dropped: dict, max_corr: float) -> Figure:
    """OOF Pearson correlation between ensemble members; dropped members' labels in red with the
    member and r that dropped them, and the offending cells outlined."""
    names = sorted(correlation, key=lambda n: (-scores.get(n, 0.0), n))
    m = np.array([[correlation[a][b] for b in names] for a in names], dtype=float)
    n = len(names)
    fig = Figure(figsize=(2.2 + 1.1 * n, 1.6 + 0.9 * n), layout="constrained")
    ax = fig.add_subplot()
    off = m[~np.eye(n, dtype=bool)] if n > 1 else np.array([1.0])
    im = ax.imshow(m, cmap="viridis", vmin=min(0.5, float(off.min())), vmax=1.0)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{m[i, j]:.3f}", ha="center", va="center",
                    color="black" if m[i, j] > 0.8 else "white", fontsize=9)
    labels = []
    for name in names:
        label = f"{name}\nOOF {scores[name]:.4f}" if name in scores else name
        if name in dropped:
            label += f"\nDROPPED (r={dropped[name]['r']:.3f} with {dropped[name]['correlated_with']})"
        labels.append(label)
    ax.set_xticks(range(n), [nm if nm not in dropped else f"{nm} (dropped)" for nm in names], rotation=30, ha="right")
    ax.set_yticks(range(n), labels, fontsize=8)
    for tick, name in zip(ax.get_yticklabels(), names):
        tick.set_color("crimson" if name in dropped else "black")
    for tick, name in zip(ax.get_xticklabels(), names):
        tick.set_color("crimson" if name in dropped else "black")
    for name, why in dropped.items():
        i, j = names.index(name), names.index(why["correlated_with"])
        for a, b in ((i, j), (j, i)):
            ax.add_patch(_cell_outline(b, a))
    fig.colorbar(im, ax=ax, shrink=0.8, label="Pearson r")
    ax.set_title(f"Ensemble members: OOF correlation (drop above {max_corr:g})\nkept: {', '.join(kept)}", fontsize=10)
    return fig


def _cell_outline(x, y):
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="crimson", linewidth=2.5)


def fold_bars(folds: dict) -> Figure:
    """OOF lwlrap per fold (groups) and member (bars): {"fold0": {"baseline": 0.7, …, "ensemble": 0.8}, …}."""
    fold_names = list(folds)
    members = list(next(iter(folds.values())))
    width = 0.8 / len(members)
    fig = Figure(figsize=(1.6 + 1.3 * len(fold_names) * max(1, len(members) / 3), 4.2), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(fold_names))
    for i, member in enumerate(members):
        vals = [folds[f].get(member, np.nan) for f in fold_names]
        color = "black" if member == "ensemble" else MEMBER_COLORS[i % len(MEMBER_COLORS)]
        bars = ax.bar(x - 0.4 + width * (i + 0.5), vals, width, label=member, color=color, alpha=0.85)
        ax.bar_label(bars, fmt="%.3f", fontsize=7, rotation=90, padding=2)
    ax.set_xticks(x, fold_names)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("OOF lwlrap")
    ax.set_title("Out-of-fold lwlrap by member and fold")
    ax.legend(loc="upper center", ncols=len(members), fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return fig


def class_counts(counts: pd.DataFrame) -> Figure:
    """Clips per class in each labelled split (horizontal bars, sorted by the curated count)."""
    splits = [s for s in ("curated", "noisy", "test") if s in counts]
    c = counts.sort_values(splits[0], ascending=True)
    n = len(c)
    fig = Figure(figsize=(7.5, 1.5 + 0.28 * n * max(1, len(splits) / 2)), layout="constrained")
    ax = fig.add_subplot()
    h = 0.8 / len(splits)
    y = np.arange(n)
    for i, s in enumerate(splits):
        ax.barh(y - 0.4 + h * (i + 0.5), c[s], h, label=f"{s} ({int(c[s].sum())} labels)", color=SPLIT_COLORS[s])
    ax.set_yticks(y, c["class"], fontsize=7 if n > 40 else 8)
    ax.set_xlabel("clips carrying the class")
    ax.set_title("Clips per class")
    ax.legend(fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return fig


def label_shift(counts: pd.DataFrame) -> Figure:
    """Noisy minus curated share of each class in its split's labels (percentage points)."""
    c = counts.sort_values("shift")
    n = len(c)
    fig = Figure(figsize=(7.5, 1.5 + 0.26 * n), layout="constrained")
    ax = fig.add_subplot()
    vals = 100 * c["shift"].to_numpy()
    ax.barh(np.arange(n), vals, color=np.where(vals >= 0, SPLIT_COLORS["noisy"], SPLIT_COLORS["curated"]))
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(np.arange(n), c["class"], fontsize=7 if n > 40 else 8)
    ax.set_xlabel("share of noisy labels - share of curated labels (percentage points)")
    ax.set_title("Label distribution shift, noisy vs curated")
    ax.grid(axis="x", alpha=0.3)
    return fig


def labels_per_clip(n_labels: dict) -> Figure:
    """Share of clips with 1, 2, 3, … labels in each split: {split: Series of label counts}."""
    ks = np.arange(int(min(s.min() for s in n_labels.values())), int(max(s.max() for s in n_labels.values())) + 1)
    fig = Figure(figsize=(6.5, 3.6), layout="constrained")
    ax = fig.add_subplot()
    w = 0.8 / len(n_labels)
    for i, (split, s) in enumerate(n_labels.items()):
        share = np.array([(s == k).mean() for k in ks])
        bars = ax.bar(ks - 0.4 + w * (i + 0.5), 100 * share, w, label=f"{split} ({len(s)} clips)",
                      color=SPLIT_COLORS.get(split))
        ax.bar_label(bars, labels=[f"{100 * v:.0f}%" if v else "" for v in share], fontsize=7)
    ax.set_xticks(ks)
    ax.set_xlabel("labels per clip")
    ax.set_ylabel("% of clips")
    ax.set_title("Labels per clip")
    ax.legend(fontsize=8)
    return fig


def durations(durs: dict, short_s: float) -> Figure:
    """Histogram of clip durations per split, with the `short` threshold marked."""
    top = max(float(np.max(d)) for d in durs.values())
    bins = np.linspace(0, top * 1.0001, 41)
    fig = Figure(figsize=(7.5, 3.8), layout="constrained")
    ax = fig.add_subplot()
    for split, d in durs.items():
        ax.hist(d, bins=bins, histtype="step", linewidth=1.8, color=SPLIT_COLORS.get(split),
                label=f"{split}: {len(d)} clips, median {np.median(d):.1f} s, {np.sum(d) / 3600:.2f} h")
    ax.axvline(short_s, color="crimson", linestyle="--", linewidth=1)
    ax.text(short_s, ax.get_ylim()[1] * 0.95, f" short < {short_s:g} s", color="crimson", fontsize=8, va="top")
    ax.set_xlabel("duration (s)")
    ax.set_ylabel("clips")
    ax.set_title("Clip durations")
    ax.legend(fontsize=8)
    return fig


def audio_formats(tables: dict) -> Figure:
    """Clips per (sample rate, channels, sample format) found in each split."""
    keys = sorted({(int(r.sample_rate), int(r.channels), str(r.subtype))
                   for t in tables.values() for r in t[["sample_rate", "channels", "subtype"]].itertuples()})
    labels = [f"{sr / 1000:g} kHz, {ch} ch, {st}" for sr, ch, st in keys]
    fig = Figure(figsize=(7.5, 1.6 + 0.45 * len(keys) * len(tables)), layout="constrained")
    ax = fig.add_subplot()
    h = 0.8 / len(tables)
    y = np.arange(len(keys))
    for i, (split, t) in enumerate(tables.items()):
        combo = list(zip(t["sample_rate"].astype(int), t["channels"].astype(int), t["subtype"].astype(str)))
        vals = [sum(c == k for c in combo) for k in keys]
        bars = ax.barh(y - 0.4 + h * (i + 0.5), vals, h, label=split, color=SPLIT_COLORS.get(split))
        ax.bar_label(bars, fontsize=7, padding=2)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlabel("clips")
    ax.set_title("Audio formats found (resampled to audio.sample_rate, mixed to mono)")
    ax.legend(fontsize=8)
    return fig

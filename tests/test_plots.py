"""Result figures (fat/evaluation/plots.py): the ensemble's correlation heatmap with dropped members marked,
and OOF lwlrap per member and fold, as PNG files a person opens."""
from __future__ import annotations

import numpy as np
from matplotlib.image import imread

from fat.evaluation import plots

CORR = {"baseline": {"baseline": 1.0, "finetune": 0.76, "retrain": 0.72},
        "finetune": {"baseline": 0.76, "finetune": 1.0, "retrain": 0.985},
        "retrain": {"baseline": 0.72, "finetune": 0.985, "retrain": 1.0}}
SCORES = {"baseline": 0.72, "finetune": 0.81, "retrain": 0.82}


def _texts(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts] + \
           [t.get_text() for ax in fig.axes for t in ax.get_yticklabels() + ax.get_xticklabels()]


def test_correlation_heatmap_marks_the_dropped_member(tmp_path):
    dropped = {"finetune": {"correlated_with": "retrain", "r": 0.985}}
    fig = plots.correlation_heatmap(CORR, SCORES, ["retrain", "baseline"], dropped, 0.97)
    ax = fig.axes[0]
    order = [t.get_text().split("\n")[0] for t in ax.get_yticklabels()]
    assert order == ["retrain", "finetune", "baseline"]  # best member first
    shown = ax.images[0].get_array()
    assert np.allclose(shown, [[1, 0.985, 0.72], [0.985, 1, 0.76], [0.72, 0.76, 1]])
    labels = {t.get_text().split("\n")[0]: t for t in ax.get_yticklabels()}
    assert "DROPPED (r=0.985 with retrain)" in labels["finetune"].get_text()
    assert labels["finetune"].get_color() == "crimson" and labels["baseline"].get_color() == "black"
    assert len(ax.patches) == 2  # the two cells that dropped it are outlined
    assert {"0.985", "0.720", "1.000"} <= set(_texts(fig))
    plots.save_png(fig, tmp_path / "c.png")
    assert imread(tmp_path / "c.png")[..., :3].std() > 0.05


def test_correlation_heatmap_without_drops_has_no_outlines():
    fig = plots.correlation_heatmap(CORR, SCORES, ["retrain", "finetune", "baseline"], {}, 0.99)
    assert len(fig.axes[0].patches) == 0
    assert not any("DROPPED" in t for t in _texts(fig))


def test_fold_bars_show_every_member_and_fold(tmp_path):
    folds = {"fold0": {"baseline": 0.7, "finetune": 0.8, "ensemble": 0.85},
             "fold1": {"baseline": 0.6, "finetune": 0.75, "ensemble": 0.8}}
    fig = plots.fold_bars(folds)
    ax = fig.axes[0]
    heights = sorted(round(p.get_height(), 6) for p in ax.patches)
    assert heights == sorted([0.7, 0.8, 0.85, 0.6, 0.75, 0.8])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["fold0", "fold1"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["baseline", "finetune", "ensemble"]
    plots.save_png(fig, tmp_path / "f.png")
    assert imread(tmp_path / "f.png").shape[1] > 200

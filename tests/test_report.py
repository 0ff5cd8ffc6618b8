"""Know your data (fat/data/report.py): header facts, levels, class counts, label shift, flagged clips,
and the figures of the `report` stage, on a hand-made FAT2019 layout with known answers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from matplotlib.image import imread
from scipy.spatial.distance import jensenshannon

from fat.data import audio, report
from fat.evaluation import plots

CLASSES = ["a", "b", "c"]
CFG = {"silence_dbfs": -60.0, "short_s": 0.5}
# split -> [(fname, labels, sample rate, channels, seconds, silent)]
CLIPS = {
    "curated": [("c1.wav", "a", 16000, 1, 1.0, False), ("c2.wav", "a,b", 44100, 2, 0.25, False),
                ("c3.wav", "c", 16000, 1, 1.0, True)],
    "noisy": [("n1.wav", "a", 16000, 1, 2.0, False), ("n2.wav", "a", 16000, 1, 2.0, False),
              ("n3.wav", "b", 22050, 1, 1.5, False)],
    "test": [("t1.wav", "b", 16000, 1, 1.0, False), ("t2.wav", "c", 48000, 1, 0.75, False)],
}
FOLDERS = {"curated": ("train_curated.csv", "train_curated"), "noisy": ("train_noisy.csv", "train_noisy"),
           "test": ("test_labels.csv", "test")}


def make_raw(root: Path, test_labels: bool = True) -> Path:
    rng = np.random.default_rng(0)
    for split, clips in CLIPS.items():
        csv, folder = FOLDERS[split]
        (root / folder).mkdir(parents=True)
        for fname, _, sr, ch, secs, silent in clips:
            n = int(round(sr * secs))
            y = np.zeros((n, ch)) if silent else 0.3 * rng.standard_normal((n, ch))
            sf.write(str(root / folder / fname), y.clip(-1, 1), sr, subtype="PCM_16")
        if split != "test" or test_labels:
            pd.DataFrame([c[:2] for c in clips], columns=["fname", "labels"]).to_csv(root / csv, index=False)
    sub = pd.DataFrame(0.0, index=range(len(CLIPS["test"])), columns=CLASSES)
    sub.insert(0, "fname", [c[0] for c in CLIPS["test"]])
    sub.to_csv(root / "sample_submission.csv", index=False)
    return root


@pytest.fixture
def raw(tmp_path):
    return make_raw(tmp_path / "raw")


def test_metrics_know_the_data(raw):
    rep = report.build(raw, CFG, n_jobs=1)
    m = rep["metrics"]
    assert m["classes"] == 3
    cur = m["splits"]["curated"]
    assert cur["clips"] == 3
    assert cur["sample_rates"] == {"16000": 2, "44100": 1}
    assert cur["channels"] == {"1": 2, "2": 1}
    assert cur["subtypes"] == {"PCM_16": 3}
    assert cur["duration_s"] == {"min": 0.25, "median": 1.0, "mean": 0.75, "max": 1.0}
    assert cur["silent_clips"] == 1 and cur["short_clips"] == 1
    assert cur["labels_per_clip"] == {"1": 2, "2": 1} and cur["multi_label_share"] == pytest.approx(1 / 3, abs=1e-4)
    assert cur["clips_per_class"] == {"min": 1, "median": 1.0, "max": 2} and cur["classes_without_clips"] == 0
    noisy = m["splits"]["noisy"]
    assert noisy["sample_rates"] == {"16000": 2, "22050": 1} and noisy["hours"] == pytest.approx(5.5 / 3600, abs=1e-3)
    assert noisy["classes_without_clips"] == 1  # nobody labelled c in the noisy set
    assert m["splits"]["test"]["sample_rates"] == {"16000": 1, "48000": 1}
    assert m["splits"]["test"]["short_clips"] == 0

    counts = rep["class_counts"].set_index("class")
    assert counts["curated"].tolist() == [2, 1, 1] and counts["noisy"].tolist() == [2, 1, 0]
    assert counts["test"].tolist() == [0, 1, 1]
    p, q = np.array([2, 1, 1]) / 4, np.array([2, 1, 0]) / 3
    np.testing.assert_allclose(counts["shift"], q - p, atol=1e-6)
    shift = m["noisy_vs_curated"]
    assert shift["total_variation"] == pytest.approx(0.5 * np.abs(p - q).sum(), abs=1e-6)
    assert shift["js_divergence_bits"] == pytest.approx(jensenshannon(p, q, base=2) ** 2, abs=1e-6)
    assert shift["most_over_represented"] == "a" and shift["most_under_represented"] == "c"


def test_flagged_clips_name_the_silent_and_short_ones(raw):
    flagged = report.build(raw, CFG, n_jobs=1)["flagged"]
    assert flagged[["split", "fname", "problem"]].values.tolist() == [["curated", "c3.wav", "silent"],
                                                                      ["curated", "c2.wav", "short"]]
    assert flagged.set_index("fname").loc["c3.wav", "peak_dbfs"] < -100
    stricter = report.build(raw, {"silence_dbfs": -60.0, "short_s": 1.01}, n_jobs=1)["flagged"]
    assert set(stricter.loc[stricter["problem"] == "short", "fname"]) == {"c1.wav", "c2.wav", "c3.wav", "t1.wav",
                                                                          "t2.wav"}


def test_clip_stats_levels(tmp_path):
    sr = 8000
    t = np.arange(sr) / sr
    sf.write(str(tmp_path / "sine.wav"), 0.5 * np.sin(2 * np.pi * 440 * t), sr, subtype="FLOAT")
    s = report.clip_stats(tmp_path / "sine.wav")
    assert s["peak_dbfs"] == pytest.approx(20 * np.log10(0.5), abs=0.01)
    assert s["rms_dbfs"] == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=0.01)
    assert (s["sample_rate"], s["channels"], s["subtype"], s["duration"]) == (sr, 1, "FLOAT", 1.0)


def test_unreadable_clip_is_an_error_naming_the_file(raw):
    bad = raw / "train_noisy" / "n2.wav"
    bad.write_bytes(bad.read_bytes()[:2000])  # truncated copy
    with pytest.raises(audio.AudioError, match="n2.wav"):
        report.build(raw, CFG, n_jobs=1)


def test_without_test_labels_and_with_worker_processes(tmp_path):
    raw = make_raw(tmp_path / "raw", test_labels=False)
    one = report.build(raw, CFG, n_jobs=1)
    two = report.build(raw, CFG, n_jobs=2)
    assert one["metrics"] == two["metrics"]
    pd.testing.assert_frame_equal(one["class_counts"], two["class_counts"])
    assert "test" not in one["class_counts"] and "labels_per_clip" not in one["metrics"]["splits"]["test"]
    assert one["metrics"]["splits"]["test"]["clips"] == 2


def test_figures_are_written_as_pngs(raw, tmp_path):
    rep = report.build(raw, CFG, n_jobs=1)
    figs = report.figures(rep, CFG["short_s"])
    assert set(figs) == {"class_counts", "label_shift", "labels_per_clip", "durations", "audio_formats"}
    for name, fig in figs.items():
        path = tmp_path / "out" / f"{name}.png"
        plots.save_png(fig, path)
        img = imread(path)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 300
        assert img[..., :3].std() > 0.05, f"{name}: a blank image"
    again = tmp_path / "again.png"
    plots.save_png(report.figures(rep, CFG["short_s"])["durations"], again)
    assert again.read_bytes() == (tmp_path / "out/durations.png").read_bytes()  # same data, same bytes

"""The `fat` command line: preset, validate, score, synth."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from fat import metrics
from fat.tools import cli

ROOT = Path(__file__).resolve().parents[1]
TINY_SYNTH = {
    "sample_rate": 16000, "n_classes": 3,
    "curated": {"n_clips": 4, "duration": [0.3, 0.6], "label_counts_p": [1.0]},
    "noisy": {"n_clips": 4, "duration": [0.3, 0.6], "label_counts_p": [1.0], "snr_db": [5, 10], "label_noise": 0.5},
    "test": {"n_clips": 3, "duration": [0.3, 0.6], "label_counts_p": [0.5, 0.5]},
}


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 0
    assert "dvc repro" in capsys.readouterr().out


def test_preset_list_and_apply(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    assert cli.main(["preset", "--list"]) == 0
    assert {"tiny", "fat2019"} <= {line.split()[0] for line in capsys.readouterr().out.splitlines()}
    assert cli.main(["preset", "fat2019", "--params", str(params)]) == 0
    p = yaml.safe_load(params.read_text())
    assert p["features"]["n_mels"] == 128 and p["audio"]["sample_rate"] == 44100 and p["cv"]["n_folds"] == 5
    assert "# Every knob of the pipeline" in params.read_text()  # comments survive
    assert cli.main(["preset", "nope", "--params", str(params)]) == 2
    assert "unknown preset" in capsys.readouterr().err


def test_synth_then_validate_then_score(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"seed": 1, "synth": TINY_SYNTH}))
    out = tmp_path / "ds"
    assert cli.main(["synth", str(out), "--params", str(params), "--jobs", "1"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["curated_clips"] == 4
    assert cli.main(["synth", str(out), "--params", str(params)]) == 2  # refuses to overwrite

    assert cli.main(["validate", str(out)]) == 0
    assert "OK" in capsys.readouterr().out
    next((out / "train_curated").iterdir()).unlink()
    assert cli.main(["validate", str(out)]) == 1
    assert "missing: named in" in capsys.readouterr().out

    sub = pd.read_csv(out / "sample_submission.csv")
    classes = list(sub.columns[1:])
    probs = np.random.default_rng(0).random((len(sub), len(classes)))
    sub[classes] = probs
    sub.to_csv(tmp_path / "sub.csv", index=False)
    assert cli.main(["score", str(tmp_path / "sub.csv"), str(out / "test_labels.csv")]) == 0
    got = json.loads(capsys.readouterr().out)
    labels = pd.read_csv(out / "test_labels.csv").set_index("fname").loc[sub["fname"], "labels"]
    truth = np.array([[c in s.split(",") for c in classes] for s in labels], dtype=float)
    assert got["lwlrap"] == pytest.approx(metrics.lwlrap(truth, probs), abs=1e-6)

"""Tests for fat/io.py: atomic outputs, JSON of numpy values, prediction files."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fat.io import atomic_path, load_predictions, save_predictions, write_csv, write_json


def listing(d):
    return sorted(p.name for p in d.iterdir())


# ---------------------------------------------------------------------------------------------
# atomic_path
# ---------------------------------------------------------------------------------------------
def test_atomic_file_success_leaves_only_target(tmp_path):
    out = tmp_path / "out.txt"
    with atomic_path(out) as tmp:
        assert tmp != out
        assert tmp.name == "out.txt"
        assert tmp.parent.parent == tmp_path  # a sibling temp dir, same filesystem
        tmp.write_text("hello")
        assert not out.exists()  # nothing visible before the body finishes
    assert out.read_text() == "hello"
    assert listing(tmp_path) == ["out.txt"]


def test_atomic_file_replaces_existing(tmp_path):
    out = tmp_path / "out.txt"
    out.write_text("old")
    with atomic_path(out) as tmp:
        tmp.write_text("new")
        assert out.read_text() == "old"
    assert out.read_text() == "new"
    assert listing(tmp_path) == ["out.txt"]


def test_atomic_file_failure_keeps_old_file_and_no_leftovers(tmp_path):
    out = tmp_path / "out.txt"
    out.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(out) as tmp:
            tmp.write_text("half-writ")
            raise RuntimeError("boom")
    assert out.read_text() == "old"
    assert listing(tmp_path) == ["out.txt"]


def test_atomic_file_failure_without_previous_file_creates_nothing(tmp_path):
    out = tmp_path / "out.txt"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(out) as tmp:
            tmp.write_text("partial")
            raise KeyboardInterrupt
    assert listing(tmp_path) == []


def test_atomic_creates_missing_parent_dirs(tmp_path):
    out = tmp_path / "a" / "b" / "out.txt"
    with atomic_path(out) as tmp:
        tmp.write_text("x")
    assert out.read_text() == "x"
    assert listing(out.parent) == ["out.txt"]


def test_atomic_directory_success_and_replace(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "stale.bin").write_text("stale")
    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "weights.bin").write_text("w")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "meta.json").write_text("{}")
        assert (out / "stale.bin").exists()
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "sub",
        "sub/meta.json",
        "weights.bin",
    ]
    assert listing(tmp_path) == ["model"]


def test_atomic_directory_failure_keeps_old_directory(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "old.bin").write_text("old")
    with pytest.raises(ValueError):
        with atomic_path(out) as tmp:
            tmp.mkdir()
            (tmp / "new.bin").write_text("new")
            raise ValueError("stage killed")
    assert listing(out) == ["old.bin"]
    assert (out / "old.bin").read_text() == "old"
    assert listing(tmp_path) == ["model"]


def test_atomic_file_can_replace_directory(tmp_path):
    out = tmp_path / "thing"
    out.mkdir()
    (out / "x").write_text("x")
    with atomic_path(out) as tmp:
        tmp.write_text("now a file")
    assert out.is_file() and out.read_text() == "now a file"
    assert listing(tmp_path) == ["thing"]


# ---------------------------------------------------------------------------------------------
# write_json / write_csv
# ---------------------------------------------------------------------------------------------
def test_write_json_numpy_values(tmp_path):
    out = tmp_path / "metrics.json"
    obj = {
        "lwlrap": np.float32(0.75),
        "f64": np.float64(0.125),
        "n": np.int64(7),
        "flag": np.bool_(True),
        "per_class": np.array([0.5, 0.25]),
        "confusion": np.arange(4, dtype=np.int32).reshape(2, 2),
        "nested": {"x": [np.int16(3), 1.5, "s"]},
    }
    write_json(out, obj)
    text = out.read_text()
    assert text.endswith("\n")
    back = json.loads(text)
    assert back == {
        "lwlrap": 0.75,
        "f64": 0.125,
        "n": 7,
        "flag": True,
        "per_class": [0.5, 0.25],
        "confusion": [[0, 1], [2, 3]],
        "nested": {"x": [3, 1.5, "s"]},
    }
    assert type(back["n"]) is int and type(back["flag"]) is bool
    assert list(back) == list(obj)  # key order kept
    assert listing(tmp_path) == ["metrics.json"]


def test_write_json_unserialisable_fails_and_leaves_old_file(tmp_path):
    out = tmp_path / "m.json"
    write_json(out, {"a": 1})
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        write_json(out, {"a": object()})
    assert json.loads(out.read_text()) == {"a": 1}
    assert listing(tmp_path) == ["m.json"]


def test_write_csv_no_index(tmp_path):
    out = tmp_path / "t.csv"
    write_csv(out, pd.DataFrame({"fname": ["a.wav", "b.wav"], "fold": [0, 1]}))
    assert out.read_text().splitlines() == ["fname,fold", "a.wav,0", "b.wav,1"]


# ---------------------------------------------------------------------------------------------
# predictions
# ---------------------------------------------------------------------------------------------
CLASSES = ["Accelerating_and_revving_and_vroom", "Bark", "Bass_drum", "Whispering"]


def test_predictions_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    fnames = [f"{i:08x}.wav" for i in range(25)]
    probs = rng.random((25, len(CLASSES)))
    probs[0, 0] = 1e-9  # tiny values survive the %.6g format
    path = tmp_path / "preds" / "oof.csv"
    save_predictions(path, fnames, probs, CLASSES)

    df = pd.read_csv(path)
    assert list(df.columns) == ["fname", *CLASSES]  # Kaggle submission layout
    assert len(df) == 25

    names, back = load_predictions(path, CLASSES)
    assert names == fnames
    assert back.dtype == np.float64 and back.shape == probs.shape
    np.testing.assert_allclose(back, probs, rtol=1e-5, atol=0)

    names2, back2 = load_predictions(path)  # vocabulary check is optional
    assert names2 == fnames
    np.testing.assert_array_equal(back2, back)
    assert listing(path.parent) == ["oof.csv"]


@pytest.mark.parametrize("shape", [(5, 3), (4, 4), (5,), (5, 4, 1)])
def test_save_predictions_shape_mismatch_names_path(tmp_path, shape):
    path = tmp_path / "bad.csv"
    fnames = [f"{i}.wav" for i in range(5)]
    with pytest.raises(ValueError) as exc:
        save_predictions(path, fnames, np.zeros(shape), CLASSES)
    msg = str(exc.value)
    assert str(path) in msg
    assert str(shape) in msg and "5 clips x 4 classes" in msg
    assert not path.exists()
    assert listing(tmp_path) == []


def test_load_predictions_class_mismatch(tmp_path):
    path = tmp_path / "p.csv"
    save_predictions(path, ["a.wav", "b.wav"], np.full((2, 4), 0.5), CLASSES)
    with pytest.raises(ValueError, match="class columns do not match") as exc:
        load_predictions(path, CLASSES[:3])
    assert str(path) in str(exc.value)
    with pytest.raises(ValueError, match="class columns do not match"):
        load_predictions(path, list(reversed(CLASSES)))  # same set, wrong order
    with pytest.raises(ValueError, match="class columns do not match"):
        load_predictions(path, [*CLASSES, "Zipper"])


def test_load_predictions_without_fname_column(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("clip,Bark\na.wav,0.5\n")
    with pytest.raises(ValueError, match="no 'fname' column"):
        load_predictions(path)

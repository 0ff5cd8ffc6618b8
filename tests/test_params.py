"""Tests for fat/params.py: loading params.yaml, fold-list check, deep merge, presets."""
from __future__ import annotations

import copy
import textwrap

import pytest
import yaml

import fat.params as P

PARAMS_TEXT = textwrap.dedent(
    """\
    # Top comment: every knob of the pipeline.
    seed: 2019

    data:
      source: synthetic   # synthetic or a directory
      n_jobs: 0           # 0 = all cores

    cv:
      n_folds: 5
      folds: [0, 1, 2, 3, 4]   # must be list(range(n_folds))

    train:                # shared by every training stage
      batch_size: 32
      epochs: 16
      lr: 0.002           # peak of the one-cycle schedule
    """
)


@pytest.fixture
def params_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(PARAMS_TEXT)
    return path


@pytest.fixture
def presets_dir(tmp_path, monkeypatch):
    d = tmp_path / "presets"
    d.mkdir()
    (d / "tiny.yaml").write_text(
        "# tiny profile\n"
        "cv:\n  n_folds: 3\n  folds: [0, 1, 2]\n"
        "train:\n  epochs: 2\n  new_knob: hello\n"
        "extra:\n  a: 1\n"
    )
    (d / "fast.yaml").write_text("train:\n  lr: 0.01\n")
    (d / "empty.yaml").write_text("# nothing\n")
    (d / "broken_folds.yaml").write_text("cv:\n  n_folds: 3\n")  # folds left at [0..4]
    (d / "notes.txt").write_text("not a preset")
    monkeypatch.setattr(P, "PRESETS_DIR", d)
    return d


# ---------------------------------------------------------------------------------------------
# load / check_folds
# ---------------------------------------------------------------------------------------------
def test_load_returns_mapping(params_file):
    params = P.load(params_file)
    assert params["seed"] == 2019
    assert params["cv"] == {"n_folds": 5, "folds": [0, 1, 2, 3, 4]}
    assert params["train"]["lr"] == 0.002
    assert P.load(str(params_file)) == params


def test_load_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(FileNotFoundError, match="params file not found") as exc:
        P.load(missing)
    assert str(missing) in str(exc.value)


@pytest.mark.parametrize(
    "text, kind", [("- a\n- b\n", "list"), ("just a string\n", "str"), ("", "NoneType"), ("3\n", "int")]
)
def test_load_non_mapping(tmp_path, text, kind):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"expected a mapping.*got {kind}") as exc:
        P.load(path)
    assert str(path) in str(exc.value)


def test_load_rejects_inconsistent_folds(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(PARAMS_TEXT.replace("n_folds: 5", "n_folds: 4"))
    with pytest.raises(ValueError, match=r"cv.folds must be \[0, 1, 2, 3\]") as exc:
        P.load(path)
    assert str(path) in str(exc.value)


@pytest.mark.parametrize(
    "cv",
    [
        {"n_folds": 3, "folds": [0, 1, 2, 3]},
        {"n_folds": 3, "folds": [0, 1]},
        {"n_folds": 3, "folds": [1, 2, 3]},
        {"n_folds": 3, "folds": [2, 1, 0]},
        {"n_folds": 2, "folds": []},
    ],
)
def test_check_folds_rejects_mismatch(cv):
    with pytest.raises(ValueError, match="cv.folds must be"):
        P.check_folds({"cv": cv}, "p.yaml")


@pytest.mark.parametrize(
    "params",
    [
        {"cv": {"n_folds": 3, "folds": [0, 1, 2]}},
        {"cv": {"n_folds": "4", "folds": [0, 1, 2, 3]}},
        {"cv": {"n_folds": 3}},  # nothing to compare against
        {"cv": {"folds": [7]}},
        {"seed": 1},
    ],
)
def test_check_folds_accepts(params):
    P.check_folds(params)  # no exception


# ---------------------------------------------------------------------------------------------
# merge
# ---------------------------------------------------------------------------------------------
def test_merge_deep_without_mutation():
    base = {
        "seed": 1,
        "cv": {"n_folds": 5, "folds": [0, 1, 2, 3, 4]},
        "train": {"lr": 0.1, "opt": {"name": "adam", "betas": [0.9, 0.99]}},
        "model": {"channels": ["mel"]},
    }
    override = {
        "cv": {"n_folds": 3, "folds": [0, 1, 2]},
        "train": {"opt": {"betas": [0.8, 0.9]}, "epochs": 2},
        "model": {"channels": ["mel", "delta"]},
        "new": {"x": 1},
    }
    base_before = copy.deepcopy(base)
    override_before = copy.deepcopy(override)

    out = P.merge(base, override)

    assert out == {
        "seed": 1,
        "cv": {"n_folds": 3, "folds": [0, 1, 2]},
        "train": {"lr": 0.1, "opt": {"name": "adam", "betas": [0.8, 0.9]}, "epochs": 2},
        "model": {"channels": ["mel", "delta"]},  # lists replace, not extend
        "new": {"x": 1},
    }
    assert base == base_before and override == override_before

    # the result shares no mutable state with either input
    out["train"]["opt"]["betas"].append(0)
    out["new"]["x"] = 2
    out["cv"]["folds"].append(9)
    assert base == base_before and override == override_before


def test_merge_type_changes_replace():
    base = {"a": {"b": 1}, "c": 5, "d": {"e": 1}}
    out = P.merge(base, {"a": 3, "c": {"x": 1}, "d": None})
    assert out == {"a": 3, "c": {"x": 1}, "d": None}
    assert base == {"a": {"b": 1}, "c": 5, "d": {"e": 1}}


def test_merge_empty_override_is_copy():
    base = {"a": {"b": [1]}}
    out = P.merge(base, {})
    assert out == base and out is not base and out["a"] is not base["a"]


# ---------------------------------------------------------------------------------------------
# presets
# ---------------------------------------------------------------------------------------------
def test_preset_names_only_yaml_sorted(presets_dir):
    assert P.preset_names() == ["broken_folds", "empty", "fast", "tiny"]


def test_load_preset(presets_dir):
    assert P.load_preset("fast") == {"train": {"lr": 0.01}}
    assert P.load_preset("empty") == {}


def test_load_preset_unknown_name_lists_available(presets_dir):
    with pytest.raises(ValueError, match="unknown preset 'huge'") as exc:
        P.load_preset("huge")
    assert "broken_folds, empty, fast, tiny" in str(exc.value)
    with pytest.raises(ValueError, match="unknown preset"):
        P.load_preset("notes")  # .txt files are not presets


def test_unknown_preset_does_not_touch_params(presets_dir, params_file):
    with pytest.raises(ValueError, match="unknown preset"):
        P.apply_preset("huge", params_file)
    assert params_file.read_text() == PARAMS_TEXT


def test_apply_preset_merges_and_keeps_comments(presets_dir, params_file):
    merged = P.apply_preset("tiny", params_file)
    text = params_file.read_text()

    # comments survive, including inline ones on untouched and touched sections
    for comment in [
        "# Top comment: every knob of the pipeline.",
        "# synthetic or a directory",
        "# 0 = all cores",
        "# shared by every training stage",
        "# peak of the one-cycle schedule",
    ]:
        assert comment in text, comment

    on_disk = yaml.safe_load(text)
    assert merged == on_disk
    assert on_disk["cv"] == {"n_folds": 3, "folds": [0, 1, 2]}
    assert on_disk["train"] == {"batch_size": 32, "epochs": 2, "lr": 0.002, "new_knob": "hello"}
    assert on_disk["data"] == {"source": "synthetic", "n_jobs": 0}
    assert on_disk["seed"] == 2019
    assert on_disk["extra"] == {"a": 1}
    # existing key order kept, new sections appended
    assert list(on_disk) == ["seed", "data", "cv", "train", "extra"]
    assert list(on_disk["train"]) == ["batch_size", "epochs", "lr", "new_knob"]
    # the result is what merge() would give, and load() accepts it
    assert merged == P.merge(yaml.safe_load(PARAMS_TEXT), P.load_preset("tiny"))
    assert P.load(params_file) == merged
    assert sorted(p.name for p in params_file.parent.iterdir()) == ["params.yaml", "presets"]


def test_apply_preset_is_idempotent_and_composable(presets_dir, params_file):
    P.apply_preset("fast", params_file)
    once = params_file.read_text()
    P.apply_preset("fast", params_file)
    assert params_file.read_text() == once
    merged = P.apply_preset("tiny", str(params_file))
    assert merged["train"]["lr"] == 0.01 and merged["train"]["epochs"] == 2


def test_apply_empty_preset_keeps_file(presets_dir, params_file):
    merged = P.apply_preset("empty", params_file)
    assert merged == yaml.safe_load(PARAMS_TEXT)
    assert params_file.read_text() == PARAMS_TEXT


def test_apply_preset_with_inconsistent_folds_rejected_and_file_untouched(presets_dir, params_file):
    with pytest.raises(ValueError, match="cv.folds must be"):
        P.apply_preset("broken_folds", params_file)
    assert params_file.read_text() == PARAMS_TEXT


def test_rejected_preset_leaves_no_temp_file(presets_dir, params_file):
    with pytest.raises(ValueError):
        P.apply_preset("broken_folds", params_file)
    assert sorted(p.name for p in params_file.parent.iterdir()) == ["params.yaml", "presets"]

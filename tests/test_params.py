"""Tests for fat/params.py: loading params.yaml, fold-list check, deep merge, presets."""
from __future__ import annotations

import copy
import dataclasses
import textwrap
from pathlib import Path

import pytest
import yaml

import fat.params as P

ROOT = Path(__file__).resolve().parents[1]

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
        "train:\n  epochs: 2\n  eval_every: 3\n"
        "report:\n  short_s: 1.0\n"
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
    assert params.seed == 2019
    assert params.cv == P.CV(n_folds=5, folds=(0, 1, 2, 3, 4))
    assert params.train.lr == 0.002 and params.train.epochs == 16
    assert params.model == P.Model()  # sections left out: the defaults
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
        P.Params.build({"cv": cv}, "p.yaml")


@pytest.mark.parametrize(
    "params",
    [
        {"cv": {"n_folds": 3, "folds": [0, 1, 2]}},
        {"cv": {"n_folds": 4.0, "folds": [0, 1, 2, 3]}},
        {"cv": {"n_folds": 3}},  # the default folds [0, 1, 2]
        {"seed": 1},
    ],
)
def test_check_folds_accepts(params):
    P.Params.build(params)  # no exception


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
    assert on_disk["train"] == {"batch_size": 32, "epochs": 2, "lr": 0.002, "eval_every": 3}
    assert on_disk["data"] == {"source": "synthetic", "n_jobs": 0}
    assert on_disk["seed"] == 2019
    assert on_disk["report"] == {"short_s": 1.0}
    # existing key order kept, new sections appended
    assert list(on_disk) == ["seed", "data", "cv", "train", "report"]
    assert list(on_disk["train"]) == ["batch_size", "epochs", "lr", "eval_every"]
    # the result is what merge() would give, and load() accepts it
    assert merged == P.merge(yaml.safe_load(PARAMS_TEXT), P.load_preset("tiny"))
    assert P.load(params_file) == P.Params.build(merged)


def test_a_preset_with_an_unknown_key_is_refused_and_the_file_untouched(presets_dir, params_file):
    (presets_dir / "typo.yaml").write_text("train:\n  epoch: 2\n")
    with pytest.raises(ValueError, match=r"train\.epoch is not a setting"):
        P.apply_preset("typo", params_file)
    assert params_file.read_text() == PARAMS_TEXT
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


# ---------------------------------------------------------------------------------------------
# the schema: types, ranges, unknown keys, family overrides
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("section, key, value, message", [
    ("mixup", "alpha", -0.4, r"mixup\.alpha must be >= 0 \(0 disables mixup\), got -0\.4"),
    ("mixup", "alpha", float("nan"), r"mixup\.alpha must be finite"),
    ("mixup", "alpha", 'lots', r"mixup\.alpha must be a number, got 'lots'"),
    ("train", "epochs", 0, r"train\.epochs must be a whole number >= 1, got 0"),
    ("train", "epochs", 2.5, r"train\.epochs must be a whole number >= 1, got 2\.5"),
    ("train", "batch_size", True, r"train\.batch_size must be a whole number >= 1"),
    ("train", "epochs", '2.0', r"train\.epochs must be a whole number >= 1, got '2\.0'"),
    ("augment", "time_masks", 1.5, r"augment\.time_masks must be a whole number >= 0, got 1\.5"),
    ("train", "lr", 0, r"train\.lr must be > 0, got 0"),
    ("train", "seed", -1, r"train\.seed must be a whole number >= 0 \(null: the top-level seed\), got -1"),
    ("baseline", "seed", 1.5, r"baseline\.seed must be a whole number >= 0"),
    ("train", "weight_decay", -0.0001, r"train\.weight_decay must be >= 0"),
    ("train", "warmup", 1.0, r"train\.warmup must be between 0 and 1 \(exclusive\), got 1\.0"),
    ("augment", "p", 1.5, r"augment\.p must be between 0 and 1, got 1\.5"),
    ("augment", "time_frac", -0.1, r"augment\.time_frac must be between 0 and 1"),
    ("augment", "freq_masks", -1, r"augment\.freq_masks must be a whole number >= 0, got -1"),
    ("pretrain", "epochs", 0, r"pretrain\.epochs must be a whole number >= 1, got 0"),
    ("tta", "masked", -1, r"tta\.masked must be a whole number >= 0, got -1"),
    ("data", "on_bad_audio", "ignore", r"data\.on_bad_audio must be one of \['error', 'skip'\], got 'ignore'"),
    ("model", "channels", ["mel", "chroma"], r"model\.channels\[1\] must be one of"),
    ("ensemble", "members", [], r"ensemble\.members must be a non-empty list"),
    ("pseudo", "agree", "yes", r"pseudo\.agree must be true or false, got 'yes'"),
    ("pseudo", "select", "lrap", r"pseudo\.select must be one of \['confidence', 'lwlrap'\], got 'lrap'"),
    ("pseudo", "per_class_cap", -1, r"pseudo\.per_class_cap must be a whole number >= 0 \(0 = no cap\), got -1"),
    ("retrain", "stages", 0, r"retrain\.stages must be a whole number >= 1, got 0"),
    ("label_issues", "splits", ["curated", "test"], r"label_issues\.splits\[1\] must be one of"),
    ("label_issues", "splits", [], r"label_issues\.splits must be a non-empty list"),
    ("label_issues", "filter_by", "all", r"label_issues\.filter_by must be one of"),
    ("label_issues", "relabel_min_p", 1.5, r"label_issues\.relabel_min_p must be between 0 and 1, got 1\.5"),
])
def test_a_wrong_type_or_range_names_the_key(section, key, value, message):
    """A typo in `dvc exp run -S …` stops the stage naming the key (a negative mixup.alpha used to
    train without mixup)."""
    with pytest.raises(P.ParamsError, match=message):
        P.Params.build({section: {key: value}})


def test_data_section_must_name_its_source_and_lists_every_bad_key():
    """Left out of a `data` section, the source would silently mean the synthetic data; the errors are
    DataErrors (prepare prints them without a traceback), every bad key of the section at once."""
    from fat.errors import DataError

    with pytest.raises(DataError, match=r"data\.source: missing") as e:
        P.Params.build({"data": {"n_jobs": -1, "max_seconds": float("nan")}})
    assert len(e.value.problems) == 3 and "data.n_jobs must be" in str(e.value) and "data.max_seconds" in str(e.value)
    with pytest.raises(P.ParamsError, match=r"data\.source must be .*not empty, got ' '"):
        P.Params.build({"data": {"source": " "}})
    assert P.Params.build({"data": {"source": "/x", "corrections": ""}}).data.corrections == ""
    assert P.Params.build({}).data == P.Data()  # no data section at all: the defaults


def test_sections_check_their_values_when_built_directly_too():
    with pytest.raises(P.ParamsError, match=r"train\.lr must be > 0"):
        P.Train(lr=0)
    assert P.Train(epochs=3.0).epochs == 3 and isinstance(P.Train(epochs=3.0).epochs, int)
    assert P.Mixup(alpha=0).alpha == 0.0 and isinstance(P.Mixup(alpha=0).alpha, float)


@pytest.mark.parametrize("params, message", [
    ({"extra": {"a": 1}}, r"unknown section 'extra'"),
    ({"train": {"epoch": 3}}, r"train\.epoch is not a setting"),
    ({"finetune": {"epoch": 3}}, r"finetune\.epoch is not a setting; a family section may override"),
    ({"baseline": {"init": "scratch"}}, r"baseline\.init is not a setting"),
    ({"synth": {"noisy": {"snr": [0, 1]}}}, r"synth\.noisy\.snr is not a setting"),
])
def test_unknown_sections_and_keys_are_refused(params, message):
    with pytest.raises(P.ParamsError, match=message):
        P.Params.build(params)


def test_defaults_are_the_shipped_params_yaml():
    """Every default lives in the section classes and equals params.yaml's value: a params file
    without a key means what the shipped file says (augment.p is 0.5, not the 0 of old code)."""
    shipped = P.load(ROOT / "params.yaml")
    assert shipped == P.Params()
    assert P.Params().augment.p == 0.5 and P.Params().data.max_seconds == 60.0


def test_family_sections_override_train_settings():
    p = P.Params.build({"train": {"epochs": 16, "lr": 0.002}, "pretrain": {"epochs": 8, "lr": 0.01},
                        "retrain": {"init": "scratch", "epochs": 3}, "baseline": None})
    assert (p.train_for("pretrain").epochs, p.train_for("pretrain").lr) == (8, 0.01)
    assert p.train_for("baseline") == p.train  # no overrides
    assert p.train_for("finetune") == dataclasses.replace(p.train, epochs=32)  # the shipped section's
    assert p.train_for("retrain").epochs == 3 and p.retrain.init == "scratch"
    with pytest.raises(P.ParamsError, match=r"retrain\.init must be one of \['pretrain', 'scratch'\]"):
        P.Params.build({"retrain": {"init": "finetune"}})


def test_the_training_seed_is_the_top_level_seed_unless_train_or_a_family_sets_its_own():
    p = P.Params.build({"seed": 7})
    assert p.train.seed is None and {p.training_seed(f) for f in ("pretrain", "baseline", "finetune")} == {7}
    p = P.Params.build({"seed": 7, "train": {"seed": 11}, "baseline": {"seed": 2020}})
    assert p.training_seed("baseline") == 2020 and p.training_seed("finetune") == 11
    assert p.training_seed("pretrain") == 11 and p.seed == 7  # the data and the folds keep the top-level seed


def test_baseline_folds_pick_members_of_the_cv_folds_and_leave_the_train_settings_alone():
    p = P.Params.build({"baseline": {"folds": [2, 0], "epochs": 4}})
    assert p.baseline.folds == (2, 0) and p.train_for("baseline").epochs == 4
    assert P.Params().baseline.folds == () and P.Params().ensemble.members == ("finetune", "retrain")
    with pytest.raises(P.ParamsError, match=r"baseline\.folds has fold 3, which cv\.folds \[0, 1, 2\] does not"):
        P.Params.build({"baseline": {"folds": [0, 3]}})
    with pytest.raises(P.ParamsError, match=r"baseline\.folds must be a list of distinct fold numbers"):
        P.Params.build({"baseline": {"folds": [1, 1]}})
    with pytest.raises(P.ParamsError, match=r"ensemble\.members"):  # a reference, not an ensemble member
        P.Params.build({"ensemble": {"members": ["baseline", "finetune"]}})


def test_presets_give_valid_params():
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name in P.preset_names():
        p = P.Params.build(P.merge(base, P.load_preset(name)))
        assert list(p.cv.folds) == list(range(p.cv.n_folds))


def test_the_pseudo_cap_bounds_the_cpu_default_and_the_fat2019_preset_lifts_it():
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert P.Params.build(base).pseudo.max_clips == 300
    assert P.Params.build(P.merge(base, P.load_preset("fat2019"))).pseudo.max_clips == 0


def test_a_partial_synth_split_keeps_the_other_defaults():
    p = P.Params.build({"synth": {"noisy": {"n_clips": 10}}})
    assert p.synth.noisy.n_clips == 10 and p.synth.noisy.snr_db == (0.0, 15.0)

"""Unit tests for fat/data/tables.py: vocabulary, label CSVs, multi-hot targets, layout validation and
`prepare` (bringing a FAT2019-layout directory or the embedded generator into data/raw)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from fat.data import synth
from fat.data import tables as data

from fat.data.prepare import validate_layout
from fat.data.prepare import prepare as _prepare


def prepare(*args, **kwargs) -> dict:
    """fat.prepare.prepare's stats (its quarantine table is tested in test_prepare.py)."""
    return _prepare(*args, **kwargs)[0]

CLASSES = ["Meow", "Bark", "Rain"]  # deliberately not sorted: the vocabulary is the column order
SR = 16000


# ----------------------------------------------------------------------------- helpers
def _wav(path: Path, seed: int, sr: int = SR, dur: float = 0.1):
    rng = np.random.default_rng(seed)
    sf.write(str(path), (0.1 * rng.standard_normal(int(sr * dur))).astype(np.float32), sr, subtype="PCM_16")


def make_layout(root: Path, *, test_labels: bool = True) -> Path:
    """A tiny valid FAT2019-layout directory."""
    root.mkdir(parents=True, exist_ok=True)
    rows = {
        "curated": [("c1.wav", "Meow"), ("c2.wav", "Bark,Rain"), ("c3.wav", "Rain")],
        "noisy": [("n1.wav", "Bark"), ("n2.wav", "Meow,Bark")],
        "test": [("t1.wav", "Rain"), ("t2.wav", "Meow")],
    }
    seed = 0
    for split, (csv, folder) in data.SPLITS.items():
        (root / folder).mkdir(exist_ok=True)
        for fname, _ in rows[split]:
            seed += 1
            _wav(root / folder / fname, seed)
        if split != "test" or test_labels:
            pd.DataFrame(rows[split], columns=["fname", "labels"]).to_csv(root / csv, index=False)
    sub = pd.DataFrame(0.0, index=range(len(rows["test"])), columns=CLASSES)
    sub.insert(0, "fname", [f for f, _ in rows["test"]])
    sub.to_csv(root / data.SAMPLE_SUBMISSION, index=False)
    return root


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


# ----------------------------------------------------------------------------- vocabulary
def test_vocabulary_is_sample_submission_columns_in_order(tmp_path):
    make_layout(tmp_path / "src")
    assert data.vocabulary(tmp_path / "src") == CLASSES


def test_vocabulary_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="sample_submission.csv"):
        data.vocabulary(tmp_path)


@pytest.mark.parametrize(
    "header",
    [
        "fname\n",  # no class columns
        "fname,Only\n",  # a single class is not a tagging vocabulary
        "name,A,B\n",  # first column must be fname
        "A,B,fname\n",
    ],
)
def test_vocabulary_malformed_names_file(tmp_path, header):
    path = _write(tmp_path / "sample_submission.csv", header)
    with pytest.raises(ValueError) as e:
        data.vocabulary(tmp_path)
    assert str(path) in str(e.value)


def test_vocabulary_empty_file_names_file(tmp_path):
    path = _write(tmp_path / "sample_submission.csv", "")
    with pytest.raises(ValueError) as e:
        data.vocabulary(tmp_path)
    assert str(path) in str(e.value)


# ----------------------------------------------------------------------------- labels
def test_split_labels_strips_spaces_and_empties():
    assert data.split_labels("Bark") == ["Bark"]
    assert data.split_labels(" Bark , Meow") == ["Bark", "Meow"]
    assert data.split_labels("Bark,,Meow,") == ["Bark", "Meow"]
    assert data.split_labels("") == []
    assert data.split_labels("  ") == []


def test_read_labels_ok_with_stray_spaces(tmp_path):
    path = _write(tmp_path / "l.csv", 'fname,labels\na.wav,"Bark, Meow"\nb.wav,Rain\n')
    df = data.read_labels(path, CLASSES)
    assert list(df.columns) == ["fname", "labels"]
    assert df["fname"].tolist() == ["a.wav", "b.wav"]
    assert data.split_labels(df["labels"][0]) == ["Bark", "Meow"]


def test_read_labels_keeps_fname_strings(tmp_path):
    # numeric-looking fnames stay strings (leading zeros kept); an empty cell is "" not NaN
    path = _write(tmp_path / "l.csv", "fname,labels\n00123,Bark\nNA,\n")
    df = data.read_labels(path, CLASSES)
    assert df["fname"].tolist() == ["00123", "NA"]
    assert df["labels"].tolist() == ["Bark", ""]


def test_read_labels_rejects_unknown_label_naming_file(tmp_path):
    path = _write(tmp_path / "train_curated.csv", 'fname,labels\na.wav,"Bark,Purr"\nb.wav,Rain\n')
    with pytest.raises(ValueError) as e:
        data.read_labels(path, CLASSES)
    assert str(path) in str(e.value)
    assert "Purr" in str(e.value)


@pytest.mark.parametrize("text", ["fname,label\na.wav,Bark\n", "labels,fname\nBark,a.wav\n", "fname\na.wav\n"])
def test_read_labels_rejects_wrong_columns(tmp_path, text):
    path = _write(tmp_path / "train_noisy.csv", text)
    with pytest.raises(ValueError) as e:
        data.read_labels(path, CLASSES)
    assert str(path) in str(e.value)


def test_multi_hot():
    y = data.multi_hot(pd.Series(["Bark", "Meow, Rain", "", "Rain,Bark,Meow"]), CLASSES)
    assert y.dtype == np.float32
    expected = np.array([[0, 1, 0], [1, 0, 1], [0, 0, 0], [1, 1, 1]], dtype=np.float32)
    np.testing.assert_array_equal(y, expected)


def test_multi_hot_empty():
    y = data.multi_hot(pd.Series([], dtype=str), CLASSES)
    assert y.shape == (0, 3)


# ----------------------------------------------------------------------------- split_table
def test_split_table_reads_label_csvs(tmp_path):
    src = make_layout(tmp_path / "src")
    cur = data.split_table(src, "curated")
    assert cur["fname"].tolist() == ["c1.wav", "c2.wav", "c3.wav"]
    assert cur["labels"].tolist() == ["Meow", "Bark,Rain", "Rain"]
    test = data.split_table(src, "test")
    assert test["labels"].tolist() == ["Rain", "Meow"]
    assert data.has_test_labels(src)
    assert data.audio_dir(src, "noisy") == src / "train_noisy"


def test_split_table_test_falls_back_to_sample_submission(tmp_path):
    src = make_layout(tmp_path / "src", test_labels=False)
    assert not data.has_test_labels(src)
    df = data.split_table(src, "test")
    assert df["fname"].tolist() == ["t1.wav", "t2.wav"]
    assert df["labels"].tolist() == ["", ""]
    assert data.multi_hot(df["labels"], CLASSES).sum() == 0


def test_split_table_missing_train_csv(tmp_path):
    src = make_layout(tmp_path / "src")
    (src / "train_noisy.csv").unlink()
    with pytest.raises(FileNotFoundError, match="train_noisy.csv"):
        data.split_table(src, "noisy")


# ----------------------------------------------------------------------------- validate_layout
def test_validate_layout_valid(tmp_path):
    assert validate_layout(make_layout(tmp_path / "src")) == []
    assert validate_layout(make_layout(tmp_path / "src2", test_labels=False)) == []


def test_validate_layout_not_a_directory(tmp_path):
    problems = validate_layout(tmp_path / "nope")
    assert len(problems) == 1 and str(tmp_path / "nope") in problems[0]


def test_validate_layout_reports_all_problems_in_one_pass(tmp_path):
    src = make_layout(tmp_path / "src")
    # curated: a row without a file and a duplicated fname
    _write(src / "train_curated.csv", "fname,labels\nc1.wav,Meow\nc1.wav,Bark\nghost.wav,Rain\n")
    # noisy: a label outside the vocabulary
    _write(src / "train_noisy.csv", "fname,labels\nn1.wav,Bark\nn2.wav,Purr\n")
    # test: audio folder missing
    for p in (src / "test").iterdir():
        p.unlink()
    (src / "test").rmdir()

    problems = validate_layout(src)
    text = "\n".join(problems)

    def find(*needles):
        hits = [p for p in problems if all(n in p for n in needles)]
        assert hits, f"no problem mentioning {needles} in:\n{text}"

    find(str(src / "train_curated.csv"), "ghost.wav")  # missing file for a CSV row
    find(str(src / "train_curated.csv"), "duplicate", "c1.wav")  # duplicate fnames
    find(str(src / "train_noisy.csv"), "Purr")  # unknown label
    find(str(src / "test"), "missing")  # missing folder
    assert len(problems) >= 4


def test_validate_layout_missing_csv_and_unlabelled_rows(tmp_path):
    src = make_layout(tmp_path / "src")
    (src / "train_noisy.csv").unlink()
    _write(src / "train_curated.csv", "fname,labels\nc1.wav,Meow\nc2.wav,\n")
    problems = validate_layout(src)
    assert any(str(src / "train_noisy.csv") in p and "missing" in p for p in problems), problems
    assert any(str(src / "train_curated.csv") in p and "c2.wav" in p for p in problems), problems


def test_validate_layout_missing_sample_submission(tmp_path):
    src = make_layout(tmp_path / "src")
    (src / "sample_submission.csv").unlink()
    problems = validate_layout(src)
    assert problems and any("sample_submission.csv" in p for p in problems)


def test_validate_layout_unknown_label_and_missing_file_in_same_csv(tmp_path):
    src = make_layout(tmp_path / "src")
    _write(src / "train_curated.csv", "fname,labels\nc1.wav,Purr\nghost.wav,Rain\n")
    problems = validate_layout(src)
    assert any("Purr" in p for p in problems), problems
    assert any("ghost.wav" in p for p in problems), problems


def test_validate_layout_checks_sample_submission_files_without_test_labels(tmp_path):
    src = make_layout(tmp_path / "src", test_labels=False)
    (src / "test" / "t2.wav").unlink()
    problems = validate_layout(src)
    assert any("sample_submission.csv" in p and "t2.wav" in p for p in problems), problems


# ----------------------------------------------------------------------------- prepare
def test_prepare_imports_directory(tmp_path):
    src = make_layout(tmp_path / "src")
    out = tmp_path / "data" / "raw"
    stats = prepare(str(src), out, synth_cfg={}, seed=0, n_jobs=1)

    assert (out / "sample_submission.csv").read_bytes() == (src / "sample_submission.csv").read_bytes()
    for name in ("train_curated.csv", "train_noisy.csv", "test_labels.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(out / name), pd.read_csv(src / name), check_names=False)
    n_files = 0
    for split, (_, folder) in data.SPLITS.items():
        src_names = sorted(p.name for p in (src / folder).iterdir())
        assert sorted(p.name for p in (out / folder).iterdir()) == src_names
        for name in src_names:
            a, b = src / folder / name, out / folder / name
            assert os.path.samefile(a, b) or a.read_bytes() == b.read_bytes()
            n_files += 1
    assert sum(stats["files"].values()) == n_files
    assert set(stats["files"]) <= {"hardlink", "copy"}
    assert stats["classes"] == 3
    assert stats["curated_clips"] == 3 and stats["noisy_clips"] == 2 and stats["test_clips"] == 2
    assert stats["curated_labels_per_clip"] == pytest.approx(4 / 3, abs=1e-3)
    assert validate_layout(out) == []
    assert data.vocabulary(out) == CLASSES
    assert _leftovers(out.parent, "raw") == []


def test_prepare_imports_directory_without_test_labels(tmp_path):
    src = make_layout(tmp_path / "src", test_labels=False)
    out = tmp_path / "raw"
    stats = prepare(str(src), out, synth_cfg={}, seed=0, n_jobs=1)
    assert not (out / "test_labels.csv").exists()
    assert sorted(p.name for p in (out / "test").iterdir()) == ["t1.wav", "t2.wav"]
    assert stats["test_clips"] == 2
    assert "test_labels_per_clip" not in stats


def test_prepare_invalid_directory_raises_and_leaves_nothing(tmp_path):
    src = make_layout(tmp_path / "src")
    _write(src / "train_curated.csv", "fname,labels\nghost.wav,Meow\n")
    _write(src / "train_noisy.csv", "fname,labels\nn1.wav,Purr\n")
    out = tmp_path / "data" / "raw"
    with pytest.raises(ValueError) as e:
        prepare(str(src), out, synth_cfg={}, seed=0, n_jobs=1)
    msg = str(e.value)
    assert "ghost.wav" in msg and "Purr" in msg  # every problem listed
    assert str(src / "train_curated.csv") in msg and str(src / "train_noisy.csv") in msg
    assert not out.exists()
    assert _leftovers(out.parent, "raw") == []


def test_prepare_failure_keeps_previous_output(tmp_path):
    out = tmp_path / "raw"
    prepare(str(make_layout(tmp_path / "good")), out, synth_cfg={}, seed=0, n_jobs=1)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    with pytest.raises(ValueError):
        prepare(str(tmp_path / "does-not-exist"), out, synth_cfg={}, seed=0, n_jobs=1)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert _leftovers(tmp_path, "raw") == []


def test_prepare_synthetic(tmp_path):
    cfg = {
        "sample_rate": 22050,
        "n_classes": 4,
        "curated": {"n_clips": 6, "duration": [0.3, 0.6], "label_counts_p": [0.7, 0.3]},
        "noisy": {"n_clips": 6, "duration": [0.3, 0.6], "label_counts_p": [1.0], "snr_db": [5, 10],
                  "label_noise": 0.5},
        "test": {"n_clips": 4, "duration": [0.3, 0.6], "label_counts_p": [1.0]},
    }
    out = tmp_path / "raw"
    stats = prepare("synthetic", out, synth_cfg=cfg, seed=3, n_jobs=1)
    assert stats["source"] == "synthetic"
    assert stats["classes"] == 4
    assert (stats["curated_clips"], stats["noisy_clips"], stats["test_clips"]) == (6, 6, 4)
    assert data.vocabulary(out) == synth.class_names(4)
    assert validate_layout(out) == []
    assert data.has_test_labels(out)
    for split in data.SPLITS:
        df = data.split_table(out, split)
        files = sorted(p.name for p in data.audio_dir(out, split).iterdir())
        assert files == sorted(df["fname"])
        assert sf.info(str(data.audio_dir(out, split) / files[0])).samplerate == 22050
    assert _leftovers(tmp_path, "raw") == []

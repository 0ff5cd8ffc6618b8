"""Real-data intake (fat.data.sources, fat.data.validate, fat.data.corrections, fat.data.prepare): both layouts, every
bad-input case of the "Real data" issue caught and named in one pass, the on_bad_audio policy with
its quarantine report, label corrections, and no second copy of the audio."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from fat.data import corrections, sources, validate
from fat.data import tables as data
from fat.data.prepare import import_directory, prepare, validate_layout

CLASSES = ["Meow", "Bark", "Rain"]
SR = 44100


def _tone(seconds=0.2, sr=SR, channels=1, amp=0.3):
    t = np.arange(int(sr * seconds)) / sr
    y = (amp * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return np.stack([y] * channels, axis=1) if channels > 1 else y


def _wav(path: Path, y=None, sr=SR, subtype="PCM_16"):
    sf.write(str(path), _tone() if y is None else y, sr, subtype=subtype)


def kaggle(root: Path, *, curated=None, noisy=None, test=None) -> Path:
    """A valid Kaggle-layout directory; `curated`/`noisy`/`test` map fname -> labels."""
    tables = {
        "curated": curated or {"c1.wav": "Meow", "c2.wav": "Bark,Rain", "c3.wav": "Rain"},
        "noisy": noisy or {"n1.wav": "Bark", "n2.wav": "Meow,Bark"},
        "test": test or {"t1.wav": "Rain", "t2.wav": "Meow"},
    }
    for split, (csv, folder) in data.SPLITS.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for fname in tables[split]:
            _wav(root / folder / fname)
        pd.DataFrame(list(tables[split].items()), columns=["fname", "labels"]).to_csv(root / csv, index=False)
    sources.sample_submission(CLASSES, list(tables["test"])).to_csv(root / data.SAMPLE_SUBMISSION, index=False)
    return root


def zenodo(root: Path) -> Path:
    """A tiny FSDKaggle2019 (Zenodo) layout."""
    meta = root / sources.ZENODO_META
    meta.mkdir(parents=True)
    (meta / "vocabulary.csv").write_text("".join(f"{i},{c}\n" for i, c in enumerate(CLASSES)))
    rows = {"curated": [("c1.wav", "Meow"), ("c2.wav", "Bark,Rain")], "noisy": [("n1.wav", "Bark")],
            "test": [("t1.wav", "Rain"), ("t2.wav", "Meow,Bark")]}
    extra = {"curated": {"freesound_id": "1", "license": "CC-BY"}, "noisy": {"freesound_id": "2", "license": "CC0"},
             "test": {"usage": "Public", "freesound_id": "3", "license": "CC-BY"}}
    for split, (csv, folder) in sources.ZENODO_TABLES.items():
        (root / folder).mkdir()
        for fname, _ in rows[split]:
            _wav(root / folder / fname)
        pd.DataFrame(rows[split], columns=["fname", "labels"]).assign(**extra[split]).to_csv(meta / csv, index=False)
    return root


def problems_for(problems, *needles):
    hits = [p for p in problems if all(n in p for n in needles)]
    assert hits, f"no problem mentioning {needles} in:\n" + "\n".join(problems)
    return hits


# ----------------------------------------------------------------------------- bad audio, one case each
def _corrupt(p):
    p.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage that is not a format chunk")


def _truncated(p):
    _wav(p, _tone(1.0))
    p.write_bytes(p.read_bytes()[:5000])


def _zero_length(p):
    p.write_bytes(b"")


def _no_samples(p):
    _wav(p, np.zeros(0, dtype=np.float32))


def _silent(p):
    _wav(p, np.zeros(SR // 2, dtype=np.float32))


def _nan(p):
    y = _tone()
    y[100] = np.nan
    _wav(p, y, subtype="FLOAT")


def _inf(p):
    y = _tone()
    y[7] = np.inf
    _wav(p, y, subtype="DOUBLE")


def _too_long(p):
    _wav(p, _tone(61.0, sr=8000), sr=8000)


BAD_AUDIO = {  # case -> (writer, words the problem must contain)
    "corrupt": (_corrupt, "unreadable"),
    "truncated": (_truncated, "truncated"),
    "zero_length": (_zero_length, "empty file"),
    "no_samples": (_no_samples, "no samples"),
    "silent": (_silent, "silent"),
    "nan": (_nan, "NaN"),
    "inf": (_inf, "infinite"),
    "too_long": (_too_long, "too long"),
}


@pytest.mark.parametrize("case", sorted(BAD_AUDIO))
def test_each_bad_audio_case_is_named(tmp_path, case):
    src = kaggle(tmp_path / "src")
    write, words = BAD_AUDIO[case]
    write(src / "train_curated" / "c2.wav")
    problems = validate_layout(src)
    assert len(problems) == 1, problems
    problems_for(problems, str(src / "train_curated" / "c2.wav"), words)


@pytest.mark.parametrize("subtype,sr,channels", [
    ("PCM_U8", SR, 1), ("PCM_16", SR, 2), ("PCM_24", SR, 1), ("PCM_32", SR, 1), ("FLOAT", SR, 1),
    ("DOUBLE", SR, 1), ("PCM_16", 16000, 1), ("PCM_16", 48000, 2), ("PCM_16", 22050, 3)])
def test_unusual_formats_are_accepted_and_counted(tmp_path, subtype, sr, channels):
    src = kaggle(tmp_path / "src")
    _wav(src / "train_noisy" / "n1.wav", _tone(0.3, sr=sr, channels=channels), sr=sr, subtype=subtype)
    assert validate_layout(src) == []
    stats, bad = prepare(str(src), tmp_path / "raw", synth_cfg={}, seed=0, n_jobs=1)
    assert bad.empty
    ch = {1: "mono", 2: "stereo"}.get(channels, f"{channels}ch")
    assert stats["formats"][f"{subtype} {ch} {sr} Hz"] == 1
    assert stats["formats"][f"PCM_16 mono {SR} Hz"] == 6
    from fat.data import audio
    y = audio.load(tmp_path / "raw" / "train_noisy" / "n1.wav", 22050)  # usable: mono, resampled
    assert y.ndim == 1 and abs(len(y) - 0.3 * 22050) <= 2 and 0.1 < np.abs(y).max() < 0.5


def test_all_bad_audio_reported_in_one_pass_and_error_policy_stops(tmp_path):
    cur = {f"{c}.wav": "Meow" for c in BAD_AUDIO} | {"ok.wav": "Bark"}
    src = kaggle(tmp_path / "src", curated=cur)
    for case, (write, _) in BAD_AUDIO.items():
        write(src / "train_curated" / f"{case}.wav")
    problems = validate_layout(src)
    assert len(problems) == len(BAD_AUDIO)
    for case, (_, words) in BAD_AUDIO.items():
        problems_for(problems, f"{case}.wav", words)
    out = tmp_path / "raw"
    with pytest.raises(ValueError) as e:
        prepare(str(src), out, synth_cfg={}, seed=0, n_jobs=2, cfg={"on_bad_audio": "error"})
    msg = str(e.value)
    assert all(f"{case}.wav" in msg for case in BAD_AUDIO) and "on_bad_audio: skip" in msg
    assert not out.exists()


def test_skip_policy_quarantines_bad_audio_with_reasons(tmp_path):
    cur = {f"{c}.wav": "Meow" for c in BAD_AUDIO} | {"ok.wav": "Bark", "ok2.wav": "Rain"}
    src = kaggle(tmp_path / "src", curated=cur)
    for case, (write, _) in BAD_AUDIO.items():
        write(src / "train_curated" / f"{case}.wav")
    _wav(src / "train_noisy" / "stray.wav")  # a wav with no CSV row
    (src / "train_noisy" / "n2.wav").unlink()  # a CSV row whose file is missing
    out = tmp_path / "raw"
    stats, bad = prepare(str(src), out, synth_cfg={}, seed=0, n_jobs=1, cfg={"on_bad_audio": "skip"})
    assert list(bad.columns) == validate.QUARANTINE_COLUMNS
    assert sorted(bad.loc[bad["split"] == "curated", "fname"]) == sorted(f"{c}.wav" for c in BAD_AUDIO)
    assert set(bad.loc[bad["split"] == "noisy", "fname"]) == {"stray.wav", "n2.wav"}
    reasons = dict(zip(bad["fname"], bad["problem"]))
    assert "no row in train_noisy.csv" in reasons["stray.wav"] and "missing" in reasons["n2.wav"]
    assert stats["quarantined"] == {"curated": len(BAD_AUDIO), "noisy": 2, "test": 0}
    assert stats["curated_clips"] == 2 and stats["noisy_clips"] == 1
    assert sorted(p.name for p in (out / "train_curated").iterdir()) == ["ok.wav", "ok2.wav"]
    assert sorted(p.name for p in (out / "train_noisy").iterdir()) == ["n1.wav"]
    assert list(pd.read_csv(out / "train_curated.csv")["fname"]) == ["ok.wav", "ok2.wav"]
    assert validate_layout(out) == []  # what was written is clean


def test_skip_policy_cannot_skip_test_clips(tmp_path):
    src = kaggle(tmp_path / "src")
    _silent(src / "test" / "t2.wav")
    with pytest.raises(ValueError, match=r"(?s)t2\.wav.*silent.*submission needs a row"):
        prepare(str(src), tmp_path / "raw", synth_cfg={}, seed=0, n_jobs=1, cfg={"on_bad_audio": "skip"})


def test_unknown_policy_is_refused(tmp_path):
    with pytest.raises(ValueError, match="on_bad_audio.*'ignore'"):
        prepare(str(kaggle(tmp_path / "src")), tmp_path / "raw", synth_cfg={}, seed=0, cfg={"on_bad_audio": "ignore"})


# ----------------------------------------------------------------------------- bad tables
def test_table_problems_all_reported_and_never_skipped(tmp_path):
    src = kaggle(tmp_path / "src")
    (src / "train_curated.csv").write_text("fname,labels\nc1.wav,Meow\nc1.wav,Bark\nc2.wav,Purr\nc3.wav,Rain\n")
    (src / "train_noisy.csv").write_text("file,label\nn1.wav,Bark\n")
    (src / "test_labels.csv").write_text("")
    problems = validate_layout(src)
    problems_for(problems, str(src / "train_curated.csv"), "duplicate", "c1.wav")
    problems_for(problems, str(src / "train_curated.csv"), "not in the vocabulary", "Purr")
    problems_for(problems, str(src / "train_noisy.csv"), "missing column", "labels")
    problems_for(problems, str(src / "test_labels.csv"), "empty file")
    with pytest.raises(ValueError, match="Purr"):
        prepare(str(src), tmp_path / "raw", synth_cfg={}, seed=0, n_jobs=1, cfg={"on_bad_audio": "skip"})


@pytest.mark.parametrize("text,words", [
    ("", "empty file"), ("fname,labels\n", "no rows"), ("fname\nc1.wav\n", "missing column"),
    ("name,tags\nc1.wav,Meow\n", "missing column"), ("fname,labels\nc1.wav,\n", "without labels"),
    ('fname,labels\n"c1.wav,Meow\n', "unreadable")])
def test_bad_csv_variants(tmp_path, text, words):
    src = kaggle(tmp_path / "src")
    (src / "train_curated.csv").write_text(text)
    problems_for(validate_layout(src), str(src / "train_curated.csv"), words)


def test_stray_spaces_are_normalised_and_counted(tmp_path):
    src = kaggle(tmp_path / "src")
    (src / "train_curated.csv").write_text('fname,labels\n c1.wav ,Meow \nc2.wav," Bark , Rain"\nc3.wav,Rain\n')
    assert validate_layout(src) == []
    stats, _ = prepare(str(src), tmp_path / "raw", synth_cfg={}, seed=0, n_jobs=1)
    assert stats["labels_normalised"] == 2
    df = pd.read_csv(tmp_path / "raw" / "train_curated.csv")
    assert list(df["fname"]) == ["c1.wav", "c2.wav", "c3.wav"]
    assert list(df["labels"]) == ["Meow", "Bark,Rain", "Rain"]


def test_test_labels_must_match_sample_submission(tmp_path):
    src = kaggle(tmp_path / "src")
    (src / "test_labels.csv").write_text("fname,labels\nt1.wav,Rain\n")
    problems_for(validate_layout(src), "test_labels.csv", "differ", "sample_submission.csv")


def test_neither_layout_is_named(tmp_path):
    (tmp_path / "src").mkdir()
    (problem,) = validate_layout(tmp_path / "src")
    assert "sample_submission.csv" in problem and sources.ZENODO_META in problem


# ----------------------------------------------------------------------------- Zenodo layout
def test_zenodo_layout_maps_onto_data_raw(tmp_path):
    src = zenodo(tmp_path / "zen")
    assert validate_layout(src) == []
    out = tmp_path / "raw"
    stats, bad = prepare(str(src), out, synth_cfg={}, seed=0, n_jobs=1)
    assert bad.empty and stats["layout"] == "zenodo"
    assert data.vocabulary(out) == CLASSES  # from vocabulary.csv, in its order
    sub = pd.read_csv(out / data.SAMPLE_SUBMISSION)
    assert list(sub["fname"]) == ["t1.wav", "t2.wav"] and (sub[CLASSES] == 0).all().all()
    assert data.has_test_labels(out)
    assert list(pd.read_csv(out / "test_labels.csv").columns) == ["fname", "labels"]
    assert list(data.split_table(out, "test")["labels"]) == ["Rain", "Meow,Bark"]
    assert list(data.split_table(out, "curated")["fname"]) == ["c1.wav", "c2.wav"]
    assert (stats["curated_clips"], stats["noisy_clips"], stats["test_clips"]) == (2, 1, 2)
    assert os.path.samefile(src / "FSDKaggle2019.audio_train_noisy" / "n1.wav", out / "train_noisy" / "n1.wav")
    assert validate_layout(out) == []


def test_zenodo_problems_name_meta_files(tmp_path):
    src = zenodo(tmp_path / "zen")
    meta = src / sources.ZENODO_META
    (meta / "train_noisy_post_competition.csv").write_text("fname,labels\nn1.wav,Woof\n")
    (src / "FSDKaggle2019.audio_test" / "t1.wav").unlink()
    problems = validate_layout(src)
    problems_for(problems, str(meta / "train_noisy_post_competition.csv"), "Woof")
    problems_for(problems, "t1.wav", "missing", "test_post_competition_scoring_clips.csv")
    (meta / "vocabulary.csv").write_text("")
    problems_for(validate_layout(src), "vocabulary.csv", "empty")


# ----------------------------------------------------------------------------- corrections
def test_shipped_fat2019_corrections_are_the_known_bad_clips():
    df = corrections.read(corrections.resolve("fat2019_curated"))
    assert dict(zip(df["fname"], df["action"])) == {
        f"{h}.wav": "drop" for h in ("f76181c4", "77b925c2", "6a1f682a", "c7db12aa", "7752cc8a", "1d44b0bd")}


def test_corrections_relabel_and_drop(tmp_path):
    src = kaggle(tmp_path / "src", curated={"f76181c4.wav": "Meow", "1d44b0bd.wav": "Bark", "c3.wav": "Rain",
                                            "77b925c2.wav": "Rain"})
    fix = tmp_path / "fix.csv"
    fix.write_text("fname,action,labels,note\nc3.wav,relabel, Bark , typo\nf76181c4.wav,drop,,wrong\n"
                   "1d44b0bd.wav,drop,,silent\n77b925c2.wav,drop,,wrong\n")
    stats, _ = prepare(str(src), tmp_path / "raw", synth_cfg={}, seed=0, n_jobs=1, cfg={"corrections": str(fix)})
    assert stats["corrections"] == {"relabel": 1, "drop": 3}
    df = data.split_table(tmp_path / "raw", "curated")
    assert list(df["fname"]) == ["c3.wav"] and list(df["labels"]) == ["Bark"]
    assert sorted(p.name for p in (tmp_path / "raw" / "train_curated").iterdir()) == ["c3.wav"]


def test_corrections_problems_are_named(tmp_path):
    src = kaggle(tmp_path / "src")
    fix = tmp_path / "fix.csv"
    fix.write_text("fname,action,labels\nghost.wav,drop,\nc1.wav,relabel,Bark\n")
    with pytest.raises(ValueError, match=r"fix\.csv.*ghost\.wav"):
        prepare(str(src), tmp_path / "raw", synth_cfg={}, seed=0, cfg={"corrections": str(fix)})
    fix.write_text("fname,action,labels\nc1.wav,relabel,Purr\n")
    with pytest.raises(ValueError, match=r"fix\.csv.*Purr"):
        prepare(str(src), tmp_path / "raw", synth_cfg={}, seed=0, cfg={"corrections": str(fix)})
    fix.write_text("fname,action,labels\nc1.wav,rename,x\n")
    with pytest.raises(ValueError, match=r"fix\.csv.*rename"):
        corrections.read(fix)
    fix.write_text("fname,action,labels\nt1.wav,drop,\n")
    with pytest.raises(ValueError, match="cannot drop test clips"):
        prepare(str(src), tmp_path / "raw", synth_cfg={}, seed=0, cfg={"corrections": str(fix)})
    with pytest.raises(FileNotFoundError, match="fat2019_curated"):
        corrections.resolve("no-such-corrections")
    with pytest.raises(ValueError, match="synthetic"):
        prepare("synthetic", tmp_path / "raw", synth_cfg={}, seed=0, cfg={"corrections": "fat2019_curated"})


# ----------------------------------------------------------------------------- import without copies
def test_import_links_rather_than_copies(tmp_path):
    src = kaggle(tmp_path / "src")
    stats, _ = import_directory(src, tmp_path / "raw")
    assert stats["files"] == {"hardlink": 7}
    assert os.path.samefile(src / "train_curated" / "c1.wav", tmp_path / "raw" / "train_curated" / "c1.wav")


def test_parallel_scan_finds_the_same_problems(tmp_path):
    cur = {f"c{i:03d}.wav": "Meow" for i in range(80)}
    src = kaggle(tmp_path / "src", curated=cur)
    _silent(src / "train_curated" / "c017.wav")
    _nan(src / "train_curated" / "c063.wav")
    one = validate.validate(src, n_jobs=1)
    two = validate.validate(src, n_jobs=2)  # > 64 files: worker processes
    pd.testing.assert_frame_equal(one.bad, two.bad)
    assert sorted(two.bad["fname"]) == ["c017.wav", "c063.wav"]
    assert two.formats == {f"PCM_16 mono {SR} Hz": 83, f"FLOAT mono {SR} Hz": 1}

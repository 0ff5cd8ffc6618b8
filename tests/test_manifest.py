"""fat/manifest.py: the digests of data/raw that the downstream stages depend on in DVC. Each must
change exactly when the content it covers changes (a stale digest would leave a stage cached on
changed data; a digest that moves with mtimes would rerun stages on identical data)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import soundfile as sf

from fat.data import manifest
from fat.data import tables as data


@pytest.fixture
def raw(tmp_path):
    """A small FAT2019-layout directory: 3 wavs per split, labelled test set."""
    root = tmp_path / "raw"
    rng = np.random.default_rng(0)
    for split, (csv_name, folder) in data.SPLITS.items():
        (root / folder).mkdir(parents=True)
        rows = []
        for i in range(3):
            fname = f"{split}{i}.wav"
            sf.write(root / folder / fname, 0.1 * rng.standard_normal(800), 16000, subtype="PCM_16")
            rows.append(f"{fname},Bell")
        (root / csv_name).write_text("fname,labels\n" + "\n".join(rows) + "\n")
    (root / data.SAMPLE_SUBMISSION).write_text("fname,Bell,Siren\n" + "".join(f"test{i}.wav,0,0\n" for i in range(3)))
    return root


def test_write_covers_every_split_and_the_tables(raw, tmp_path):
    out = tmp_path / "manifest"
    contents = manifest.write(raw, out, n_jobs=2)
    assert sorted(p.name for p in out.iterdir()) == ["curated.json", "noisy.json", "tables.json", "test.json"]
    for name, obj in contents.items():
        assert json.loads((out / name).read_text()) == obj
    cur = contents["curated.json"]
    assert cur["audio_files"] == 3 and cur["train_curated.csv"] == manifest.file_md5(raw / "train_curated.csv")
    assert contents["tables.json"]["test_labels.csv"] == manifest.file_md5(raw / "test_labels.csv")


def test_digest_follows_content_not_timestamps(raw):
    before = manifest.build(raw)
    wav = raw / "train_noisy" / "noisy1.wav"
    os.utime(wav, (1, 1))  # touched, same bytes
    assert manifest.build(raw) == before
    y, sr = sf.read(wav)
    sf.write(wav, y * 0.5, sr, subtype="PCM_16")  # same name and size, other samples
    after = manifest.build(raw)
    assert after["noisy.json"]["audio_md5"] != before["noisy.json"]["audio_md5"]
    assert after["noisy.json"]["audio_files"] == 3
    for name in ("curated.json", "test.json", "tables.json"):  # the other consumers stay cached
        assert after[name] == before[name], name


def test_labels_and_vocabulary_changes_reach_their_consumers(raw):
    before = manifest.build(raw)
    (raw / "train_curated.csv").write_text("fname,labels\ncurated0.wav,Siren\ncurated1.wav,Bell\ncurated2.wav,Bell\n")
    after = manifest.build(raw)
    assert after["curated.json"] != before["curated.json"] and after["tables.json"] != before["tables.json"]
    assert after["noisy.json"] == before["noisy.json"]
    rows = "".join(f"test{i}.wav,0,0,0\n" for i in range(3))
    (raw / data.SAMPLE_SUBMISSION).write_text("fname,Bell,Siren,Wind\n" + rows)
    again = manifest.build(raw)
    assert all(again[n] != after[n] for n in ("curated.json", "noisy.json", "test.json", "tables.json"))


def test_renamed_or_added_audio_changes_the_digest(raw):
    before = manifest.build(raw)["test.json"]
    (raw / "test" / "test2.wav").rename(raw / "test" / "test9.wav")
    renamed = manifest.build(raw)["test.json"]
    assert renamed["audio_md5"] != before["audio_md5"]
    (raw / "test" / "extra.wav").write_bytes((raw / "test" / "test0.wav").read_bytes())
    assert manifest.build(raw)["test.json"]["audio_files"] == 4


def test_unlabelled_test_set_is_null_not_an_error(raw):
    (raw / "test_labels.csv").unlink()
    contents = manifest.build(raw)
    assert contents["test.json"]["test_labels.csv"] is None and contents["tables.json"]["test_labels.csv"] is None


def test_missing_parts_are_named(raw):
    (raw / data.SAMPLE_SUBMISSION).unlink()
    with pytest.raises(FileNotFoundError, match="sample_submission.csv"):
        manifest.build(raw)

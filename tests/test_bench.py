"""`fat bench`: the figures it reports are present and sane on tiny sizes (timings are not checked),
and the store it generates is a valid, deterministic feature store."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from fat import params
from fat.features.store import FeatureStore
from fat.tools import bench, cli

ROOT = Path(__file__).resolve().parents[1]


def test_bench_writes_sane_figures(tmp_path, capsys):
    out = tmp_path / "bench.json"
    work = tmp_path / "work"
    work.mkdir()
    tiny = tmp_path / "params.yaml"  # the tiny profile's model and training settings: quick steps
    tiny.write_text(yaml.safe_dump(params.merge(params.read(ROOT / "params.yaml"), params.load_preset("tiny"))))
    argv = ["bench", "--json", str(out), "--params", str(tiny), "--audio-seconds", "2",
            "--rounds", "1", "--train-steps", "10", "--train-frames", "4000", "--store-frames", "30000",
            "--memory-steps", "10", "--validate-files", "40", "--overhead-files", "50", "--workdir", str(work)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    assert "audio-seconds per second" in printed and "peak RSS" in printed

    lm = res["log_mel"]
    assert (lm["sr"], lm["n_fft"], lm["hop_length"], lm["n_mels"]) == (44100, 2048, 512, 128)
    assert lm["clips"] >= 1 and lm["audio_seconds"] >= 2
    for k in ("librosa_audio_s_per_s", "ours_audio_s_per_s", "ours_all_cores_audio_s_per_s", "speedup_single_thread"):
        assert np.isfinite(lm[k]) and lm[k] > 0, k
    ratio = lm["ours_audio_s_per_s"] / lm["librosa_audio_s_per_s"]
    assert lm["speedup_single_thread"] == pytest.approx(ratio, rel=0.02)
    assert 0 <= lm["max_abs_db_diff"] <= 1e-3
    assert lm["fft_backend"] in ("numpy", "mkl", "torch") and f"FFT: {lm['fft_backend']}" in printed

    tr = res["training"]
    assert tr["steps"] == 10 and tr["batch_size"] == 16 and tr["crop_frames"] == 32 and tr["device"] in ("cpu", "cuda")
    assert tr["samples_per_s"] > 0 and tr["step_ms"] > 0 and tr["n_mels"] == 32  # the tiny profile's
    assert 0 <= tr["data_loading_share"] < 1

    mem = res["memory"]
    assert mem["store_frames"] == 30000 and mem["n_mels"] == 128 and mem["dtype"] == "float16"
    assert mem["store_gb"] == pytest.approx(30000 * 128 * 2 / 1e9, abs=1e-3)
    assert 0.05 < mem["peak_rss_gb"] < 8

    val = res["validate"]
    assert val["files"] == 40 and val["curated_files"] + val["noisy_files"] + val["test_files"] == 40
    assert val["problems"] == 0 and val["seconds"] > 0 and val["files_per_s"] > 0
    assert 0.05 < val["peak_rss_gb"] < 8 and "validation" in printed

    ov = res["stage_overhead"]  # a real `dvc repro` of a stage importing the training code, in a throwaway repo
    assert ov["files"] == 50 and ov["rounds"] == 1
    assert ov["stage_imports_s"] > 0 and ov["stage_overhead_s"] > ov["stage_imports_s"]
    assert ov["noop_repro_s"] > 0 and ov["status_s"] > 0 and ov["dvc_per_stage_s"] > -1
    assert "stage overhead" in printed
    assert list(work.iterdir()) == []  # the generated stores, wavs and repository are deleted


def test_bench_rejects_too_few_steps(capsys):
    assert cli.main(["bench", "--train-steps", "5"]) == 2
    assert "--train-steps must be at least 10" in capsys.readouterr().err
    assert cli.main(["bench", "--overhead-files", "-1"]) == 2
    assert "--overhead-files must be 0 (skip) or positive" in capsys.readouterr().err


def test_write_store_is_a_deterministic_feature_store(tmp_path):
    meta = bench.write_store(tmp_path / "a", 70_000, n_mels=16, dtype="float32", seed=3)
    bench.write_store(tmp_path / "b", 70_000, n_mels=16, dtype="float32", seed=3)
    for name in ("mels.npy", "index.csv", "meta.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    st = FeatureStore.open(tmp_path / "a")
    assert st.mels.shape == (70_000, 16) and st.mels.dtype == np.float32
    assert st.lengths.sum() == 70_000 and meta["clips"] == len(st) and (st.lengths >= 1).all()
    np.testing.assert_array_equal(st.offsets[1:], np.cumsum(st.lengths)[:-1])
    assert 600 < st.lengths[:-1].mean() < 1200  # FAT2019 noisy-like clip lengths
    assert not np.array_equal(st.mels[:100], st.mels[65536:65636])  # not one block repeated verbatim


def test_write_store_refuses_when_the_disk_is_too_small(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 10**6, 10**6))
    with pytest.raises(ValueError, match="needs .* GB"):
        bench.write_store(tmp_path / "big", 10_000, n_mels=128)


def test_bench_predict_times_fat_predict_on_a_directory(tmp_path):
    import soundfile as sf

    from test_predictor import MEAN, SR, make_bundle, tone

    audio = tmp_path / "audio"
    audio.mkdir()
    for i, seconds in enumerate((0.5, 1.0, 2.0)):
        sf.write(audio / f"c{i}.wav", tone(seconds, 300 + 200 * i, SR, i), SR)
    res = bench.bench_predict(make_bundle(tmp_path / "bundle", MEAN), audio)
    assert res["files"] == 3 and res["unreadable"] == 0 and res["audio_seconds"] == 3.5
    assert res["fold_models"] == 4 and res["tta_views"] == 4 and res["kept"] == ["baseline", "finetune"]
    # both rounded (seconds to 0.01, the rate to 0.1): the rate lies between those the rounded seconds allow
    lo, hi = (res["audio_seconds"] / (res["seconds"] + d) for d in (0.005, -0.005))
    assert lo - 0.051 <= res["audio_s_per_s"] <= hi + 0.051, res

"""`fat export`: the exported module (log-mel front end, windows, folds, combination) against the
pipeline's own code on a hand-made bundle: the front end equals the feature store's values, the
module's probabilities equal the plain-window predictions of the members combined as the card says
(<= 1e-4), as TorchScript and, when its packages are installed, as ONNX run by ONNX Runtime."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from fat.data import audio
from fat.features import extract as features
from fat.inference import export
from fat.inference import predictor as infer
from fat.inference.tagger import LogMel, build
from fat.tools import cli
from test_predictor import CLASSES, MEAN, SR, P, make_bundle, tone

PARITY = 1e-4
ONNX_NEEDS = ("onnx", "onnxscript", "onnxruntime")


def missing(packages):
    return [p for p in packages if importlib.util.find_spec(p) is None]


def need_onnx():
    gone = missing(ONNX_NEEDS)
    if gone:
        pytest.skip(f"ONNX parity needs {', '.join(gone)} (pip install -e '.[export]')")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Waveforms at SR: a short one (tiled), one of exactly a few windows, a long ragged one; files too."""
    d = tmp_path_factory.mktemp("wav")
    waves = {"short.wav": tone(0.15, 700, SR, 0), "mid.wav": tone(1.2, 300, SR, 1), "long.wav": tone(3.7, 1500, SR, 2)}
    for name, y in waves.items():
        sf.write(d / name, y, SR, subtype="FLOAT")
    return d, {n: audio.load(d / n, SR) for n in waves}


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_front_end_equals_the_feature_stores_values(clips, dtype):
    kw = P.features.log_mel_kwargs(P.audio)
    assert kw["top_db"] == 80.0  # the default floor is part of what the front end must reproduce
    front = LogMel(kw["sr"], kw["n_fft"], kw["hop_length"], kw["n_mels"], kw["fmin"], kw["fmax"], dtype,
                   top_db=kw["top_db"])
    for name, y in clips[1].items():
        stored = features.clip_frames(clips[0] / name, kw, dtype)[0].astype(np.float32).T
        got = front(torch.from_numpy(y)).numpy()
        assert got.shape == stored.shape, name
        # float16 storage rounds to 1/32 dB steps here; a value on the edge of a step may round the other way
        if dtype == "float16":
            step = 2.0 ** (np.floor(np.log2(np.maximum(np.abs(stored), 1e-3))) - 10)
            assert (np.abs(got - stored) <= step + 1e-6).all(), name
            assert (got == stored).mean() > 0.999, name
        else:  # float32 values: equal up to the last bits of the dB conversion
            assert np.abs(got - stored).max() <= 1e-4, (name, np.abs(got - stored).max())


def plain_card_bundle(tmp_path, combiner):
    """A bundle whose card has TTA off: `fat predict` then runs the pipeline's plain-window path."""
    b = make_bundle(tmp_path / "bundle", combiner)
    card = json.loads((b / "card.json").read_text())
    card["tta"] = None
    (b / "card.json").write_text(json.dumps(card))
    return b


@pytest.mark.parametrize("combiner", [
    MEAN,
    {"method": "weighted", "guard": True, "single": None, "weights": [0.8, 0.2], "stack": None},
    {"method": "stack", "guard": True, "single": None, "weights": None,
     "stack": {"coef": [1.1, 0.5], "intercept": -0.3}},
], ids=["mean", "weighted", "stack"])
def test_module_equals_the_pipelines_plain_predictions(clips, tmp_path, combiner):
    b = plain_card_bundle(tmp_path, combiner)
    predictor = infer.Predictor.open(b)
    files = [(clips[0] / n, n) for n in clips[1]]
    _, want, _, _ = infer.tag(predictor, files)  # feature store -> predict_plain -> geomean of folds -> combiner
    module = build(predictor)
    with torch.no_grad():
        got = np.stack([module(torch.from_numpy(y)).numpy() for y in clips[1].values()])
    assert got.shape == (3, len(CLASSES))
    assert np.abs(got - want).max() <= PARITY, np.abs(got - want).max()


def test_export_writes_torchscript_and_onnx_that_agree(clips, tmp_path, capsys):
    b = plain_card_bundle(tmp_path, MEAN)
    formats = ["torchscript"] + ([] if missing(export.ONNX_PACKAGES) else ["onnx"])
    argv = ["export", "--model", str(b), "-o", str(tmp_path / "out")] + [a for f in formats for a in ("--format", f)]
    assert cli.main(argv) == 0
    out = tmp_path / "out"
    assert (out / "classes.txt").read_text().split() == CLASSES
    info = json.loads((out / "export.json").read_text())
    assert info["sample_rate"] == SR and info["kept"] == ["baseline", "finetune"]
    assert "tagger.pt" in capsys.readouterr().out
    eager = build(infer.Predictor.open(b))
    scripted = torch.jit.load(str(out / "tagger.pt"))
    for y in clips[1].values():
        with torch.no_grad():
            want = eager(torch.from_numpy(y)).numpy()
            got = scripted(torch.from_numpy(y)).numpy()
        assert np.abs(got - want).max() <= 1e-6
    assert info["check"]["torchscript_max_abs_diff"] <= 1e-6


def test_onnx_module_run_by_onnx_runtime_matches_the_pipeline(clips, tmp_path):
    need_onnx()
    b = plain_card_bundle(tmp_path, MEAN)
    export.export(b, tmp_path / "out", formats=("onnx",))
    predictor = infer.Predictor.open(b)
    _, want, _, _ = infer.tag(predictor, [(clips[0] / n, n) for n in clips[1]])
    got = np.stack([export.run_onnx(tmp_path / "out" / "tagger.onnx", y) for y in clips[1].values()])
    assert np.abs(got - want).max() <= PARITY, np.abs(got - want).max()
    info = json.loads((tmp_path / "out" / "export.json").read_text())
    assert info["check"]["onnx_max_abs_diff"] <= PARITY


def test_onnx_without_its_packages_is_a_clear_error(tmp_path, monkeypatch):
    b = plain_card_bundle(tmp_path, MEAN)
    monkeypatch.setattr(export, "missing_onnx_packages", lambda: ["onnxscript"])
    with pytest.raises(ValueError, match=r"needs the packages onnxscript \(pip install -e '\.\[export\]'\)"):
        export.export(b, tmp_path / "out", formats=("onnx",))


def test_the_tta_card_exports_its_plain_window_ensemble(clips, tmp_path):
    """A card with TTA (the pipeline's default) exports the same members without the random views."""
    b = make_bundle(tmp_path / "bundle", MEAN)
    tta_module = build(infer.Predictor.open(b))
    plain_module = build(infer.Predictor.open(plain_card_bundle(tmp_path / "p", MEAN)))
    y = torch.from_numpy(clips[1]["long.wav"])
    with torch.no_grad():
        assert torch.equal(tta_module(y), plain_module(y))

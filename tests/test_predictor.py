"""`fat predict` on a hand-made bundle: the pipeline's own path (feature store -> TTA per fold model ->
fold average -> combination) gives the same numbers; files in any readable format and rate; bad
files named, counted and skipped; a clip's prediction does not depend on its companions; CSV and
JSON outputs; the model card's combiner (weights, stacker, guard) round-trips."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from fat.evaluation import bundle, ensemble
from fat.evaluation.predict import predict_tta
from fat.features.extract import build_store
from fat.features.store import FeatureStore
from fat.inference import predictor as infer
from fat.params import Model, Params
from fat.tools import cli
from fat.training import models

SR = 8000
PARAMS = {
    "seed": 7, "cv": {"n_folds": 2, "folds": [0, 1]},
    "audio": {"sample_rate": SR},
    "features": {"n_fft": 256, "hop_length": 128, "n_mels": 16, "fmin": 20.0, "fmax": None, "dtype": "float16"},
    "tta": {"beta": 0.4, "overlap_step": 0.5, "shifts": [0.0, 0.5], "masked": 1},
    "augment": {"p": 0.5, "freq_masks": 2, "freq_frac": 0.15, "time_masks": 2, "time_frac": 0.2},
    "ensemble": {"use_tta": True, "fold_agg": "geomean"},
}
P = Params.build(PARAMS)  # as params.load reads PARAMS from a params.yaml
MODEL = Model(base_channels=4, n_blocks=2, channels=("mel", "delta"))
CLASSES = ["bark", "bell", "rain"]
FAMILIES = ["baseline", "finetune"]
CROP = 12


def tone(seconds, freq, sr, seed):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory):
    """Clips in several formats and rates (resampled to SR on load), one shorter than a crop."""
    d = tmp_path_factory.mktemp("audio")
    sf.write(d / "a.wav", tone(1.3, 440, SR, 0), SR)
    sf.write(d / "b.flac", tone(0.2, 900, 16000, 1), 16000)  # 0.2 s: shorter than a window, tiled
    stereo = np.stack([tone(2.1, 300, 22050, 2), tone(2.1, 1200, 22050, 3)], axis=1)
    (d / "sub").mkdir()
    sf.write(d / "sub" / "c.wav", stereo, 22050, subtype="PCM_16")
    sf.write(d / "d.ogg", tone(0.9, 2000, 11025, 4), 11025)
    return d


def make_bundle(root, combiner: dict, kept=FAMILIES):
    """A bundle as the ensemble stage writes it, with small random models (BatchNorm statistics set)."""
    result = {"members": {f: {"oof_lwlrap": 0.5} for f in FAMILIES}, "kept": list(kept), "combiner": combiner,
              "final": "x", "lwlrap": 0.5}
    card = bundle.ensemble_card(P, CLASSES, result)
    root.mkdir(parents=True, exist_ok=True)
    for i, fam in enumerate(FAMILIES):
        (root / fam).mkdir(exist_ok=True)
        for k in PARAMS["cv"]["folds"]:
            torch.manual_seed(10 * i + k)
            m = models.build(MODEL, len(CLASSES), 16)
            m.train()
            with torch.no_grad():
                for _ in range(3):
                    m(torch.randn(8, 16, CROP) * 10 - 40)
            models.save(root / fam / f"fold{k}.pt", m.eval(), MODEL, CLASSES, 16, extra={"crop_frames": CROP})
        (root / fam / bundle.CARD).write_text(json.dumps(bundle.family_card(fam, P, CLASSES)))
    (root / bundle.CARD).write_text(json.dumps(card))
    return root


MEAN = {"method": "mean", "guard": False, "single": None, "weights": None, "stack": None}


def reference(bundle_dir, files, fnames, tmp_path, kept=FAMILIES, combiner=MEAN):
    """The pipeline's path: a feature store on disk (features stage), predict_tta with the test seeds
    (predict stage), fold aggregation and the combination (ensemble stage)."""
    kw = P.features.log_mel_kwargs(P.audio)
    build_store(files, fnames, tmp_path / "store", kw, dtype="float16", n_jobs=1)
    store = FeatureStore.open(tmp_path / "store")
    per_family = []
    for fam in kept:
        folds = []
        for k in PARAMS["cv"]["folds"]:
            model, _ = models.load(bundle_dir / fam / f"fold{k}.pt")
            seed = PARAMS["seed"] * 100 + k + 1
            folds.append(predict_tta(model, store, np.arange(len(store)), CROP, P.tta,
                                     P.augment.masks(), device=torch.device("cpu"), seed=seed)[1])
        per_family.append(ensemble.aggregate_folds(folds, "geomean"))
    return ensemble.Combiner.from_state(combiner)(per_family)


def all_files(d):
    return [(d / "a.wav", "a.wav"), (d / "b.flac", "b.flac"), (d / "d.ogg", "d.ogg"), (d / "sub/c.wav", "sub/c.wav")]


def test_predict_equals_the_pipeline_path_for_files_of_any_format_and_rate(audio_dir, tmp_path):
    b = make_bundle(tmp_path / "bundle", MEAN)
    files = infer.find_audio([audio_dir])
    assert [n for _, n in files] == ["a.wav", "b.flac", "d.ogg", "sub/c.wav"]  # sorted, relative to the directory
    assert cli.main(["predict", str(audio_dir), "--model", str(b), "-o", str(tmp_path / "out.csv")]) == 0
    out = pd.read_csv(tmp_path / "out.csv")
    assert list(out.columns) == ["fname"] + CLASSES and out["fname"].tolist() == [n for _, n in files]
    want = reference(b, [f for f, _ in files], [n for _, n in files], tmp_path)
    np.testing.assert_allclose(out[CLASSES].to_numpy(), want, atol=2e-6)  # the CSV's 6 significant digits
    assert out[CLASSES].to_numpy().std() > 0


@pytest.mark.parametrize("state", [
    {"method": "weighted", "guard": True, "single": None, "weights": [0.7, 0.3], "stack": None},
    {"method": "stack", "guard": True, "single": None, "weights": None,
     "stack": {"coef": [1.3, -0.4], "intercept": 0.2}},
    {"method": "weighted", "guard": True, "single": 1, "weights": [0.5, 0.5], "stack": None},
], ids=["weighted", "stack", "guard-single"])
def test_the_cards_combination_is_applied(audio_dir, tmp_path, state):
    b = make_bundle(tmp_path / "bundle", state)
    files = all_files(audio_dir)[:2]
    predictor = infer.Predictor.open(b)
    fnames, probs, failed, seconds = infer.tag(predictor, files)
    assert not failed and fnames == ["a.wav", "b.flac"] and seconds == pytest.approx(1.5, abs=1e-3)
    want = reference(b, [f for f, _ in files], fnames, tmp_path, combiner=state)
    np.testing.assert_allclose(probs, want, atol=1e-9)
    plain_mean = reference(b, [f for f, _ in files], fnames, tmp_path / "m", combiner=MEAN)
    assert np.abs(probs - plain_mean).max() > 1e-4  # the combination really differs from a plain mean


def test_a_clips_prediction_does_not_depend_on_the_other_clips(audio_dir, tmp_path):
    """TTA's masked views draw each clip's masks from its own seed: alone or in a batch, the same."""
    predictor = infer.Predictor.open(make_bundle(tmp_path / "bundle", MEAN))
    files = all_files(audio_dir)
    _, together, _, _ = infer.tag(predictor, files)
    _, alone, _, _ = infer.tag(predictor, files[2:3])
    _, chunked, _, _ = infer.tag(predictor, files, chunk=1)
    np.testing.assert_allclose(alone[0], together[2], atol=1e-9)
    np.testing.assert_allclose(chunked, together, atol=1e-9)


def test_unreadable_files_are_named_counted_and_the_rest_still_tagged(audio_dir, tmp_path, capsys):
    b = make_bundle(tmp_path / "bundle", MEAN)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "garbage.wav").write_bytes(b"RIFF....WAVEfmt nonsense")
    sf.write(bad / "silent_nan.wav", np.full(800, np.nan, np.float32), SR, subtype="FLOAT")
    code = cli.main(["predict", str(audio_dir / "a.wav"), str(bad), "--model", str(b), "-o", str(tmp_path / "o.json")])
    assert code == 1  # some files failed
    err = capsys.readouterr().err
    assert "2 of 3 files could not be read" in err
    assert f"{bad / 'garbage.wav'}: unreadable audio" in err and f"{bad / 'silent_nan.wav'}: contains NaN" in err
    doc = json.loads((tmp_path / "o.json").read_text())
    assert [f["fname"] for f in doc["files"]] == ["a.wav"]
    assert sorted(f["file"] for f in doc["failed"]) == [str(bad / "garbage.wav"), str(bad / "silent_nan.wav")]
    top = doc["files"][0]
    assert len(top["labels"]) == 3 and list(top["scores"]) == top["labels"]
    assert list(top["scores"].values()) == sorted(top["scores"].values(), reverse=True)
    assert cli.main(["predict", str(bad), "--model", str(b)]) == 2  # nothing could be tagged


def test_json_top_k_and_stdout(audio_dir, tmp_path, capsys):
    b = make_bundle(tmp_path / "bundle", MEAN)
    assert cli.main(["predict", str(audio_dir / "d.ogg"), "--model", str(b), "-k", "2"]) == 0
    line = capsys.readouterr().out.strip()
    name, rest = line.split("\t")
    assert name == "d.ogg" and len(rest.split("  ")) == 2 and rest.split()[0] in CLASSES


def test_one_family_of_the_bundle_and_a_pipeline_family_directory(audio_dir, tmp_path, monkeypatch):
    b = make_bundle(tmp_path / "bundle", MEAN)
    files = all_files(audio_dir)[:1]
    _, from_bundle, _, _ = infer.tag(infer.Predictor.open(b / "finetune"), files)
    want = reference(b, [f for f, _ in files], ["a.wav"], tmp_path, kept=["finetune"])
    np.testing.assert_allclose(from_bundle, want, atol=1e-9)
    pipeline = tmp_path / "data/models/finetune"  # the pipeline's layout: fold<k>/model.pt, settings from params.yaml
    for k in PARAMS["cv"]["folds"]:
        (pipeline / f"fold{k}").mkdir(parents=True)
        (pipeline / f"fold{k}" / "model.pt").write_bytes((b / "finetune" / f"fold{k}.pt").read_bytes())
    import yaml

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    monkeypatch.chdir(tmp_path)
    _, from_dir, _, _ = infer.tag(infer.Predictor.open("data/models/finetune"), files)
    np.testing.assert_allclose(from_dir, want, atol=1e-9)


def test_clear_errors(tmp_path, audio_dir):
    b = make_bundle(tmp_path / "bundle", MEAN)
    with pytest.raises(FileNotFoundError, match="nope.wav: no such file"):
        infer.find_audio([tmp_path / "nope.wav"])
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    sf.write(tmp_path / "x" / "same.wav", tone(0.5, 300, SR, 0), SR)
    sf.write(tmp_path / "y" / "same.wav", tone(0.5, 300, SR, 0), SR)
    with pytest.raises(ValueError, match="both would be clip 'same.wav'"):
        infer.find_audio([tmp_path / "x", tmp_path / "y"])
    with pytest.raises(ValueError, match="must end in .csv"):
        cli_main_raises(["predict", str(audio_dir / "a.wav"), "--model", str(b), "-o", str(tmp_path / "o.txt")])
    (b / "finetune" / "fold1.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"finetune/fold1.pt: missing \(listed in"):
        infer.Predictor.open(b)
    with pytest.raises(FileNotFoundError, match="neither a model bundle"):
        infer.Predictor.open(audio_dir, tmp_path / "params.yaml")


def cli_main_raises(argv):
    """Run a subcommand's function directly (cli.main turns errors into exit status 2)."""
    args = cli.build_parser().parse_args(argv)
    return args.func(args)


def test_combiner_state_round_trips_through_json():
    rng = np.random.default_rng(0)
    truth = (rng.uniform(size=(60, 3)) < 0.3).astype(np.float32)
    probs = [np.clip(truth * 0.6 + rng.uniform(0, 0.5, size=truth.shape), 0, 1) for _ in range(3)]
    for method in ensemble.METHODS:
        fitted = ensemble.Combiner(method, 0.25, seed=0, guard=False).fit(probs, truth)
        again = ensemble.Combiner.from_state(json.loads(json.dumps(fitted.state())))
        np.testing.assert_allclose(again(probs), fitted(probs), atol=1e-12)
    with pytest.raises(ValueError, match="needs its weights"):
        ensemble.Combiner.from_state({"method": "weighted", "single": None})


def test_a_card_with_a_bad_setting_is_refused_naming_the_card_and_the_key(tmp_path):
    b = make_bundle(tmp_path / "bundle", MEAN)
    card = json.loads((b / bundle.CARD).read_text())
    card["tta"]["beta"] = 2
    (b / bundle.CARD).write_text(json.dumps(card))
    with pytest.raises(ValueError, match=r"card\.json: tta\.beta must be between 0 and 1"):
        infer.Predictor.open(b)


def test_the_stage_writes_a_bundle_of_cards_and_fold_model_copies(tmp_path):
    from fat.layout import Layout

    layout = Layout(tmp_path)
    for fam in FAMILIES:
        for k in P.cv.folds:
            layout.preds(fam, k).mkdir(parents=True)  # predict@<family>'s copy of the member's model
            (layout.preds(fam, k) / "model.pt").write_bytes(f"{fam}{k}".encode())
    result = {"members": {f: {"oof_lwlrap": 0.5, "test_lwlrap": 0.4} for f in FAMILIES}, "kept": ["finetune"],
              "combiner": MEAN, "final": "finetune", "lwlrap": 0.5}
    out = bundle.write(P, CLASSES, result, layout)
    card = bundle.read(out)
    assert card["tta"] == P.tta.as_dict() and card["fold_agg"] == "geomean" and card["kept"] == ["finetune"]
    assert [m["seed"] for m in card["members"]["finetune"]] == [701, 702]  # the test split's TTA seeds
    assert (out / "baseline/fold1.pt").read_bytes() == b"baseline1"
    assert bundle.read(out / "baseline")["scores"] == {"oof_lwlrap": 0.5, "test_lwlrap": 0.4}

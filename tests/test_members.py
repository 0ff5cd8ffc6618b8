"""fat.training.members: the one training skeleton every family goes through, on a tiny project
(synthetic audio -> stores -> folds -> pretrain, baseline, finetune, retrain), and member seeding."""
from __future__ import annotations

import dataclasses
import io

import pandas as pd
import pytest
import torch

from fat import params as P
from fat.data import folds, synth
from fat.data import tables as data
from fat.features import extract
from fat.io import save_predictions
from fat.layout import Layout
from fat.params import Params
from fat.training import members, models, pseudo, splits

TINY = Params.build({
    "seed": 3,
    "synth": {"n_classes": 3, "sample_rate": 16000,
              "curated": {"n_clips": 24, "duration": [0.3, 1.0]},
              "noisy": {"n_clips": 16, "duration": [0.3, 1.0]},
              "test": {"n_clips": 8, "duration": [0.3, 1.0]}},
    "audio": {"sample_rate": 16000},
    "features": {"n_fft": 512, "hop_length": 256, "n_mels": 16},
    "cv": {"n_folds": 2, "folds": [0, 1]},
    "model": {"base_channels": 4, "n_blocks": 2},
    "train": {"crop_frames": 16, "batch_size": 8, "epochs": 2, "min_steps": 0},
    "pretrain": {"epochs": 1, "eval_every": 1},
    "finetune": {"epochs": 2},
    "retrain": {"epochs": 2},
})


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    layout = Layout(root=tmp_path_factory.mktemp("members"))
    synth.generate(layout.raw, TINY.synth, seed=TINY.seed, n_jobs=1)
    for split in data.SPLITS:
        extract.build_split(layout.raw, split, layout.features(split), TINY.audio, TINY.features, n_jobs=1)
    folds.curated_folds(layout.raw, TINY.cv.n_folds, seed=TINY.seed).to_csv(layout.folds, index=False)
    return layout


def test_pretrain_writes_model_and_history_and_scores_on_curated(project):
    result = members.train_pretrain(TINY, project)
    assert set(result) == {"curated_lwlrap", "curated_loss", "train_clips", "epochs"}
    assert result["train_clips"] == TINY.synth.noisy.n_clips and result["epochs"] == 1  # the family's override
    assert 0 < result["curated_lwlrap"] <= 1
    model, ckpt = models.load(project.pretrain / "model.pt", classes=data.vocabulary(project.raw))
    assert ckpt["family"] == "pretrain" and ckpt["crop_frames"] == 16 and ckpt["model_cfg"] == TINY.model.as_dict()
    assert len(pd.read_csv(project.pretrain / "history.csv")) == 1
    assert not project.checkpoint("pretrain").exists()  # cleared once the outputs are written


@pytest.mark.parametrize("family", ["baseline", "finetune", "retrain"])
def test_fold_member_writes_its_out_of_fold_and_test_predictions(project, family):
    if not (project.pretrain / "model.pt").exists():
        members.train_pretrain(TINY, project)
    classes = data.vocabulary(project.raw)
    if family == "retrain":  # two noisy clips pseudo-labelled with their own labels
        noisy = data.split_table(project.raw, "noisy").iloc[:2]
        save_predictions(project.pseudo(0) / "labels.csv", noisy["fname"].tolist(),
                         data.multi_hot(noisy["labels"], classes), classes)
    result = members.train_member(family, 0, TINY, project)
    fold_table = pd.read_csv(project.folds)
    val = fold_table.loc[fold_table["fold"] == 0, "fname"]
    assert result["val_clips"] == len(val) and result["train_clips"] == len(fold_table) - len(val)
    assert result["pseudo_clips"] == (2 if family == "retrain" else 0) and result["epochs"] == 2
    out = project.member(family, 0)
    oof = pd.read_csv(out / "oof.csv")
    assert sorted(oof["fname"]) == sorted(val) and list(oof.columns[1:]) == classes
    test = pd.read_csv(out / "test.csv")
    assert len(test) == TINY.synth.test.n_clips
    assert len(pd.read_csv(out / "history.csv")) == 2
    _, ckpt = models.load(out / "model.pt", classes=classes)
    assert (ckpt["family"], ckpt["fold"], ckpt["crop_frames"]) == (family, 0, 16)


def test_members_report_the_epochs_train_min_steps_gave_them(project):
    floor = dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, min_steps=3))  # 12 clips / 8: 1 step
    result = members.train_member("baseline", 1, floor, project)
    assert result["epochs"] == 3 and len(pd.read_csv(project.member("baseline", 1) / "history.csv")) == 3


def test_same_params_give_byte_identical_member_outputs(project):
    members.train_member("baseline", 1, TINY, project)
    first = {n: (project.member("baseline", 1) / n).read_bytes() for n in ("oof.csv", "test.csv", "history.csv")}
    members.train_member("baseline", 1, TINY, project)
    again = {n: (project.member("baseline", 1) / n).read_bytes() for n in first}
    assert first == again


def test_a_family_seed_changes_its_members_training_and_nothing_else(project):
    """`baseline.seed` (a train setting) retrains the baseline members from other initial weights and
    crops on the same folds and data; set to the top-level seed, it is the default run again."""
    members.train_member("baseline", 1, TINY, project)
    default = (project.member("baseline", 1) / "oof.csv").read_bytes()
    reseeded = dataclasses.replace(TINY, baseline=P.Baseline.build({"seed": 4}, "baseline"))
    members.train_member("baseline", 1, reseeded, project)
    other = pd.read_csv(project.member("baseline", 1) / "oof.csv")
    assert (project.member("baseline", 1) / "oof.csv").read_bytes() != default
    assert sorted(other["fname"]) == sorted(pd.read_csv(io.BytesIO(default))["fname"])  # the same held-out clips
    same = dataclasses.replace(TINY, baseline=P.Baseline.build({"seed": TINY.seed}, "baseline"))
    members.train_member("baseline", 1, same, project)
    assert (project.member("baseline", 1) / "oof.csv").read_bytes() == default


def test_finetune_starts_from_the_pretrained_backbone(project, monkeypatch):
    if not (project.pretrain / "model.pt").exists():
        members.train_pretrain(TINY, project)
    seen = {}

    def stop_before_training(run, p, layout, device):
        seen["state"] = {k: v.clone() for k, v in run.model.state_dict().items()}
        return None  # as on a rank other than 0: nothing is written

    monkeypatch.setattr(members, "_train", stop_before_training)
    assert members.train_member("finetune", 1, TINY, project) is None
    pre = torch.load(project.pretrain / "model.pt", weights_only=False)["state_dict"]
    backbone = [k for k in pre if not k.startswith("head.4.")]
    assert backbone and all(torch.equal(seen["state"][k], pre[k]) for k in backbone)
    monkeypatch.setattr(members, "_train", stop_before_training)
    members.train_member("baseline", 1, TINY, project)  # from scratch: not the pretrained weights
    assert not all(torch.equal(seen["state"][k], pre[k]) for k in backbone)


def test_unknown_family_is_refused(project):
    with pytest.raises(ValueError, match="unknown family 'pretrain'"):
        members.train_member("pretrain", 0, TINY, project)


def test_member_seeds_pair_families_and_differ_between_folds():
    assert splits.member_seed(2019, 0) != splits.member_seed(2019, 1)
    assert splits.member_seed(2019, 0) != splits.member_seed(2020, 0)


def test_retrain_from_scratch_is_not_initialised_from_pretrain(project, monkeypatch):
    scratch = dataclasses.replace(TINY, retrain=dataclasses.replace(TINY.retrain, init="scratch"))
    loaded = []
    monkeypatch.setattr(models, "load_backbone", lambda model, path: loaded.append(path))
    monkeypatch.setattr(members, "_train", lambda *a: None)
    members.train_member("retrain", 0, scratch, project)
    members.train_member("finetune", 0, scratch, project)
    assert loaded == [project.pretrain / "model.pt"]  # finetune only


def test_staged_selection_retrains_on_the_clips_its_own_last_model_selects(project, monkeypatch):
    """retrain.stages 2: stage 2 scores the noisy set with the stage-1 retrain@0 model (not the
    fine-tuned one, nor another fold's), selects with the pseudo rules and trains a fresh model."""
    if not (project.pretrain / "model.pt").exists():
        members.train_pretrain(TINY, project)
    classes = data.vocabulary(project.raw)
    noisy = data.split_table(project.raw, "noisy")
    save_predictions(project.pseudo(0) / "labels.csv", noisy["fname"].tolist()[:2],
                     data.multi_hot(noisy["labels"].iloc[:2], classes), classes)
    staged = dataclasses.replace(TINY, retrain=dataclasses.replace(TINY.retrain, stages=2),
                                 pseudo=dataclasses.replace(TINY.pseudo, select="lwlrap"))
    trained, scored = [], []
    real_select = pseudo.score_and_select

    def spy(model, *a, **k):
        scored.append(model)
        return real_select(model, *a, **k)

    real_train = members._train
    monkeypatch.setattr(pseudo, "score_and_select", spy)
    monkeypatch.setattr(members, "_train", lambda run, *a: trained.append(run) or real_train(run, *a))
    result = members.train_member("retrain", 0, staged, project)
    assert [r.name for r in trained] == ["retrain@0", "retrain@0.stage2"]
    assert scored == [trained[0].model] and trained[1].model is not trained[0].model
    assert len(trained[0].data) == 2 + result["train_clips"]
    # stage 2's noisy clips are exactly the lwlrap-agreeing clips of the stage-1 model
    fnames, targets, _ = real_select(trained[0].model, 16, staged.pseudo, project, torch.device("cpu"))
    assert result["pseudo_clips_per_stage"] == [2, len(fnames)] and result["pseudo_clips"] == len(fnames)
    assert len(trained[1].data) == len(fnames) + result["train_clips"]
    assert not project.checkpoint("retrain@0.stage2").exists() and not project.checkpoint("retrain@0").exists()

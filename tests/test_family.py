"""Family settings: which `train` keys a family section may override, and member seeding."""
from __future__ import annotations

import pytest

from fat.training import members as family
from fat.training import splits

TRAIN = {"epochs": 16, "lr": 0.002, "batch_size": 32, "crop_frames": 96}


def params(**sections) -> dict:
    return {"train": TRAIN, "mixup": {"alpha": 0}, "augment": {"p": 0.5}, **sections}


def test_family_section_overrides_train_settings():
    cfg = family.family_train_cfg(params(pretrain={"epochs": 8, "lr": 0.01}), "pretrain")
    assert cfg == {**TRAIN, "epochs": 8, "lr": 0.01}
    assert family.family_train_cfg(params(baseline={}), "baseline") == TRAIN
    assert family.family_train_cfg(params(baseline=None), "baseline") == TRAIN


def test_retrain_init_is_its_own_key_not_a_train_override():
    cfg = family.family_train_cfg(params(retrain={"init": "scratch", "epochs": 3}), "retrain")
    assert cfg == {**TRAIN, "epochs": 3}
    with pytest.raises(ValueError, match="retrain.init must be"):
        family.family_train_cfg(params(retrain={"init": "finetune"}), "retrain")


@pytest.mark.parametrize("fam", ["baseline", "finetune", "pretrain"])
def test_typo_in_a_family_section_is_an_error(fam):
    with pytest.raises(ValueError, match=rf"{fam}\.epoch is not a setting"):
        family.family_train_cfg(params(**{fam: {"epoch": 3}}), fam)
    with pytest.raises(ValueError, match="init"):  # init belongs to retrain only
        family.family_train_cfg(params(**{fam: {"init": "scratch"}}), fam)


@pytest.mark.parametrize("sections, message", [
    ({"pretrain": {"epochs": 0}}, r"pretrain\.epochs must be a whole number >= 1, got 0"),
    ({"train": {**TRAIN, "lr": -1}}, r"train\.lr must be > 0, got -1"),
    ({"mixup": {"alpha": "lots"}}, r"mixup\.alpha must be a number, got 'lots'"),
    ({"augment": {"p": 2}}, r"augment\.p must be between 0 and 1, got 2"),
])
def test_out_of_range_settings_name_the_section_they_came_from(sections, message):
    with pytest.raises(ValueError, match=message):
        family.family_train_cfg(params(**sections), "pretrain")


def test_member_seeds_pair_families_and_differ_between_folds():
    assert splits.member_seed(2019, 0) != splits.member_seed(2019, 1)
    assert splits.member_seed(2019, 0) != splits.member_seed(2020, 0)

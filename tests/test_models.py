"""Tests for fat/training/models.py: the CNN, its channel front end, checkpoints and backbone transfer."""
from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch
from torch import nn

from fat.params import Model
from fat.training import models

N_MELS = 16
TINY = {"base_channels": 4, "n_blocks": 2, "dropout": 0.3, "head": "meanmax"}  # attention: tests/test_recipe.py


def _logmel(b=2, f=N_MELS, t=40, seed=0) -> torch.Tensor:
    """A log-mel-like batch in dB: smooth-ish structure plus noise, so deltas are non-trivial."""
    rng = np.random.default_rng(seed)
    tt = np.arange(t)
    base = -40 + 15 * np.sin(tt[None, None, :] / 3.0 + rng.uniform(0, 6, size=(b, f, 1)))
    x = base + 5 * rng.standard_normal((b, f, t))
    return torch.tensor(x, dtype=torch.float32)


def _raw_front(channels, monkeypatch, n_mels=N_MELS):
    """A FrontEnd in eval mode with its BatchNorm replaced by identity (raw stacked channels)."""
    front = models.FrontEnd(channels, n_mels).eval()
    monkeypatch.setattr(front, "norm", nn.Identity())
    return front


def _warm_batchnorm(model, n_mels=N_MELS, t=24, seed=1):
    """Run a few train-mode forwards so BatchNorm running stats differ from their defaults."""
    model.train()
    with torch.no_grad():
        for i in range(3):
            model(_logmel(4, n_mels, t, seed=seed + i) / 10.0)
    model.eval()


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("length", [4, 5, 7, 16, 33, 101])
@pytest.mark.parametrize("channels", [["mel"], ["mel", "delta"], ["mel", "delta", "delta2", "mfcc"], ["mfcc"]])
def test_build_gives_one_logit_per_class_for_any_length(length, channels):
    torch.manual_seed(0)
    model = models.build(Model(**{**TINY, "channels": channels}), n_classes=5, n_mels=N_MELS).eval()
    assert model.front.channels == channels
    assert model.front.norm.num_features == len(channels)
    with torch.no_grad():
        out = model(_logmel(3, N_MELS, length))
    assert out.shape == (3, 5)
    assert torch.isfinite(out).all()


def test_audiocnn_batch_items_are_independent_in_eval():
    """In eval mode one clip's logits do not depend on the rest of the batch."""
    torch.manual_seed(0)
    model = models.AudioCNN(n_classes=4, n_mels=N_MELS, channels=("mel", "delta"), **TINY)
    _warm_batchnorm(model)
    x = _logmel(3, N_MELS, 21)
    with torch.no_grad():
        full = model(x)
        single = torch.cat([model(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(full, single, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(full[0], full[1])


def test_build_defaults_to_mel_channel():
    model = models.build(Model(**{"base_channels": 4, "n_blocks": 2}), n_classes=3, n_mels=N_MELS)
    assert model.front.channels == ["mel"]
    assert isinstance(model.head[-1], nn.Linear) and model.head[-1].out_features == 3
    assert model.head[0].p == pytest.approx(0.3)


# --------------------------------------------------------------------------- front end


@pytest.mark.parametrize("name,order", [("delta", 1), ("delta2", 2)])
def test_delta_channels_match_librosa_on_interior_frames(name, order, monkeypatch):
    x = _logmel(2, N_MELS, 40)
    front = _raw_front(["mel", name], monkeypatch)
    with torch.no_grad():
        out = front(x)
    assert out.shape == (2, 2, N_MELS, 40)
    torch.testing.assert_close(out[:, 0], x)  # `mel` is passed through unchanged
    T = x.shape[-1]
    for b in range(2):
        ref = librosa.feature.delta(x[b].numpy().astype(np.float64), width=9, order=order, axis=-1)
        got = out[b, 1].numpy()
        np.testing.assert_allclose(got[:, 4 : T - 4], ref[:, 4 : T - 4], rtol=1e-4, atol=1e-3)
        assert np.abs(ref[:, 4 : T - 4]).max() > 0.1  # the comparison is not between zeros


@pytest.mark.parametrize("order", [1, 2])
def test_delta_edges_use_replicate_padding(order, monkeypatch):
    """At the borders the front end replicates the edge frame: librosa's mode='nearest'."""
    x = _logmel(1, N_MELS, 30, seed=3)
    front = _raw_front(["delta" if order == 1 else "delta2"], monkeypatch)
    with torch.no_grad():
        got = front(x)[0, 0].numpy()
    ref = librosa.feature.delta(x[0].numpy().astype(np.float64), width=9, order=order, axis=-1, mode="nearest")
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-3)


def test_mfcc_channel_matches_librosa_orthonormal_dct(monkeypatch):
    x = _logmel(2, N_MELS, 25, seed=5)
    front = _raw_front(["mfcc"], monkeypatch)
    with torch.no_grad():
        out = front(x)
    for b in range(2):
        ref = librosa.feature.mfcc(S=x[b].numpy().astype(np.float64), n_mfcc=N_MELS)
        np.testing.assert_allclose(out[b, 0].numpy(), ref, rtol=1e-4, atol=1e-3)
    # orthonormal: energy per frame is preserved
    np.testing.assert_allclose((out[:, 0] ** 2).sum(1).numpy(), (x**2).sum(1).numpy(), rtol=1e-4)


def test_front_end_stacks_channels_in_requested_order(monkeypatch):
    x = _logmel(1, N_MELS, 20, seed=7)
    both = _raw_front(["mfcc", "mel", "delta"], monkeypatch)
    with torch.no_grad():
        out = both(x)
    ref_mfcc = librosa.feature.mfcc(S=x[0].numpy().astype(np.float64), n_mfcc=N_MELS)
    np.testing.assert_allclose(out[0, 0].numpy(), ref_mfcc, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(out[0, 1], x[0])


def test_front_end_normalises_with_batchnorm():
    """Without bypassing the norm, train-mode output is standardised per channel."""
    front = models.FrontEnd(["mel", "delta"], N_MELS).train()
    with torch.no_grad():
        out = front(_logmel(4, N_MELS, 30))
    mean = out.mean(dim=(0, 2, 3))
    std = out.std(dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(mean, torch.zeros(2), atol=1e-4, rtol=0)
    torch.testing.assert_close(std, torch.ones(2), atol=1e-3, rtol=0)


@pytest.mark.parametrize("channels", [["mel", "chroma"], ["MEL"], [], ["delta3"]])
def test_unknown_or_empty_channels_raise(channels):
    with pytest.raises(ValueError, match="channels"):
        models.FrontEnd(channels, N_MELS)
    with pytest.raises(ValueError):
        models.build(Model(**{**TINY, "channels": channels}), n_classes=3, n_mels=N_MELS)


# --------------------------------------------------------------------------- checkpoints


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    cfg = {**TINY, "channels": ["mel", "delta2", "mfcc"]}
    model = models.build(Model(**cfg), n_classes=6, n_mels=N_MELS)
    _warm_batchnorm(model)
    path = tmp_path / "sub" / "model.pt"
    classes = [f"c{i}" for i in range(6)]
    models.save(path, model, Model(**cfg), classes, N_MELS, extra={"fold": 3})
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp files left behind

    loaded, ckpt = models.load(path)
    assert ckpt["classes"] == classes and ckpt["n_mels"] == N_MELS and ckpt["fold"] == 3
    assert ckpt["model_cfg"]["channels"] == ["mel", "delta2", "mfcc"]
    loaded.eval()
    x = _logmel(3, N_MELS, 27, seed=11)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def test_load_backbone_copies_everything_but_the_classifier(tmp_path):
    torch.manual_seed(0)
    src = models.build(Model(**TINY), n_classes=7, n_mels=N_MELS)
    _warm_batchnorm(src)
    path = tmp_path / "src.pt"
    models.save(path, src, Model(**TINY), [f"s{i}" for i in range(7)], N_MELS)

    torch.manual_seed(1)
    dst = models.build(Model(**TINY), n_classes=3, n_mels=N_MELS)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    models.load_backbone(dst, path)

    src_sd, dst_sd = src.state_dict(), dst.state_dict()
    head_keys = {k for k in dst_sd if k.startswith("head.4.")}
    assert head_keys == {"head.4.weight", "head.4.bias"}
    for k, v in dst_sd.items():
        if k in head_keys:
            assert torch.equal(v, before[k]), f"{k} should keep its own initialisation"
        else:
            assert torch.equal(v, src_sd[k]), f"{k} was not copied"
    # weights that were actually learned/initialised differently are now shared
    assert not torch.equal(before["features.0.0.weight"], dst_sd["features.0.0.weight"])
    assert not torch.equal(before["front.norm.running_mean"], dst_sd["front.norm.running_mean"])
    # same embedding, different classifier
    dst.eval(), src.eval()
    x = _logmel(2, N_MELS, 20)
    with torch.no_grad():
        torch.testing.assert_close(dst.embed(x), src.embed(x), rtol=0, atol=0)
        assert dst(x).shape == (2, 3)


@pytest.mark.parametrize(
    "other",
    [
        {"base_channels": 8, "n_blocks": 2},
        {"base_channels": 4, "n_blocks": 3},
        {"base_channels": 4, "n_blocks": 2, "channels": ["mel", "delta"]},
    ],
)
def test_load_backbone_rejects_architecture_mismatch(tmp_path, other):
    src = models.build(Model(**other), n_classes=3, n_mels=N_MELS)
    path = tmp_path / "src.pt"
    models.save(path, src, Model(**other), ["a", "b", "c"], N_MELS)
    dst = models.build(Model(**TINY), n_classes=3, n_mels=N_MELS)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(ValueError, match="architecture"):
        models.load_backbone(dst, path)
    for k, v in dst.state_dict().items():  # a failed transfer leaves the model untouched
        assert torch.equal(v, before[k]), k


class _RunsCode:
    """Unpickling this calls a function of the attacker's choice (here: touching a file)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def crafted_model_file(path, witness):
    """A model file that looks like ours but carries an object whose unpickling runs code."""
    model = models.build(Model(base_channels=4, n_blocks=2), 3, 16)
    torch.save({"state_dict": model.state_dict(), "model_cfg": {"base_channels": 4, "n_blocks": 2},
                "classes": ["a", "b", "c"], "n_mels": 16, "payload": _RunsCode(witness)}, path)
    return path


@pytest.mark.parametrize("loader", ["load", "load_backbone", "read_checkpoint"])
def test_crafted_pickle_is_refused_naming_the_file_and_runs_nothing(tmp_path, loader):
    witness = tmp_path / "code-ran"
    path = crafted_model_file(tmp_path / "model.pt", witness)
    with pytest.raises(ValueError) as e:
        if loader == "load_backbone":
            models.load_backbone(models.build(Model(base_channels=4, n_blocks=2), 3, 16), path)
        else:
            getattr(models, loader)(path)
    assert str(path) in str(e.value) and "refused to load" in str(e.value)
    assert not witness.exists()
    torch.load(path, weights_only=False)  # the file really is armed: the unsafe way runs its code
    assert witness.exists()


def test_a_file_that_is_not_a_model_is_a_clear_error(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="junk.pt: not a readable model file"):
        models.load(path)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: not a fat model file"):
        models.load(tmp_path / "other.pt")


def test_first_block_convs_sets_the_full_resolution_blocks_convolutions_only():
    def convs(model):
        return [sum(isinstance(m, nn.Conv2d) for m in block) for block in model.features]

    one = models.build(Model(**TINY, first_block_convs=1), n_classes=3, n_mels=N_MELS)
    two = models.build(Model(**TINY, first_block_convs=2), n_classes=3, n_mels=N_MELS)
    assert convs(one) == [1, 2] and convs(two) == [2, 2]
    assert convs(models.build(Model(**TINY), n_classes=3, n_mels=N_MELS)) == [1, 2]  # the default
    assert one(_logmel(2, N_MELS, 20)).shape == (2, 3)
    with pytest.raises(ValueError, match=r"model\.first_block_convs must be a whole number 1 or 2, got 3"):
        Model.build({"first_block_convs": 3}, "model")


def test_a_checkpoint_saved_before_first_block_convs_existed_loads_as_two_convs(tmp_path):
    """Model files from before the key hold two convs in every block; loading them must not rebuild
    the first block with the current default."""
    torch.manual_seed(0)
    model = models.build(Model(**TINY, first_block_convs=2), n_classes=3, n_mels=N_MELS)
    _warm_batchnorm(model)
    models.save(tmp_path / "m.pt", model, Model(**TINY, first_block_convs=2), ["a", "b", "c"], N_MELS)
    ckpt = torch.load(tmp_path / "m.pt", weights_only=True)
    del ckpt["model_cfg"]["first_block_convs"]
    torch.save(ckpt, tmp_path / "old.pt")
    loaded, _ = models.load(tmp_path / "old.pt")
    x = _logmel(2, N_MELS, 24, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), model.eval()(x), rtol=0, atol=0)

"""Tests for the training techniques behind params (each off by default = the plain recipe):
input normalisation and attention head (fat/training/models.py), label-union mixing and random-resized
crops (fat/training/augment.py), the mixup schedule, label smoothing, EMA weights and AdamW (fat/training/loop.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fat.params import Augment, Mixup, Model, ParamsError, Train
from fat.training import augment, models
from fat.training import loop as train
from test_train import AUGMENT, CPU, LENGTH, N_CLASSES, N_MELS, TINY, TRAIN_CFG, band_problem


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    return band_problem(tmp_path_factory.mktemp("band") / "feat")


def build(seed=0, **cfg):
    torch.manual_seed(seed)
    return models.build(Model(**{**TINY, **cfg}), n_classes=N_CLASSES, n_mels=N_MELS)


def fit(problem, *, epochs=3, mixup=None, alpha=0.0, seed=0, model_cfg=None, **train_kw):
    store, targets = problem
    cfg = Train(**{**TRAIN_CFG, "epochs": epochs, **train_kw})  # the schema checks every value
    mix = Mixup(**{"alpha": alpha, **(mixup or {})})
    model = build(seed, **(model_cfg or {}))
    data = train.CropDataset(store, np.arange(len(store)), targets, LENGTH, seed=seed, stretch=cfg.stretch)
    hist = train.fit(model, data, train=cfg, mixup=mix, augment=Augment(**AUGMENT), seed=seed, device=CPU)
    return model, hist


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------- model options


def test_default_model_has_the_attention_head_and_meanmax_the_plain_parameters():
    default = models.build(Model(**{k: v for k, v in TINY.items() if k != "head"}), n_classes=N_CLASSES, n_mels=N_MELS)
    assert isinstance(default.attention, models.AttentionPool)
    plain = build()  # TINY's head: meanmax
    assert plain.attention is None
    assert not any(k.startswith("attention") for k in plain.state_dict())
    assert isinstance(plain.front.norm, torch.nn.BatchNorm2d) and plain.front.norm.num_features == 1
    same = build(input_norm="global", head="meanmax")
    assert same_weights(plain, same)


def test_band_norm_keeps_one_statistic_per_mel_band():
    m = build(input_norm="band", channels=["mel", "delta"])
    assert m.front.norm.num_features == 2 * N_MELS
    scale, shift = torch.linspace(1, 5, N_MELS).view(1, -1, 1), torch.linspace(-20, 20, N_MELS).view(1, -1, 1)
    x = torch.randn(8, N_MELS, LENGTH) * scale + shift
    m.train()
    h = m.front(x)  # (B, C, F, T): every (channel, band) is standardised over batch and time
    mel = h[:, 0]
    np.testing.assert_allclose(mel.mean(dim=(0, 2)).detach().numpy(), 0, atol=1e-4)
    np.testing.assert_allclose(mel.std(dim=(0, 2), unbiased=False).detach().numpy(), 1, atol=1e-2)
    glob = build(input_norm="global").front(x)[:, 0]  # one statistic: band means stay apart
    assert glob.mean(dim=(0, 2)).std() > 0.5


def test_clip_norm_ignores_a_per_band_offset_of_the_crop():
    m = build(input_norm="clip").eval()
    x = torch.randn(4, N_MELS, LENGTH)
    offset = torch.randn(4, N_MELS, 1) * 10  # a level / microphone colouring per clip and band
    torch.testing.assert_close(m(x), m(x + offset), atol=1e-4, rtol=1e-4)
    plain = build().eval()
    assert not torch.allclose(plain(x), plain(x + offset), atol=1e-3)


def test_attention_head_adds_time_pooling_and_transfers():
    m = build(head="attention").eval()
    x = torch.randn(3, N_MELS, LENGTH)
    with torch.no_grad():
        base = m.head(m.embed(x))
        h = m.frames(x)
        w = torch.softmax(m.attention.att(h), dim=2)
        torch.testing.assert_close(m(x), base + (w * m.attention.cla(h)).sum(2))
        assert (m(x) - base).abs().max() > 1e-4
    # the attention logits weight frames: a frame whose attention dominates decides the pooled value
    assert torch.allclose(w.sum(2), torch.ones(3, N_CLASSES))


def test_load_backbone_accepts_an_attention_checkpoint(tmp_path):
    src = build(1, head="attention")
    models.save(tmp_path / "m.pt", src, Model(**{**TINY, "head": "attention"}), [f"c{i}" for i in range(N_CLASSES)],
                N_MELS)
    dst = build(2, head="attention")
    models.load_backbone(dst, tmp_path / "m.pt")
    assert torch.equal(dst.features[0][0].weight, src.features[0][0].weight)
    loaded, _ = models.load(tmp_path / "m.pt")
    assert loaded.attention is not None


@pytest.mark.parametrize("key, value", [("input_norm", "mel"), ("head", "max")])
def test_unknown_model_options_are_named(key, value):
    with pytest.raises(ParamsError, match=f"params.yaml: model.{key} must be one of"):
        build(**{key: value})  # the schema refuses it
    with pytest.raises(ValueError, match=f"model.{key}"):
        models.AudioCNN(N_CLASSES, N_MELS, **{key: value})  # and so does the model itself


# --------------------------------------------------------------------------- mixing and crops


def test_concat_mix_replaces_the_tail_and_unions_the_labels():
    x = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 1, 2, 20).contiguous().view(6, 2, 20)
    y = torch.eye(6)[:, :6]
    rng = np.random.default_rng(0)
    xm, ym = augment.concat_mix(x, y, 1.0, rng)
    for i in range(6):
        row = xm[i, 0]
        partner = int(row[-1])
        if partner != i:  # (a sample drawn as its own partner is unchanged)
            cut = int((row != i).nonzero()[0])
            assert 5 <= cut <= 15 and torch.all(row[:cut] == i) and torch.all(row[cut:] == partner)
        else:
            assert torch.all(row == i)
        expect = torch.maximum(y[i], y[partner])
        assert torch.equal(ym[i], expect)
    assert (ym.sum(1) == 2).sum() >= 4  # most samples got a different partner: two labels


def test_concat_mix_off_returns_the_batch_and_draws_nothing():
    x, y = torch.randn(4, 3, 10), torch.eye(4)
    rng = np.random.default_rng(1)
    state = rng.bit_generator.state
    xm, ym = augment.concat_mix(x, y, 0.0, rng)
    assert xm is x and ym is y and rng.bit_generator.state == state
    with pytest.raises(ValueError, match="concat_p"):
        augment.concat_mix(x, y, 1.5, rng)


def test_stretch_window_range_and_resize_time_is_a_time_stretch():
    rng = np.random.default_rng(0)
    assert augment.stretch_window(40, 0.0, rng) == 40
    w = [augment.stretch_window(40, 0.5, rng) for _ in range(400)]
    assert min(w) >= round(40 / 1.5) and max(w) <= 60 and min(w) < 30 and max(w) > 52
    ramp = np.tile(np.arange(30, dtype=np.float32), (2, 1))
    out = augment.resize_time(ramp, 60)  # twice as slow: half the slope
    assert out.shape == (2, 60)
    np.testing.assert_allclose(np.diff(out[0, 2:-2]), 0.5, atol=1e-5)
    assert augment.resize_time(ramp, 30) is ramp
    with pytest.raises(ValueError, match="stretch"):
        augment.stretch_window(40, -0.1, rng)


def test_crop_dataset_with_stretch_resamples_and_without_is_unchanged(problem):
    store, targets = problem
    rows = np.arange(len(store))
    plain = train.CropDataset(store, rows, targets, LENGTH, seed=3)
    zero = train.CropDataset(store, rows, targets, LENGTH, seed=3, stretch=0.0)
    st = train.CropDataset(store, rows, targets, LENGTH, seed=3, stretch=0.5)
    assert all(torch.equal(plain[i][0], zero[i][0]) for i in range(len(store)))
    xs = [st[i][0] for i in range(len(store))]
    assert all(x.shape == (N_MELS, LENGTH) for x in xs)
    differ = sum(not torch.equal(a, plain[i][0]) for i, a in enumerate(xs))
    assert differ > len(store) // 2
    # a stretched crop stays within the clip's value range (interpolation, no padding)
    for i, x in enumerate(xs):
        clip = store.clip(i)
        assert x.min() >= clip.min() - 1e-3 and x.max() <= clip.max() + 1e-3


# --------------------------------------------------------------------------- training loop


def test_mixup_until_zero_trains_as_without_mixup(problem):
    off, _ = fit(problem, alpha=0.0)
    never, _ = fit(problem, alpha=0.4, mixup={"alpha": 0.4, "until": 0.0})
    mixed, _ = fit(problem, alpha=0.4, mixup={"alpha": 0.4, "until": 1.0})
    assert same_weights(off, never)
    assert not same_weights(off, mixed)


def test_mixup_until_mixes_only_the_first_epochs(problem):
    loop_model = build()
    store, targets = problem
    data = train.CropDataset(store, np.arange(len(store)), targets, LENGTH, seed=0)
    loop = train.TrainLoop(loop_model, data, train=Train(**{**TRAIN_CFG, "epochs": 4}),
                           mixup=Mixup(alpha=0.4, until=0.5, concat_p=0.5), augment=Augment(**AUGMENT), seed=0,
                           device=CPU)
    assert loop.mix_epochs == 2


def test_defaults_of_new_keys_train_exactly_as_before(problem):
    before, _ = fit(problem)
    after, _ = fit(problem, mixup={"alpha": 0.0, "until": 1.0, "concat_p": 0.0}, optimizer="adam", stretch=0.0,
                   label_smoothing=0.0, ema_decay=0.0, model_cfg={"input_norm": "global", "head": "meanmax"})
    assert same_weights(before, after)


def test_label_smoothing_pulls_the_targets_to_one_half(problem):
    plain, h0 = fit(problem, epochs=15)
    smooth, h1 = fit(problem, epochs=15, label_smoothing=0.4)
    assert not same_weights(plain, smooth)
    store, targets = problem
    x = torch.from_numpy(np.stack([np.ascontiguousarray(augment.fit_length(store.clip(i), LENGTH, 0))
                                   for i in range(len(store))]))
    with torch.no_grad():
        p0, p1 = torch.sigmoid(plain.eval()(x)), torch.sigmoid(smooth.eval()(x))
    # targets 0.8 / 0.2: the smoothed model's top class stays near 0.8 while the hard-target one nears 1
    assert p0.max(1).values.mean() > 0.9 > p1.max()


def test_ema_weights_replace_the_trained_ones_after_the_last_epoch(problem):
    raw, _ = fit(problem, epochs=3)
    ema, _ = fit(problem, epochs=3, ema_decay=0.9)
    assert not same_weights(raw, ema)
    # EMA of a trajectory from the same start lies between start and end: closer to the start than the end is
    start = build()
    w0 = start.features[0][0].weight
    assert (ema.features[0][0].weight - w0).norm() < (raw.features[0][0].weight - w0).norm()


def test_adamw_differs_from_adam_with_weight_decay(problem):
    a, _ = fit(problem, weight_decay=0.1)
    b, _ = fit(problem, weight_decay=0.1, optimizer="adamw")
    assert not same_weights(a, b)


@pytest.mark.parametrize("key, value, message", [
    ("label_smoothing", 1.0, "train.label_smoothing"), ("ema_decay", -0.1, "train.ema_decay"),
    ("stretch", -1, "train.stretch"), ("optimizer", "sgd", "train.optimizer"),
    ("min_steps", -1, "train.min_steps"), ("min_steps", 2.5, "train.min_steps")])
def test_bad_train_options_are_named(problem, key, value, message):
    with pytest.raises(ParamsError, match=f"params.yaml: {message} must be"):
        fit(problem, epochs=1, **{key: value})


@pytest.mark.parametrize("key, value", [("until", 1.5), ("concat_p", -0.2)])
def test_bad_mixup_options_are_named(problem, key, value):
    with pytest.raises(ParamsError, match=f"params.yaml: mixup.{key} must be between 0 and 1"):
        fit(problem, epochs=1, mixup={key: value})


def test_new_keys_are_schema_fields_off_by_default_but_label_smoothing():
    t, m, mix = Train(), Model(), Mixup()
    assert (t.optimizer, t.stretch, t.ema_decay) == ("adam", 0.0, 0.0)
    assert t.label_smoothing == 0.1  # on by default: it raised every figure on real recordings and the embedded data
    assert t.min_steps == 512  # just under the embedded set's 16 epochs x 33 batches: a floor only small sets reach
    assert (m.input_norm, m.head) == ("global", "attention")  # attention raised every figure on both datasets
    assert (mix.until, mix.concat_p) == (1.0, 0.0)


def test_concat_mixing_trains_and_changes_the_result(problem):
    plain, _ = fit(problem)
    cat, hist = fit(problem, mixup={"concat_p": 0.8})
    assert not same_weights(plain, cat) and np.isfinite(hist[-1]["train_loss"])


def test_min_steps_adds_epochs_only_to_small_training_sets(problem):
    store, targets = problem
    data = train.CropDataset(store, np.arange(len(store)), targets, LENGTH, seed=0)  # 54 clips / 4 = 13 steps
    def mk(**kw):
        return train.TrainLoop(build(), data, train=Train(**{**TRAIN_CFG, "epochs": 2, **kw}), mixup=Mixup(),
                               augment=Augment(**AUGMENT), seed=0, device=CPU)

    assert mk().epochs == 2 and mk(min_steps=20).epochs == 2  # TRAIN_CFG sets min_steps 0
    assert mk(min_steps=100).epochs == 8  # ceil(100 / 13)
    assert mk(min_steps=Train().min_steps).epochs == 40  # the default floor: ceil(512 / 13)
    _, hist = fit(problem, epochs=1, min_steps=30)
    assert len(hist) == 3

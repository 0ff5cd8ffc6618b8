"""Tests for fat/training/noisy.py: L-soft, sharpening, the ramp, batch composition, the noisy head
(trained, never predicted), MixMatch, and the params rules."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import fat.params as P
from fat.params import Augment, Mixup, Train
from fat.training import loop, models, noisy
from test_train import AUGMENT, N_CLASSES, TINY, TRAIN_CFG, band_problem, new_model


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    return band_problem(tmp_path_factory.mktemp("noisy") / "feat", n_clips=60)


def crops(store, rows, y, seed):
    return loop.CropDataset(store, rows, y, 16, seed)


# --------------------------------------------------------------------------- the computations
def test_lsoft_matches_a_hand_computation_and_its_target_is_detached():
    logit = torch.tensor([[math.log(3.0), 0.0]], requires_grad=True)  # p = 0.75, 0.5
    y = torch.tensor([[0.0, 1.0]])
    loss = noisy.lsoft_loss(logit, y, beta=0.7)
    t0, t1 = 0.3 * 0.75, 0.7 + 0.3 * 0.5  # beta * y + (1 - beta) * p
    hand = [-(t0 * math.log(0.75) + (1 - t0) * math.log(0.25)), -(t1 * math.log(0.5) + (1 - t1) * math.log(0.5))]
    assert loss.detach().numpy()[0] == pytest.approx(hand, rel=1e-6)
    loss.sum().backward()
    # the gradient of BCE-with-logits is p - target, the target held fixed (no gradient through p)
    assert logit.grad.numpy()[0] == pytest.approx([0.75 - t0, 0.5 - t1], rel=1e-6)
    plain = torch.nn.functional.binary_cross_entropy_with_logits(logit, y, reduction="none")
    assert noisy.lsoft_loss(logit, y, beta=1.0).detach().numpy() == pytest.approx(plain.detach().numpy())


def test_sharpen_per_class():
    q = torch.tensor([[0.8, 0.5, 0.1]])
    s = noisy.sharpen(q, 0.5)
    assert s.numpy()[0] == pytest.approx([0.64 / 0.68, 0.5, 0.01 / 0.82], rel=1e-6)
    assert torch.allclose(noisy.sharpen(q, 1.0), q)
    with pytest.raises(ValueError, match="mixmatch_temperature"):
        noisy.sharpen(q, 0)


def test_ramp_rises_linearly_then_holds():
    assert [noisy.ramp(s, 100, 0.4) for s in (0, 20, 40, 90)] == [0.0, 0.5, 1.0, 1.0]
    assert noisy.ramp(0, 100, 0.0) == 1.0


# --------------------------------------------------------------------------- batch composition
def test_the_drawn_batch_shares_are_the_params(problem):
    store, y = problem
    rows = np.arange(len(y))
    parts = noisy.Parts(raw=crops(store, rows, y, 1), relabelled=crops(store, rows[:20], y[:20], 2))
    train = Train(batch_size=32, relabelled_share=0.42, noisy_share=0.05)
    step = noisy.NoisyStep(new_model(), parts, train=train, seed=4, device="cpu")
    assert (step.n_rel, step.curated_batch) == (13, 32 - 13 - 2)  # round(32 * 0.42), round(32 * 0.05)
    step.start_epoch(0)
    n_raw = []
    for _ in range(200):
        x, yy, src = step.compose(torch.zeros(step.curated_batch, 12, 16), torch.zeros(step.curated_batch, N_CLASSES))
        assert len(x) == len(yy) == len(src)
        assert int((src == noisy.RELABELLED).sum()) == 13
        n_raw.append(int((src == noisy.RAW).sum()))
    assert set(n_raw) == {1, 2}  # 32 * 0.05 = 1.6 rounded stochastically per step
    assert np.mean(n_raw) == pytest.approx(1.6, abs=0.1)
    # without replacement within a pass: the first 20 relabelled rows drawn are the 20 clips once each
    step.start_epoch(1)
    first = np.concatenate([step.draws["relabelled"].take(13), step.draws["relabelled"].take(7)])
    assert sorted(first) == list(range(20))
    # the same epoch gives the same draws (seeded), another epoch another order
    step.start_epoch(1)
    a = step.draws["relabelled"].take(20)
    step.start_epoch(2)
    assert not np.array_equal(a, step.draws["relabelled"].take(20))
    step.start_epoch(1)
    assert np.array_equal(a, step.draws["relabelled"].take(20))


def test_no_curated_room_is_refused(problem):
    store, y = problem
    rows = np.arange(len(y))
    parts = noisy.Parts(raw=crops(store, rows, y, 1), relabelled=crops(store, rows, y, 2))
    with pytest.raises(ValueError, match="leave no curated clip"):
        noisy.NoisyStep(new_model(), parts, train=Train(batch_size=4, relabelled_share=0.5, noisy_share=0.4),
                        seed=0, device="cpu")


# --------------------------------------------------------------------------- training with the parts
def _fit(problem, train, parts, seed=5):
    store, y = problem
    data = crops(store, np.arange(30), y[:30], 3)
    model = new_model(0)
    step_holder = {}
    orig = noisy.NoisyStep.__init__

    def keep(self, *a, **k):  # the step object, to look at its noisy head afterwards
        orig(self, *a, **k)
        step_holder["step"] = self

    noisy.NoisyStep.__init__ = keep
    try:
        hist = loop.fit(model, data, train=Train(**{**TRAIN_CFG, "min_steps": 150, **train}), mixup=Mixup(),
                        augment=Augment(**AUGMENT), seed=seed, device="cpu", extra=parts)
    finally:
        noisy.NoisyStep.__init__ = orig
    return model, step_holder.get("step"), hist


def test_the_noisy_head_trains_on_the_noisy_labels_and_is_never_the_prediction(problem, tmp_path):
    store, y = problem
    rows = np.arange(30, 60)
    wrong = np.roll(y[30:60], 1, axis=1)  # the noisy labels: every clip labelled as the next class
    parts = noisy.Parts(raw=crops(store, rows, wrong, 1))
    model, step, _ = _fit(problem, {"batch_size": 8, "noisy_share": 0.5, "noisy_head": True}, parts)
    assert step.head is not None and step.curated_batch == 4
    model.eval()
    step.head.eval()
    x, _ = crops(store, rows, y[30:60], 9).batch(0, np.arange(30))
    with torch.no_grad():
        cur, nz = noisy.curated_heads(model, step.head, x)
        assert torch.allclose(cur, model(x), atol=1e-5)  # the curated logits are the model's own
    truth = y[30:60].argmax(1)
    assert (cur.argmax(1).numpy() == truth).mean() > 0.8  # the curated head learned the true classes …
    assert (nz.argmax(1).numpy() == (truth + 1) % N_CLASSES).mean() > 0.8  # … the noisy head the noisy ones
    # the saved model is the curated one: no noisy-head weights, and it loads as any model
    models.save(tmp_path / "m.pt", model, P.Model(**TINY), ["a", "b", "c"], 12)
    loaded, _ = models.load(tmp_path / "m.pt")
    assert set(loaded.state_dict()) == set(new_model().state_dict())
    with torch.no_grad():
        assert torch.allclose(loaded.eval()(x), cur, atol=1e-5)


def test_mixmatch_trains_deterministically_and_guesses_the_unlabelled_clips(problem):
    store, y = problem
    rows = np.arange(30, 60)
    parts = noisy.Parts(views=[crops(store, rows, np.zeros_like(y[30:60]), 100 + k) for k in range(2)])
    train = {"batch_size": 8, "mixmatch_weight": 2.0, "mixmatch_k": 2, "mixmatch_rampup": 0.5}
    a, step, hist = _fit(problem, train, parts)
    b, _, hist_b = _fit(problem, train, parts)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert [h["train_loss"] for h in hist] == [h["train_loss"] for h in hist_b]
    assert step.drawn["unlabelled"] == step.step * 4  # ceil(8 / 2) unlabelled clips a step
    # the model still learns the classes: the unlabelled clips (never labelled) are classified well
    # above chance (1/3); a broken labelled loss or mixing would leave it at one class
    a.eval()
    x, _ = crops(store, rows, y[30:60], 9).batch(0, np.arange(30))
    with torch.no_grad():
        assert (a(x).argmax(1).numpy() == y[30:60].argmax(1)).mean() > 0.5


def test_the_shipped_retrain_section_is_l_soft_on_a_quarter_of_raw_noisy_clips_and_off_elsewhere():
    p = P.Params()
    t = p.train_for("retrain")  # the shipped retrain section: its epochs and the default noisy-set method
    assert noisy.active(t)
    assert t == dataclasses.replace(p.train, epochs=10, noisy_share=0.25, noisy_loss="lsoft")
    for family in ("baseline", "pretrain", "finetune"):
        assert not noisy.active(p.train_for(family))


def test_the_plain_path_is_untouched_with_the_methods_off():
    p = P.Params.build({"retrain": {"epochs": 10, "noisy_share": 0.0, "noisy_loss": "bce"}})
    t = p.train_for("retrain")  # with the methods off, retrain differs from train in its epochs only
    assert not noisy.active(t) and t == dataclasses.replace(p.train, epochs=10)


# --------------------------------------------------------------------------- params rules
@pytest.mark.parametrize("mapping, message", [
    ({"finetune": {"noisy_share": 0.2}}, r"finetune: train\.noisy_share is a setting of the \['retrain'\] family"),
    ({"train": {"relabelled_share": 0.4}}, r"baseline: train\.relabelled_share is a setting of the"),
    ({"retrain": {"noisy_head": True}}, r"noisy_head needs noisy_share > 0"),
    ({"retrain": {"noisy_loss": "lsoft"}}, r"noisy_loss lsoft needs noisy_share or relabelled_share > 0"),
    ({"retrain": {"noisy_share": 0.5, "relabelled_share": 0.5}}, r"must be below 1"),
    ({"retrain": {"mixmatch_weight": 1.0, "noisy_share": 0.1, "noisy_loss": "lsoft"}}, r"needs noisy_loss bce"),
    ({"retrain": {"noisy_loss": "focal"}}, r"retrain\.noisy_loss must be one of \['bce', 'lsoft'\]"),
])
def test_noisy_params_rules(mapping, message):
    with pytest.raises(P.ParamsError, match=message):
        P.Params.build(mapping)


def test_noisy_params_under_retrain_are_accepted():
    p = P.Params.build({"retrain": {"relabelled_share": 0.42, "noisy_share": 0.01, "noisy_loss": "lsoft"}})
    t = p.train_for("retrain")
    assert (t.relabelled_share, t.noisy_share, t.noisy_loss, t.lsoft_beta) == (0.42, 0.01, "lsoft", 0.7)
    assert t.noisy_keys() == ["noisy_share", "noisy_loss", "relabelled_share"]
    assert not P.Params().train_for("baseline").noisy_keys()

"""Tests for fat/training/pseudo.py: predicted labels, sharpening, clip selection, the report, and
`label_fold` end to end on a tiny synthetic layout with a model whose outputs are fixed."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fat.data import synth
from fat.data import tables as data
from fat.features import extract
from fat.layout import Layout
from fat.params import Audio, Features, Model, Pseudo, Synth
from fat.training import models, pseudo

CLASSES = ["a", "b", "c", "d"]

# Hand-built scores of 5 noisy clips over 4 classes (no ties inside a row).
#              a     b     c     d        top conf  predicted (thr .5, top_k 2)
PROBS = np.array([
    [0.95, 0.70, 0.10, 0.05],   # r0   .95       {a, b}
    [0.20, 0.65, 0.60, 0.10],   # r1   .65       {b, c}
    [0.40, 0.30, 0.55, 0.20],   # r2   .55       {c}
    [0.10, 0.20, 0.30, 0.85],   # r3   .85       {d}
    [0.80, 0.10, 0.75, 0.70],   # r4   .80       {a, c}   (d >= thr but third: cut by top_k)
])
NOISY = np.array([
    [0, 1, 0, 0],               # r0 agrees on b only
    [0, 0, 0, 1],               # r1 no agreement
    [0, 0, 1, 0],               # r2 agrees on c
    [1, 0, 0, 0],               # r3 no agreement
    [1, 0, 0, 1],               # r4 agrees on a (d is a noisy label but not a predicted one)
], dtype=np.float32)
PRED = np.array([
    [1, 1, 0, 0],
    [0, 1, 1, 0],
    [0, 0, 1, 0],
    [0, 0, 0, 1],
    [1, 0, 1, 0],
], dtype=np.float32)


def cfg(**over):
    base = {"label_threshold": 0.5, "top_k": 2, "min_confidence": 0.6, "agree": True, "targets": "hard",
            "temperature": 0.5, "max_clips": 0}
    base.update(over)
    return Pseudo(**base)


# ----------------------------------------------------------------------------- predicted_labels
def test_predicted_labels_hand_matrix():
    out = pseudo.predicted_labels(PROBS, 0.5, 2)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, PRED)


def test_top_class_always_included_even_below_threshold():
    p = np.array([[0.30, 0.20, 0.10], [0.05, 0.40, 0.01]])
    np.testing.assert_array_equal(pseudo.predicted_labels(p, 0.5, 3), [[1, 0, 0], [0, 1, 0]])
    # even an impossible threshold leaves the top class
    np.testing.assert_array_equal(pseudo.predicted_labels(p, 2.0, 3), [[1, 0, 0], [0, 1, 0]])


@pytest.mark.parametrize("top_k, expected", [
    (1, [1, 0, 0, 0]), (2, [1, 1, 0, 0]), (3, [1, 1, 1, 0]), (4, [1, 1, 1, 1]), (10, [1, 1, 1, 1]),
])
def test_at_most_top_k_labels(top_k, expected):
    p = np.array([[0.6, 0.9, 0.7, 0.8]])  # order: b, d, c, a
    want = np.array([[expected[3], expected[0], expected[2], expected[1]]])
    np.testing.assert_array_equal(pseudo.predicted_labels(p, 0.5, top_k), want)


def test_threshold_is_inclusive_and_excludes_lower_scores():
    p = np.array([[0.9, 0.5, 0.4999, 0.1]])
    np.testing.assert_array_equal(pseudo.predicted_labels(p, 0.5, 4), [[1, 1, 0, 0]])
    np.testing.assert_array_equal(pseudo.predicted_labels(p, 0.45, 4), [[1, 1, 1, 0]])


def test_predicted_labels_properties_on_random_scores():
    rng = np.random.default_rng(3)
    p = rng.uniform(size=(200, 7))
    thr, k = 0.55, 3
    out = pseudo.predicted_labels(p, thr, k)
    assert set(np.unique(out)) <= {0.0, 1.0}
    n = out.sum(axis=1)
    assert (n >= 1).all() and (n <= k).all()
    assert (out[np.arange(len(p)), p.argmax(axis=1)] == 1).all()
    ranks = np.argsort(np.argsort(-p, axis=1), axis=1)
    expected = (ranks == 0) | ((p >= thr) & (ranks < k))
    np.testing.assert_array_equal(out.astype(bool), expected)


@pytest.mark.parametrize("top_k", [0, -1])
def test_top_k_below_one_raises(top_k):
    with pytest.raises(ValueError, match="top_k"):
        pseudo.predicted_labels(PROBS, 0.5, top_k)


# ----------------------------------------------------------------------------- sharpen
def test_sharpen_temperature_one_is_identity_within_clipping():
    p = np.array([[0.0, 1e-9, 0.2, 0.5, 0.83, 1.0]])
    out = pseudo.sharpen(p, 1.0)
    np.testing.assert_allclose(out, np.clip(p, 1e-6, 1 - 1e-6), rtol=1e-9, atol=1e-12)


def test_sharpen_matches_closed_form():
    p = np.linspace(0.01, 0.99, 25)
    # T = 0.5: sigmoid(2 logit p) = p^2 / (p^2 + (1-p)^2)
    np.testing.assert_allclose(pseudo.sharpen(p, 0.5), p**2 / (p**2 + (1 - p) ** 2), rtol=1e-10)
    # T = 2: sigmoid(logit(p) / 2) = sqrt(p) / (sqrt(p) + sqrt(1-p))
    np.testing.assert_allclose(pseudo.sharpen(p, 2.0), np.sqrt(p) / (np.sqrt(p) + np.sqrt(1 - p)), rtol=1e-10)


def test_sharpen_low_temperature_pushes_away_from_half():
    p = np.array([0.05, 0.3, 0.45, 0.5, 0.55, 0.7, 0.95])
    out = pseudo.sharpen(p, 0.4)
    above, below = p > 0.5, p < 0.5
    assert (out[above] > p[above]).all()
    assert (out[below] < p[below]).all()
    assert out[p == 0.5] == pytest.approx(0.5)
    assert (np.abs(out - 0.5) >= np.abs(p - 0.5)).all()
    # and T > 1 pulls towards 0.5
    soft = pseudo.sharpen(p, 3.0)
    assert (np.abs(soft - 0.5)[p != 0.5] < np.abs(p - 0.5)[p != 0.5]).all()


@pytest.mark.parametrize("t", [0.25, 0.5, 1.0, 2.0])
def test_sharpen_is_monotone(t):
    p = np.sort(np.random.default_rng(1).uniform(0.001, 0.999, 100))
    out = pseudo.sharpen(p, t)
    assert (np.diff(out) > 0).all()
    assert ((out > 0) & (out < 1)).all()


@pytest.mark.parametrize("t", [0.0, -0.5])
def test_sharpen_non_positive_temperature_raises(t):
    with pytest.raises(ValueError, match="temperature"):
        pseudo.sharpen(PROBS, t)


# ----------------------------------------------------------------------------- select
def test_min_confidence_filters_without_agreement():
    idx, targets = pseudo.select(PROBS, NOISY, cfg(agree=False, min_confidence=0.6))
    np.testing.assert_array_equal(idx, [0, 1, 3, 4])  # r2 (top .55) dropped
    np.testing.assert_array_equal(targets, PRED[[0, 1, 3, 4]])
    idx, _ = pseudo.select(PROBS, NOISY, cfg(agree=False, min_confidence=0.81))
    np.testing.assert_array_equal(idx, [0, 3])


def test_min_confidence_is_inclusive():
    idx, _ = pseudo.select(PROBS, NOISY, cfg(agree=False, min_confidence=0.65))
    np.testing.assert_array_equal(idx, [0, 1, 3, 4])


def test_min_confidence_zero_keeps_everything():
    idx, targets = pseudo.select(PROBS, NOISY, cfg(agree=False, min_confidence=0.0))
    np.testing.assert_array_equal(idx, np.arange(5))
    np.testing.assert_array_equal(targets, PRED)


def test_agree_keeps_only_agreeing_clips_with_agreeing_labels():
    idx, targets = pseudo.select(PROBS, NOISY, cfg(agree=True, min_confidence=0.0))
    np.testing.assert_array_equal(idx, [0, 2, 4])
    # hard targets: predicted AND noisy only (r0: b, not the top class a; r4: a, not c nor the cut d)
    np.testing.assert_array_equal(targets, [[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0]])
    assert targets.dtype == np.float32


def test_agree_and_min_confidence_combine():
    idx, targets = pseudo.select(PROBS, NOISY, cfg(agree=True, min_confidence=0.6))
    np.testing.assert_array_equal(idx, [0, 4])
    np.testing.assert_array_equal(targets, [[0, 1, 0, 0], [1, 0, 0, 0]])


def test_max_clips_keeps_most_confident_in_ascending_order():
    rev = PROBS[::-1].copy()  # confidences now .80 .85 .55 .65 .95 at rows 0..4
    idx, targets = pseudo.select(rev, NOISY[::-1], cfg(agree=False, min_confidence=0.0, max_clips=3))
    np.testing.assert_array_equal(idx, [0, 1, 4])  # .95 (row 4), .85 (row 1), .80 (row 0)
    np.testing.assert_array_equal(targets, PRED[::-1][[0, 1, 4]])
    idx, _ = pseudo.select(rev, NOISY[::-1], cfg(agree=False, min_confidence=0.0, max_clips=1))
    np.testing.assert_array_equal(idx, [4])


def test_max_clips_applies_after_the_filters():
    # r3 (.85) is the second most confident clip overall but disagrees with its noisy labels
    idx, _ = pseudo.select(PROBS, NOISY, cfg(agree=True, min_confidence=0.0, max_clips=2))
    np.testing.assert_array_equal(idx, [0, 4])


@pytest.mark.parametrize("cap", [0, 5, 100])
def test_max_clips_zero_or_large_is_no_cap(cap):
    c = cfg(agree=False, min_confidence=0.0, max_clips=cap)
    idx, _ = pseudo.select(PROBS, NOISY, c)
    np.testing.assert_array_equal(idx, np.arange(5))


def test_soft_targets_are_sharpened_probabilities_of_kept_rows():
    idx, targets = pseudo.select(PROBS, NOISY, cfg(agree=True, min_confidence=0.0, targets="soft", temperature=0.5))
    np.testing.assert_array_equal(idx, [0, 2, 4])  # same selection as hard
    p = PROBS[[0, 2, 4]]
    np.testing.assert_allclose(targets, p**2 / (p**2 + (1 - p) ** 2), rtol=1e-6)
    assert targets.dtype == np.float32
    # every class keeps its soft value, including the non-agreeing ones
    assert (targets > 0).all()


def test_soft_targets_temperature_one_are_the_probabilities():
    idx, targets = pseudo.select(PROBS, NOISY, cfg(agree=False, min_confidence=0.6, targets="soft", temperature=1.0))
    np.testing.assert_allclose(targets, PROBS[idx], rtol=1e-6)


def test_bad_targets_value_raises():
    with pytest.raises(ValueError, match="targets"):
        pseudo.select(PROBS, NOISY, cfg(targets="fuzzy"))


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        pseudo.select(PROBS, NOISY[:, :3], cfg())
    with pytest.raises(ValueError, match="shape"):
        pseudo.select(PROBS, NOISY[:4], cfg())


def test_nothing_kept_gives_empty_arrays():
    idx, targets = pseudo.select(PROBS, NOISY, cfg(min_confidence=0.99))
    assert len(idx) == 0
    assert targets.shape == (0, 4)


# ----------------------------------------------------------------------------- report
def test_report_counts_with_agreement():
    idx, targets = pseudo.select(PROBS, NOISY, cfg(agree=True, min_confidence=0.6))
    rep = pseudo.report(idx, targets, PROBS, NOISY, CLASSES)
    assert rep["noisy_clips"] == 5
    assert rep["kept"] == 2
    assert rep["kept_share"] == pytest.approx(0.4)
    # top-1 classes a, b, c, d, a: noisy label present for r2 (c) and r4 (a)
    assert rep["top1_agrees_with_noisy_label"] == pytest.approx(0.4)
    assert rep["kept_top1_agrees"] == pytest.approx(0.5)  # r0 no, r4 yes
    assert rep["labels_per_kept_clip"] == pytest.approx(1.0)
    assert rep["per_class"] == {"a": 1, "b": 1, "c": 0, "d": 0}


def test_report_counts_without_agreement():
    idx, targets = pseudo.select(PROBS, NOISY, cfg(agree=False, min_confidence=0.6))
    rep = pseudo.report(idx, targets, PROBS, NOISY, CLASSES)
    assert rep["kept"] == 4
    assert rep["kept_share"] == pytest.approx(0.8)
    assert rep["per_class"] == {"a": 2, "b": 2, "c": 2, "d": 1}  # r0 ab, r1 bc, r3 d, r4 ac
    assert rep["labels_per_kept_clip"] == pytest.approx(1.75)
    assert rep["kept_top1_agrees"] == pytest.approx(0.25)  # rows 0,1,3,4: only r4


def test_report_soft_targets_count_classes_at_or_above_half():
    idx, targets = pseudo.select(PROBS, NOISY, cfg(agree=False, min_confidence=0.6, targets="soft", temperature=1.0))
    rep = pseudo.report(idx, targets, PROBS, NOISY, CLASSES)
    kept = PROBS[idx]
    assert rep["per_class"] == {c: int(n) for c, n in zip(CLASSES, (kept >= 0.5).sum(axis=0))}
    assert rep["per_class"] == {"a": 2, "b": 2, "c": 2, "d": 2}


def test_report_with_nothing_kept():
    idx, targets = pseudo.select(PROBS, NOISY, cfg(min_confidence=0.99))
    rep = pseudo.report(idx, targets, PROBS, NOISY, CLASSES)
    assert rep["kept"] == 0 and rep["kept_share"] == 0.0
    assert rep["kept_top1_agrees"] is None
    assert rep["labels_per_kept_clip"] == 0.0
    assert rep["per_class"] == dict.fromkeys(CLASSES, 0)


def test_per_class_table():
    rep = {"per_class": {"a": 3, "b": 0, "c": 1}}
    df = pseudo.per_class_table(rep)
    assert list(df.columns) == ["class", "kept"]
    assert df["class"].tolist() == ["a", "b", "c"] and df["kept"].tolist() == [3, 0, 1]


# ----------------------------------------------------------------------------- label_fold end to end
SYNTH_CFG = {
    "sample_rate": 16000,
    "n_classes": 4,
    "curated": {"n_clips": 12, "duration": [0.3, 1.5], "label_counts_p": [0.75, 0.2, 0.05]},
    "noisy": {"n_clips": 12, "duration": [0.3, 1.5], "long_share": 0.3, "label_counts_p": [0.6, 0.3, 0.1],
              "class_skew": 0.0, "snr_db": [5.0, 15.0], "label_noise": 0.3},
    "test": {"n_clips": 6, "duration": [0.3, 1.5], "label_counts_p": [0.75, 0.2, 0.05]},
}
FEAT_CFG = {"n_fft": 512, "hop_length": 256, "n_mels": 16, "fmin": 20.0, "fmax": None}
MODEL_CFG = {"channels": ["mel"], "base_channels": 4, "n_blocks": 2, "dropout": 0.0, "head": "meanmax"}
# fixed per-class outputs of each fold's model (the last layer's weights are zeroed; the meanmax head has no other)
FOLD_PROBS = {0: [0.9, 0.7, 0.2, 0.1], 1: [0.1, 0.2, 0.95, 0.3]}


def fixed_model(probs, n_mels):
    """A model whose every output is logit(probs) whatever the input."""
    torch.manual_seed(0)
    m = models.build(Model(**MODEL_CFG), n_classes=len(probs), n_mels=n_mels)
    p = torch.tensor(probs, dtype=torch.float32)
    with torch.no_grad():
        m.head[4].weight.zero_()
        m.head[4].bias.copy_(torch.log(p / (1 - p)))
    return m.eval()


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("pseudo_project")
    layout = Layout(root=root)
    synth.generate(layout.raw, Synth(**SYNTH_CFG), seed=5, n_jobs=1)
    classes = data.vocabulary(layout.raw)
    kw = Features(**FEAT_CFG).log_mel_kwargs(Audio(sample_rate=16000))
    noisy = data.split_table(layout.raw, "noisy")
    d = data.audio_dir(layout.raw, "noisy")
    extract.build_store([d / f for f in noisy["fname"]], noisy["fname"].tolist(), layout.features("noisy"), kw,
                         dtype="float32", n_jobs=1)
    cur = data.split_table(layout.raw, "curated")
    pd.DataFrame({"fname": cur["fname"], "fold": np.arange(len(cur)) % 2}).to_csv(layout.folds, index=False)
    return layout, classes


def write_fold_model(layout, fold, classes, probs):
    models.save(layout.member("finetune", fold) / "model.pt", fixed_model(probs, FEAT_CFG["n_mels"]),
                Model(**MODEL_CFG),
                classes, FEAT_CFG["n_mels"], extra={"crop_frames": 16})


def corrupt_fold_model(layout, fold):
    path = layout.member("finetune", fold) / "model.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a checkpoint")


def expected_from_noisy(layout, classes, fold_probs, c):
    """Independent statement of the selection for a model with the same output on every clip."""
    noisy = data.split_table(layout.raw, "noisy")
    p = np.asarray(fold_probs)
    order = np.argsort(-p)
    predicted = {classes[i] for r, i in enumerate(order) if r == 0 or (p[i] >= c.label_threshold and r < c.top_k)}
    rows, fnames = [], []
    for fname, labs in zip(noisy["fname"], noisy["labels"]):
        agree = predicted & set(data.split_labels(labs))
        if agree:
            fnames.append(fname)
            rows.append([1.0 if k in agree else 0.0 for k in classes])
    return noisy, fnames, np.array(rows)


def test_label_fold_writes_the_selected_noisy_clips(project):
    layout, classes = project
    write_fold_model(layout, 0, classes, FOLD_PROBS[0])
    corrupt_fold_model(layout, 1)  # fold 1's model must never be read when labelling fold 0
    c = cfg(agree=True, min_confidence=0.6, targets="hard")
    rep = pseudo.label_fold(0, c, layout)

    noisy, fnames, rows = expected_from_noisy(layout, classes, FOLD_PROBS[0], c)
    assert 0 < len(fnames) < len(noisy), "fixture should keep some noisy clips and drop others"
    out = pd.read_csv(layout.pseudo(0) / "labels.csv", dtype={"fname": str})
    assert list(out.columns) == ["fname"] + classes
    assert out["fname"].tolist() == fnames  # only kept clips, in train_noisy.csv order
    assert set(out["fname"]) <= set(noisy["fname"])
    np.testing.assert_array_equal(out[classes].to_numpy(), rows)

    per_class = pd.read_csv(layout.pseudo(0) / "per_class.csv")
    assert per_class["class"].tolist() == classes
    assert per_class["kept"].tolist() == rows.sum(axis=0).astype(int).tolist()

    assert rep["fold"] == 0
    assert rep["noisy_clips"] == len(noisy)
    assert rep["kept"] == len(fnames)

    scores = pd.read_csv(layout.pseudo_scores(0), dtype={"fname": str})  # every noisy clip, for label_issues
    assert scores["fname"].tolist() == noisy["fname"].tolist()
    np.testing.assert_allclose(scores[classes].to_numpy(), np.tile(FOLD_PROBS[0], (len(noisy), 1)), atol=1e-5)


def test_label_fold_uses_only_its_own_fold_model(project):
    layout, classes = project
    write_fold_model(layout, 1, classes, FOLD_PROBS[1])
    corrupt_fold_model(layout, 0)
    c = cfg(agree=False, min_confidence=0.6, targets="soft", temperature=0.5)
    rep = pseudo.label_fold(1, c, layout)
    noisy = data.split_table(layout.raw, "noisy")
    out = pd.read_csv(layout.pseudo(1) / "labels.csv", dtype={"fname": str})
    # every clip's top probability (.95 from the fold-1 model) clears min_confidence
    assert out["fname"].tolist() == noisy["fname"].tolist()
    p = np.asarray(FOLD_PROBS[1])
    want = p**2 / (p**2 + (1 - p) ** 2)
    np.testing.assert_allclose(out[classes].to_numpy(), np.tile(want, (len(noisy), 1)), rtol=1e-4)
    assert rep["kept"] == len(noisy)
    assert rep["per_class"] == {k: (len(noisy) if v >= 0.5 else 0) for k, v in zip(classes, want)}


# ----------------------------------------------------------------------------- staged selection (select: lwlrap)
def test_rank_agreement_is_per_clip_lwlrap_of_one():
    from fat.metrics import lwlrap

    conf, agrees = pseudo.rank_agreement(PROBS, NOISY)
    for i in range(len(PROBS)):  # agrees exactly when the clip's own lwlrap against its noisy labels is 1
        assert agrees[i] == (lwlrap(NOISY[i:i + 1], PROBS[i:i + 1]) == 1.0), i
    np.testing.assert_array_equal(agrees, [False, False, True, False, False])
    assert conf[2] == pytest.approx(0.55)
    # r4 = {a, d}: a .80 and d .70, but c .75 sits between them -> not 1; with c lowered it agrees
    p = PROBS.copy()
    p[4, 2] = 0.6
    assert pseudo.rank_agreement(p, NOISY)[1][4] and pseudo.rank_agreement(p, NOISY)[0][4] == pytest.approx(0.70)


def test_lwlrap_selection_keeps_the_agreeing_clips_with_their_noisy_labels():
    p = PROBS.copy()
    p[4, 2] = 0.6
    idx, targets = pseudo.select(p, NOISY, cfg(select="lwlrap", min_confidence=0.99))  # min_confidence unused
    np.testing.assert_array_equal(idx, [2, 4])
    np.testing.assert_array_equal(targets, NOISY[[2, 4]])


def test_per_class_cap_keeps_the_most_confident_clips_of_each_class():
    rng = np.random.default_rng(5)
    n = 40
    labels = np.zeros((n, 4), dtype=np.float32)
    labels[np.arange(n), rng.integers(0, 4, n)] = 1
    labels[:6, 3] = 1  # a few two-label clips
    probs = np.where(labels > 0, rng.uniform(0.6, 0.99, labels.shape), rng.uniform(0.0, 0.5, labels.shape))
    for cap in (1, 3, 5):
        idx, targets = pseudo.select(probs, labels, cfg(select="lwlrap", per_class_cap=cap))
        assert (targets.sum(axis=0) <= cap).all()
        conf = pseudo.rank_agreement(probs, labels)[0]
        for c in range(4):  # no skipped single-label clip of class c beats a kept one while c had room
            kept_c = [i for i in idx if labels[i, c]]
            left = [i for i in range(n) if labels[i, c] and labels[i].sum() == 1 and i not in idx]
            if len(kept_c) < cap:
                assert not left
            elif left:
                assert max(conf[left]) <= min(conf[kept_c])  # every kept one came first
    full, _ = pseudo.select(probs, labels, cfg(select="lwlrap"))
    assert len(full) == n  # every clip agrees: the cap is what cut them
    # the cap also applies to the confidence mode's targets
    idx, targets = pseudo.select(PROBS, NOISY, cfg(min_confidence=0.0, per_class_cap=1))
    assert (targets.sum(axis=0) <= 1).all()


def test_cap_per_class_hand_case():
    targets = np.array([[1, 0], [1, 1], [0, 1], [1, 0]], dtype=np.float32)
    np.testing.assert_array_equal(pseudo.cap_per_class(np.array([1, 0, 2, 3]), targets, 1), [1])
    np.testing.assert_array_equal(pseudo.cap_per_class(np.array([0, 2, 1, 3]), targets, 2), [0, 2, 1])

"""Tests for fat/metrics.py: lwlrap, its per-class decomposition and input validation."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from sklearn.metrics import label_ranking_average_precision_score

from fat.metrics import lwlrap, lwlrap_per_class, pair_precisions


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def reference_pair_precisions(truth, scores) -> dict[tuple[int, int], Fraction]:
    """Straightforward definition, one (clip, positive class) pair at a time, exact arithmetic.

    precision = #positive classes scored >= s / #classes scored >= s  (ties count against us).
    """
    truth = np.asarray(truth)
    scores = np.asarray(scores, dtype=np.float64)
    out = {}
    for i in range(truth.shape[0]):
        for c in range(truth.shape[1]):
            if truth[i, c] != 1:
                continue
            s = scores[i, c]
            n_at_or_above = sum(1 for k in range(truth.shape[1]) if scores[i, k] >= s)
            n_pos_at_or_above = sum(
                1 for k in range(truth.shape[1]) if truth[i, k] == 1 and scores[i, k] >= s
            )
            out[(i, c)] = Fraction(n_pos_at_or_above, n_at_or_above)
    return out


def reference_lwlrap(truth, scores) -> float:
    pairs = reference_pair_precisions(truth, scores)
    return float(sum(pairs.values()) / len(pairs))


def reference_per_class(truth, scores) -> np.ndarray:
    pairs = reference_pair_precisions(truth, scores)
    n_classes = np.asarray(truth).shape[1]
    out = np.full(n_classes, np.nan)
    for c in range(n_classes):
        vals = [p for (i, k), p in pairs.items() if k == c]
        if vals:
            out[c] = float(sum(vals) / len(vals))
    return out


def random_case(seed: int, n: int = 60, n_classes: int = 9, quantise: bool = False):
    """Random multi-label truth (including rows with no positives and rows with several)."""
    rng = np.random.default_rng(seed)
    truth = (rng.random((n, n_classes)) < 0.2).astype(int)
    truth[:3] = 0  # guaranteed empty rows, which lwlrap must ignore
    truth[3, :4] = 1  # guaranteed multi-label row
    scores = rng.random((n, n_classes))
    if quantise:  # many ties within rows
        scores = np.round(scores * 4) / 4
    return truth, scores


def sklearn_lwlrap(truth, scores) -> float:
    keep = truth.sum(axis=1) > 0
    return label_ranking_average_precision_score(
        truth[keep], scores[keep], sample_weight=truth[keep].sum(axis=1)
    )


# ---------------------------------------------------------------------------------------------
# agreement with sklearn and with the reference definition
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("quantise", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_matches_sklearn_weighted_lrap(seed, quantise):
    truth, scores = random_case(seed, quantise=quantise)
    assert (truth.sum(axis=1) == 0).any()  # the case really contains ignored rows
    assert (truth.sum(axis=1) > 1).any()
    assert lwlrap(truth, scores) == pytest.approx(sklearn_lwlrap(truth, scores), abs=1e-12)


@pytest.mark.parametrize("quantise", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("seed", [10, 11, 12])
def test_matches_reference_implementation(seed, quantise):
    truth, scores = random_case(seed, n=40, n_classes=7, quantise=quantise)
    assert lwlrap(truth, scores) == pytest.approx(reference_lwlrap(truth, scores), abs=1e-12)

    prec = pair_precisions(truth, scores)
    ref = reference_pair_precisions(truth, scores)
    expected = np.zeros(truth.shape)
    for (i, c), p in ref.items():
        expected[i, c] = float(p)
    np.testing.assert_allclose(prec, expected, atol=1e-12)

    per_class, _ = lwlrap_per_class(truth, scores)
    np.testing.assert_allclose(per_class, reference_per_class(truth, scores), atol=1e-12)


def test_rows_without_positives_do_not_change_the_score():
    truth, scores = random_case(5)
    keep = truth.sum(axis=1) > 0
    assert lwlrap(truth, scores) == pytest.approx(lwlrap(truth[keep], scores[keep]), abs=1e-15)
    # whatever the empty rows' scores are
    scores2 = scores.copy()
    scores2[~keep] = np.random.default_rng(99).random(scores2[~keep].shape)
    assert lwlrap(truth, scores2) == pytest.approx(lwlrap(truth, scores), abs=1e-15)


# ---------------------------------------------------------------------------------------------
# hand-computed cases
# ---------------------------------------------------------------------------------------------
def test_single_row_three_classes_is_one_half():
    # the only positive (class 1) is ranked 2nd of 3: 1 positive among the 2 classes at or above
    truth = [[0, 1, 0]]
    scores = [[0.9, 0.5, 0.1]]
    assert lwlrap(truth, scores) == 0.5
    np.testing.assert_array_equal(pair_precisions(truth, scores), [[0.0, 0.5, 0.0]])


def test_single_row_positive_last_is_one_over_n():
    truth = [[0, 0, 0, 1]]
    scores = [[0.4, 0.3, 0.2, 0.1]]
    assert lwlrap(truth, scores) == pytest.approx(1 / 4)


def test_two_row_multilabel_hand_computed():
    # row 0: positives {0, 2}; order by score: c1 (.4), c2 (.3), c3 (.2), c0 (.1)
    #   c2: rank 2, positives at or above {c2}       -> 1/2
    #   c0: rank 4, positives at or above {c2, c0}   -> 2/4 = 1/2
    # row 1: positives {1, 2}; order: c1 (.8), c3 (.5), c0 (.2), c2 (.1)
    #   c1: rank 1                                   -> 1
    #   c2: rank 4, positives at or above {c1, c2}   -> 2/4 = 1/2
    # lwlrap = (1/2 + 1/2 + 1 + 1/2) / 4 = 5/8
    # per class: c0 = 1/2 (1 pair), c1 = 1 (1 pair), c2 = (1/2 + 1/2)/2 = 1/2 (2 pairs), c3 = NaN
    # weights: 1/4, 1/4, 2/4, 0
    truth = np.array([[1, 0, 1, 0], [0, 1, 1, 0]])
    scores = np.array([[0.1, 0.4, 0.3, 0.2], [0.2, 0.8, 0.1, 0.5]])
    assert lwlrap(truth, scores) == pytest.approx(5 / 8, abs=1e-15)
    np.testing.assert_allclose(
        pair_precisions(truth, scores), [[0.5, 0, 0.5, 0], [0, 1.0, 0.5, 0]], atol=1e-15
    )
    per_class, weights = lwlrap_per_class(truth, scores)
    np.testing.assert_allclose(per_class[:3], [0.5, 1.0, 0.5], atol=1e-15)
    assert np.isnan(per_class[3])
    np.testing.assert_allclose(weights, [0.25, 0.25, 0.5, 0.0], atol=1e-15)


def test_label_weighting_differs_from_per_clip_averaging():
    # clip 0 has 3 positives all ranked top (3 pairs of precision 1); clip 1 has one positive
    # ranked last of 4 (precision 1/4). lwlrap weights pairs: (3*1 + 1/4) / 4 = 13/16,
    # whereas plain per-clip LRAP would give (1 + 1/4) / 2 = 5/8.
    truth = np.array([[1, 1, 1, 0], [0, 0, 0, 1]])
    scores = np.array([[0.9, 0.8, 0.7, 0.1], [0.9, 0.8, 0.7, 0.1]])
    assert lwlrap(truth, scores) == pytest.approx(13 / 16, abs=1e-15)
    assert label_ranking_average_precision_score(truth, scores) == pytest.approx(5 / 8)


# ---------------------------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_perfect_ranking_gives_one(seed):
    truth, _ = random_case(seed)
    rng = np.random.default_rng(seed + 100)
    scores = truth * 2.0 + rng.random(truth.shape)  # every positive above every negative
    assert lwlrap(truth, scores) == 1.0
    per_class, weights = lwlrap_per_class(truth, scores)
    has_pos = truth.sum(axis=0) > 0
    np.testing.assert_array_equal(per_class[has_pos], 1.0)


def test_worst_ranking_is_below_random():
    truth, _ = random_case(7)
    rng = np.random.default_rng(7)
    worst = -(truth * 2.0) + rng.random(truth.shape)  # every positive below every negative
    rand = rng.random(truth.shape)
    assert lwlrap(truth, worst) < lwlrap(truth, rand) < 1.0


def test_invariant_under_strictly_increasing_transform():
    truth, scores = random_case(8)
    base = lwlrap(truth, scores)
    assert lwlrap(truth, np.log(scores + 1e-3) * 7 - 3) == pytest.approx(base, abs=1e-12)
    assert lwlrap(truth, 1 / (1 + np.exp(-10 * (scores - 0.5)))) == pytest.approx(base, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_per_class_weighted_by_weights_equals_overall(seed):
    truth, scores = random_case(seed, n=50, n_classes=12)
    truth[:, 5] = 0  # a class with no positives at all
    per_class, weights = lwlrap_per_class(truth, scores)
    assert np.isnan(per_class[5]) and weights[5] == 0
    assert weights.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(weights, truth.sum(axis=0) / truth.sum(), atol=1e-15)
    assert np.nansum(per_class * weights) == pytest.approx(lwlrap(truth, scores), abs=1e-12)


def test_classes_without_positives_get_nan_and_zero_weight():
    truth = np.array([[1, 0, 0], [1, 0, 0]])
    scores = np.array([[0.2, 0.5, 0.1], [0.9, 0.5, 0.1]])
    per_class, weights = lwlrap_per_class(truth, scores)
    assert per_class[0] == pytest.approx((0.5 + 1.0) / 2)
    assert np.isnan(per_class[1]) and np.isnan(per_class[2])
    np.testing.assert_array_equal(weights, [1.0, 0.0, 0.0])


def test_pair_precisions_zero_off_positives_and_in_unit_interval():
    truth, scores = random_case(3)
    prec = pair_precisions(truth, scores)
    assert prec.shape == truth.shape
    assert (prec[truth == 0] == 0).all()
    assert (prec[truth == 1] > 0).all() and (prec[truth == 1] <= 1).all()


def test_accepts_boolean_truth_and_float_truth():
    truth, scores = random_case(4)
    expected = lwlrap(truth, scores)
    assert lwlrap(truth.astype(bool), scores) == pytest.approx(expected, abs=1e-15)
    assert lwlrap(truth.astype(float), scores) == pytest.approx(expected, abs=1e-15)
    assert lwlrap(truth.tolist(), scores.tolist()) == pytest.approx(expected, abs=1e-15)


def test_returns_python_float():
    truth, scores = random_case(0)
    assert type(lwlrap(truth, scores)) is float


# ---------------------------------------------------------------------------------------------
# ties: ranked pessimistically, like sklearn
# ---------------------------------------------------------------------------------------------
def test_all_equal_scores_rank_positive_last():
    # 1 positive tied with 2 negatives: counts as rank 3 -> 1/3
    truth = [[1, 0, 0]]
    scores = [[0.5, 0.5, 0.5]]
    assert lwlrap(truth, scores) == pytest.approx(1 / 3)
    assert lwlrap(truth, scores) == pytest.approx(
        label_ranking_average_precision_score(truth, scores)
    )


def test_all_equal_scores_two_positives():
    # 2 positives tied with 1 negative: each at rank 3 with 2 positives at or above -> 2/3
    truth = [[1, 1, 0]]
    scores = [[0.5, 0.5, 0.5]]
    np.testing.assert_allclose(pair_precisions(truth, scores), [[2 / 3, 2 / 3, 0]])
    assert lwlrap(truth, scores) == pytest.approx(2 / 3)


def test_tie_between_positive_and_negative_is_pessimistic():
    truth = [[1, 0, 0]]
    assert lwlrap(truth, [[0.7, 0.7, 0.1]]) == pytest.approx(1 / 2)
    assert lwlrap(truth, [[0.7, 0.6, 0.1]]) == 1.0


def test_tie_among_positives_only_is_harmless():
    truth = [[1, 1, 0]]
    assert lwlrap(truth, [[0.9, 0.9, 0.1]]) == 1.0


def test_constant_scores_score_low_everywhere():
    truth, _ = random_case(6)
    const = np.full(truth.shape, 0.3)
    # every positive is at rank C with (#positives in its clip) at or above
    keep = truth.sum(axis=1) > 0
    expected = (truth[keep].sum(axis=1) ** 2).sum() / truth.shape[1] / truth.sum()
    assert lwlrap(truth, const) == pytest.approx(expected, abs=1e-12)
    assert lwlrap(truth, const) == pytest.approx(sklearn_lwlrap(truth, const), abs=1e-12)


# ---------------------------------------------------------------------------------------------
# input validation
# ---------------------------------------------------------------------------------------------
def test_shape_mismatch_names_both_shapes():
    truth = np.zeros((4, 3), dtype=int)
    truth[0, 0] = 1
    with pytest.raises(ValueError) as exc:
        lwlrap(truth, np.zeros((4, 5)))
    assert "(4, 3)" in str(exc.value) and "(4, 5)" in str(exc.value)


@pytest.mark.parametrize(
    "truth, scores",
    [
        (np.array([1, 0, 0]), np.array([0.1, 0.2, 0.3])),
        (np.array([[1, 0, 0]]), np.array([0.1, 0.2, 0.3])),
        (np.ones((2, 2, 2), dtype=int), np.ones((2, 2, 2))),
    ],
    ids=["both-1d", "scores-1d", "3d"],
)
def test_non_2d_input_rejected(truth, scores):
    with pytest.raises(ValueError, match="2-D"):
        lwlrap(truth, scores)


@pytest.mark.parametrize("bad", [2, -1, 0.5])
def test_non_binary_truth_rejected(bad):
    truth = np.array([[1, 0, 0], [0, 1, 0]], dtype=float)
    truth[1, 2] = bad
    with pytest.raises(ValueError, match="0 and 1"):
        lwlrap(truth, np.random.default_rng(0).random((2, 3)))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_rejected(bad):
    truth = np.array([[1, 0, 0], [0, 1, 0]])
    scores = np.random.default_rng(0).random((2, 3))
    scores[0, 1] = bad
    with pytest.raises(ValueError, match="NaN"):
        lwlrap(truth, scores)


def test_no_positive_labels_rejected():
    with pytest.raises(ValueError, match="no positive"):
        lwlrap(np.zeros((3, 4), dtype=int), np.random.default_rng(0).random((3, 4)))


@pytest.mark.parametrize("fn", [lwlrap, lwlrap_per_class, pair_precisions])
def test_every_entry_point_validates(fn):
    with pytest.raises(ValueError):
        fn(np.zeros((3, 4), dtype=int), np.zeros((3, 4)))
    with pytest.raises(ValueError):
        fn(np.eye(3, dtype=int), np.zeros((3, 4)))

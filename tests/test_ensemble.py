"""Tests for fat/evaluation/ensemble.py: fold aggregation, the correlation filter, simplex weights, the
combiners, nested cross-validation, and `run` on a tiny hand-written project."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from fat import metrics
from fat.evaluation import ensemble
from fat.io import save_predictions
from fat.layout import Layout
from fat.params import Ensemble

CLASSES = ["a", "b", "c", "d"]
FAMILIES = ["baseline", "finetune", "retrain"]


# ----------------------------------------------------------------------------- aggregate_folds
def test_aggregate_folds_mean():
    a, b, c = np.array([[0.2, 0.4]]), np.array([[0.4, 0.8]]), np.array([[0.6, 0.0]])
    np.testing.assert_allclose(ensemble.aggregate_folds([a, b, c], "mean"), [[0.4, 0.4]])
    np.testing.assert_allclose(ensemble.aggregate_folds([a, b, c]), [[0.4, 0.4]])  # default


def test_aggregate_folds_geomean():
    a, b = np.array([[0.25, 0.9, 0.5]]), np.array([[1.0, 0.1, 0.5]])
    np.testing.assert_allclose(ensemble.aggregate_folds([a, b], "geomean"), [[0.5, 0.3, 0.5]])


def test_aggregate_folds_geomean_survives_zeros():
    out = ensemble.aggregate_folds([np.array([[0.0, 0.5]]), np.array([[0.64, 0.5]])], "geomean")
    assert np.isfinite(out).all()
    assert 0 < out[0, 0] < 1e-3
    assert out[0, 1] == pytest.approx(0.5)


def test_aggregate_folds_geomean_below_mean():
    rng = np.random.default_rng(0)
    preds = [rng.uniform(0.01, 1, size=(5, 4)) for _ in range(3)]
    assert (ensemble.aggregate_folds(preds, "geomean") <= ensemble.aggregate_folds(preds, "mean") + 1e-12).all()


def test_aggregate_folds_unknown_raises():
    with pytest.raises(ValueError, match="fold_agg"):
        ensemble.aggregate_folds([np.zeros((2, 2))], "median")


# ----------------------------------------------------------------------------- correlation
def test_correlation_matrix_is_corrcoef_of_flattened():
    rng = np.random.default_rng(1)
    oofs = {"x": rng.uniform(size=(10, 4)), "y": rng.uniform(size=(10, 4))}
    oofs["z"] = 0.7 * oofs["x"] + 0.3 * rng.uniform(size=(10, 4))
    corr = ensemble.correlation_matrix(oofs)
    assert list(corr.index) == ["x", "y", "z"] and list(corr.columns) == ["x", "y", "z"]
    want = np.corrcoef(np.stack([oofs[n].ravel() for n in ["x", "y", "z"]]))
    np.testing.assert_allclose(corr.to_numpy(), want, rtol=1e-12)
    np.testing.assert_allclose(corr.to_numpy(), corr.to_numpy().T)
    np.testing.assert_allclose(np.diag(corr.to_numpy()), 1.0)
    assert corr.loc["x", "y"] == pytest.approx(np.corrcoef(oofs["x"].ravel(), oofs["y"].ravel())[0, 1])
    assert corr.loc["x", "z"] > 0.8 > abs(corr.loc["x", "y"])


def corr_frame(names, pairs):
    m = pd.DataFrame(np.eye(len(names)), index=names, columns=names)
    for (a, b), r in pairs.items():
        m.loc[a, b] = m.loc[b, a] = r
    return m


def test_correlation_filter_drops_member_correlated_with_better_kept_one():
    corr = corr_frame(["A", "B", "C"], {("A", "B"): 0.99, ("A", "C"): 0.30, ("B", "C"): 0.40})
    kept, dropped = ensemble.correlation_filter({"C": 0.7, "A": 0.9, "B": 0.8}, corr, 0.97)
    assert kept == ["A", "C"]
    assert dropped == {"B": {"correlated_with": "A", "r": 0.99}}


def test_correlation_filter_only_compares_with_kept_members():
    # C clashes only with B, but B was dropped (because of A): C stays.
    corr = corr_frame(["A", "B", "C"], {("A", "B"): 0.99, ("A", "C"): 0.30, ("B", "C"): 0.99})
    kept, dropped = ensemble.correlation_filter({"A": 0.9, "B": 0.8, "C": 0.7}, corr, 0.97)
    assert kept == ["A", "C"]
    assert list(dropped) == ["B"]


def test_correlation_filter_never_drops_the_best_member():
    corr = corr_frame(["A", "B"], {("A", "B"): 0.999})
    kept, dropped = ensemble.correlation_filter({"A": 0.5, "B": 0.6}, corr, 0.9)
    assert kept == ["B"]
    assert dropped == {"A": {"correlated_with": "B", "r": 0.999}}


def test_correlation_filter_names_the_most_correlated_kept_member():
    corr = corr_frame(["A", "B", "C"], {("A", "B"): 0.1, ("A", "C"): 0.98, ("B", "C"): 0.995})
    kept, dropped = ensemble.correlation_filter({"A": 0.9, "B": 0.8, "C": 0.7}, corr, 0.97)
    assert kept == ["A", "B"]
    assert dropped["C"]["correlated_with"] == "B" and dropped["C"]["r"] == 0.995


def test_correlation_filter_threshold_is_strict():
    corr = corr_frame(["A", "B"], {("A", "B"): 0.97})
    kept, _ = ensemble.correlation_filter({"A": 0.9, "B": 0.8}, corr, 0.97)
    assert kept == ["A", "B"]


def test_correlation_filter_ties_broken_by_name():
    corr = corr_frame(["y", "x"], {("x", "y"): 1.0})
    kept, dropped = ensemble.correlation_filter({"y": 0.8, "x": 0.8}, corr, 0.97)
    assert kept == ["x"]
    assert dropped == {"y": {"correlated_with": "x", "r": 1.0}}
    # without clashes, kept is best first, equal scores by name
    kept, dropped = ensemble.correlation_filter({"y": 0.8, "x": 0.8, "w": 0.5, "z": 0.9},
                                                corr_frame(["w", "x", "y", "z"], {}), 0.97)
    assert kept == ["z", "x", "y", "w"] and dropped == {}


def test_correlation_filter_max_corr_one_keeps_exact_copies():
    rng = np.random.default_rng(2)
    x = rng.uniform(size=(8, 4))
    oofs = {"p": x, "q": x.copy(), "r": rng.uniform(size=(8, 4))}
    corr = ensemble.correlation_matrix(oofs)
    kept, dropped = ensemble.correlation_filter({"p": 0.9, "q": 0.8, "r": 0.7}, corr, 1.0)
    assert kept == ["p", "q", "r"] and dropped == {}
    kept, dropped = ensemble.correlation_filter({"p": 0.9, "q": 0.8, "r": 0.7}, corr, 0.999)
    assert kept == ["p", "r"] and dropped["q"]["correlated_with"] == "p"


# ----------------------------------------------------------------------------- simplex grid
@pytest.mark.parametrize("m, step", [(1, 0.1), (2, 0.1), (3, 0.1), (3, 0.25), (4, 0.2), (2, 0.5), (3, 1.0)])
def test_simplex_grid(m, step):
    grid = ensemble.simplex_grid(m, step)
    units = round(1 / step)
    assert grid.shape == (math.comb(units + m - 1, m - 1), m)
    np.testing.assert_allclose(grid.sum(axis=1), 1.0, atol=1e-12)
    assert (grid >= 0).all()
    np.testing.assert_allclose(grid * units, np.round(grid * units), atol=1e-9)  # multiples of step
    assert len({tuple(np.round(r * units).astype(int)) for r in grid}) == len(grid)  # no duplicates


def test_simplex_grid_contains_corners_and_centre():
    grid = ensemble.simplex_grid(3, 0.1)
    rows = {tuple(np.round(r, 6)) for r in grid}
    assert {(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (0.4, 0.3, 0.3)} <= rows


@pytest.mark.parametrize("step", [0.3, 0.15, 2.0, -0.5, 0.7])
def test_simplex_grid_invalid_step(step):
    with pytest.raises(ValueError, match="weight_step"):
        ensemble.simplex_grid(3, step)


def test_simplex_grid_zero_step_is_a_config_error():
    with pytest.raises(ValueError, match="weight_step"):
        ensemble.simplex_grid(3, 0.0)


# ----------------------------------------------------------------------------- fit_weights
def random_truth(rng, n, c=4):
    y = np.zeros((n, c), dtype=np.float32)
    y[np.arange(n), rng.integers(0, c, n)] = 1
    extra = rng.uniform(size=n) < 0.3
    y[np.flatnonzero(extra), rng.integers(0, c, extra.sum())] = 1
    return y


def test_fit_weights_finds_the_perfect_member():
    rng = np.random.default_rng(3)
    truth = random_truth(rng, 200)
    perfect = 0.5 + 0.01 * truth  # right ranking, by a thin margin: any noise weight spoils it
    noise1, noise2 = rng.uniform(size=truth.shape), rng.uniform(size=truth.shape)
    assert metrics.lwlrap(truth, perfect) == 1.0
    w = ensemble.fit_weights([noise1, perfect, noise2], truth, 0.1)
    np.testing.assert_allclose(w, [0.0, 1.0, 0.0])
    w = ensemble.fit_weights([perfect, noise1], truth, 0.25)
    np.testing.assert_allclose(w, [1.0, 0.0])


def test_fit_weights_never_worse_than_best_single_member():
    rng = np.random.default_rng(4)
    truth = random_truth(rng, 120)
    probs = [np.clip(q * truth + rng.uniform(size=truth.shape), 0, None) for q in (0.2, 0.5, 0.35)]
    w = ensemble.fit_weights(probs, truth, 0.1)
    assert w.sum() == pytest.approx(1.0) and (w >= 0).all()
    assert any(np.allclose(w, row) for row in ensemble.simplex_grid(3, 0.1))
    fitted = metrics.lwlrap(truth, np.tensordot(w, np.stack(probs), axes=1))
    assert fitted >= max(metrics.lwlrap(truth, p) for p in probs)
    assert fitted >= metrics.lwlrap(truth, np.mean(probs, axis=0))
    # it is the grid's best
    best = max(metrics.lwlrap(truth, np.tensordot(g, np.stack(probs), axes=1)) for g in ensemble.simplex_grid(3, 0.1))
    assert fitted == pytest.approx(best, abs=1e-12)


def test_fit_weights_ties_prefer_even_weights():
    rng = np.random.default_rng(5)
    truth = random_truth(rng, 30)
    p = rng.uniform(size=truth.shape)
    np.testing.assert_allclose(ensemble.fit_weights([p, p.copy()], truth, 0.1), [0.5, 0.5])
    np.testing.assert_allclose(ensemble.fit_weights([p, p.copy(), p.copy(), p.copy()], truth, 0.25),
                               [0.25, 0.25, 0.25, 0.25])


# ----------------------------------------------------------------------------- Combiner
def test_combiner_unknown_method_raises():
    with pytest.raises(ValueError, match="method"):
        ensemble.Combiner("vote")


def test_combiner_mean():
    rng = np.random.default_rng(6)
    probs = [rng.uniform(size=(7, 4)) for _ in range(3)]
    c = ensemble.Combiner("mean").fit(probs, random_truth(rng, 7))
    out = c(probs)
    assert out.shape == (7, 4)
    np.testing.assert_allclose(out, (probs[0] + probs[1] + probs[2]) / 3)
    # apply to other aligned predictions (e.g. test)
    other = [rng.uniform(size=(3, 4)) for _ in range(3)]
    np.testing.assert_allclose(c(other), np.mean(other, axis=0))
    assert c.weights is None and c.stack is None


def test_combiner_weighted_applies_fitted_weights():
    rng = np.random.default_rng(7)
    truth = random_truth(rng, 60)
    probs = [0.5 + 0.01 * truth, rng.uniform(size=truth.shape)]
    c = ensemble.Combiner("weighted", weight_step=0.5).fit(probs, truth)
    np.testing.assert_allclose(c.weights, [1.0, 0.0])
    other = [rng.uniform(size=(5, 4)), rng.uniform(size=(5, 4))]
    out = c(other)
    assert out.shape == (5, 4)
    np.testing.assert_allclose(out, other[0])


def test_combiner_stack_outputs_probabilities():
    rng = np.random.default_rng(8)
    truth = random_truth(rng, 80)
    good = np.clip(0.6 * truth + 0.4 * rng.uniform(size=truth.shape), 0.01, 0.99)
    bad = rng.uniform(0.01, 0.99, size=truth.shape)
    c = ensemble.Combiner("stack", seed=0).fit([good, bad], truth)
    out = c([good, bad])
    assert out.shape == truth.shape
    assert ((out > 0) & (out < 1)).all()
    assert metrics.lwlrap(truth, out) > metrics.lwlrap(truth, bad)
    coef = c.stack.coef_.ravel()
    assert coef[0] > abs(coef[1])  # leans on the informative member
    test = [rng.uniform(0.01, 0.99, size=(4, 4)) for _ in range(2)]
    assert c(test).shape == (4, 4)


# ----------------------------------------------------------------------------- nested_oof
def nested_cfg(method):
    return Ensemble(max_corr=1.0, method=method, weight_step=0.1, guard=False)  # max_corr 1: no member dropped


def test_nested_oof_fits_each_fold_without_its_rows():
    """A is right on fold 1 and inverted on fold 0, B the other way round. Fold 0's weights must come
    from fold 1 alone (where A is right), so fold 0's nested predictions rank true classes last."""
    rng = np.random.default_rng(9)
    truth = random_truth(rng, 40)
    fold_of = np.arange(40) % 2
    f0 = (fold_of == 0)[:, None]
    a = np.where(f0, 1 - truth, truth).astype(np.float64)
    b = np.where(f0, truth, 1 - truth).astype(np.float64)
    out = ensemble.nested_oof({"a": a, "b": b}, truth, fold_of, nested_cfg("weighted"), 0)
    for k in (0, 1):
        va = fold_of == k
        t, p = truth[va].astype(bool), out[va]
        assert p[t].max() < p[~t].min(), f"fold {k}: weights fitted with the fold's own rows"
        *_, kept, _, comb = ensemble.select_and_fit({"a": a[~va], "b": b[~va]}, truth[~va], nested_cfg("weighted"), 0)
        w = ensemble.fit_weights([{"a": a, "b": b}[m][~va] for m in kept], truth[~va], 0.1)
        np.testing.assert_allclose(p, np.tensordot(w, np.stack([{"a": a, "b": b}[m][va] for m in kept]), axes=1))
    # in sample, the same combination looks much better than the nested score
    assert metrics.lwlrap(truth, out) < 0.6


def test_nested_oof_fold_rows_do_not_depend_on_their_own_truth():
    rng = np.random.default_rng(10)
    truth = random_truth(rng, 60)
    fold_of = np.arange(60) % 3
    probs = [np.clip(q * truth + rng.uniform(size=truth.shape), 0, None) for q in (0.3, 0.6, 0.1)]
    members = dict(zip("xyz", probs))
    out = ensemble.nested_oof(members, truth, fold_of, nested_cfg("weighted"), 0)
    changed = truth.copy()
    va = fold_of == 1
    changed[va] = random_truth(np.random.default_rng(11), va.sum())
    out2 = ensemble.nested_oof(members, changed, fold_of, nested_cfg("weighted"), 0)
    np.testing.assert_array_equal(out2[va], out[va])
    assert out.shape == truth.shape


def test_nested_oof_stack_outputs_probabilities():
    rng = np.random.default_rng(12)
    truth = random_truth(rng, 48)
    fold_of = np.arange(48) % 3
    probs = [np.clip(q * truth + rng.uniform(size=truth.shape), 0.01, 0.99) for q in (0.5, 0.2)]
    members = dict(zip("xy", probs))
    out = ensemble.nested_oof(members, truth, fold_of, nested_cfg("stack"), 0)
    assert out.shape == truth.shape
    assert ((out > 0) & (out < 1)).all()
    # fold 0's rows: a stack fitted on folds 1 and 2
    va = fold_of == 0
    *_, kept, _, ref = ensemble.select_and_fit({m: p[~va] for m, p in members.items()}, truth[~va],
                                               nested_cfg("stack"), 0)
    np.testing.assert_allclose(out[va], ref([members[m][va] for m in kept]))


# ----------------------------------------------------------------------------- run
N_CUR, N_TEST, FOLDS = 16, 6, [0, 1]


class Project:
    """A tiny project: 16 curated clips in 2 folds, 6 labelled test clips, 4 classes."""

    def __init__(self, root, seed=0, test_labels=True):
        self.layout = Layout(root=root)
        rng = np.random.default_rng(seed)
        self.rng = rng
        self.cur_fn = [f"c{i:02d}.wav" for i in range(N_CUR)]
        self.test_fn = [f"t{i}.wav" for i in range(N_TEST)]
        self.truth = random_truth(rng, N_CUR)
        self.test_truth = random_truth(rng, N_TEST)
        self.fold_of = np.arange(N_CUR) % 2
        raw = self.layout.raw
        raw.mkdir(parents=True)
        sub = pd.DataFrame(0.0, index=range(N_TEST), columns=CLASSES)
        sub.insert(0, "fname", self.test_fn)
        sub.to_csv(raw / "sample_submission.csv", index=False)
        self.labels_csv(self.cur_fn, self.truth).to_csv(raw / "train_curated.csv", index=False)
        if test_labels:
            self.labels_csv(self.test_fn, self.test_truth).to_csv(raw / "test_labels.csv", index=False)
        pd.DataFrame({"fname": self.cur_fn, "fold": self.fold_of}).to_csv(self.layout.folds, index=False)
        self.oof = {"preds": {}, "models": {}}
        self.test = {"preds": {}, "models": {}}

    @staticmethod
    def labels_csv(fnames, y):
        return pd.DataFrame({"fname": fnames, "labels": [",".join(c for c, v in zip(CLASSES, r) if v) for r in y]})

    def scores(self, quality):
        """Member-like predictions: quality * truth + noise, rounded so the CSV round trip is exact."""
        noise = self.rng.uniform(size=self.truth.shape)
        return np.round(np.clip(quality * self.truth + (1 - quality) * noise, 0, 1), 4)

    def test_scores(self, quality):
        return [np.round(np.clip(quality * self.test_truth
                                 + (1 - quality) * self.rng.uniform(size=self.test_truth.shape), 0, 1), 4)
                for _ in FOLDS]

    def write(self, family, oof, tests, source="preds", reverse=False):
        """Write fold k's OOF rows (fold-k clips; optionally in reverse order) and test rows."""
        where = self.layout.preds if source == "preds" else self.layout.member
        self.oof[source][family], self.test[source][family] = oof, tests
        for k in FOLDS:
            rows = np.flatnonzero(self.fold_of == k)
            if reverse:
                rows = rows[::-1]
            save_predictions(where(family, k) / "oof.csv", [self.cur_fn[i] for i in rows], oof[rows], CLASSES)
            save_predictions(where(family, k) / "test.csv", self.test_fn, tests[k], CLASSES)
            if source != "preds":  # and the copies predict@<family> leaves beside its TTA predictions
                save_predictions(self.layout.preds(family, k) / "plain_oof.csv", [self.cur_fn[i] for i in rows],
                                 oof[rows], CLASSES)
                save_predictions(self.layout.preds(family, k) / "plain_test.csv", self.test_fn, tests[k], CLASSES)

    def test_mean(self, family, source="preds"):
        return np.mean(self.test[source][family], axis=0)


def params(**ens):
    """(ensemble section, folds, seed): the arguments of ensemble.run before the layout."""
    cfg = {"members": list(FAMILIES), "use_tta": True, "fold_agg": "mean", "max_corr": 0.97, "method": "mean",
           "weight_step": 0.1, "guard": False}
    cfg.update(ens)
    return Ensemble(**cfg), list(FOLDS), 0


@pytest.fixture
def proj(tmp_path):
    p = Project(tmp_path)
    for fam, q, rev in (("baseline", 0.12, False), ("finetune", 0.3, True), ("retrain", 0.2, False)):
        p.write(fam, p.scores(q), p.test_scores(q), "preds", reverse=rev)
    # the plain predictions rank the families the other way round
    for fam, q in (("baseline", 0.45), ("finetune", 0.1), ("retrain", 0.05)):
        p.write(fam, p.scores(q), p.test_scores(q), "models")
    return p


def test_run_mean_submission_and_scores(proj):
    result, sub, per_class = ensemble.run(*params(), proj.layout)
    assert list(sub.columns) == ["fname"] + CLASSES
    assert sub["fname"].tolist() == proj.test_fn
    assert len(sub) == N_TEST

    oof = proj.oof["preds"]
    scores = {m: metrics.lwlrap(proj.truth, oof[m]) for m in FAMILIES}
    corr = np.corrcoef(np.stack([oof[m].ravel() for m in FAMILIES]))
    assert corr[np.triu_indices(3, 1)].max() < 0.97, "fixture: no member should be dropped"
    assert result["kept"] == sorted(FAMILIES, key=lambda m: -scores[m])
    assert result["dropped"] == {}
    assert result["method"] == "mean" and result["use_tta"] is True
    assert "weights" not in result
    # a plain mean with no member dropped fits nothing: the nested score equals the in-sample one
    assert result["lwlrap"] == result["lwlrap_in_sample"]

    ens_oof = np.mean([oof[m] for m in FAMILIES], axis=0)
    assert result["lwlrap"] == pytest.approx(metrics.lwlrap(proj.truth, ens_oof), abs=1e-6)
    ens_test = np.mean([proj.test_mean(m) for m in FAMILIES], axis=0)
    np.testing.assert_allclose(sub[CLASSES].to_numpy(), ens_test, atol=1e-12)
    assert result["test_lwlrap"] == pytest.approx(metrics.lwlrap(proj.test_truth, ens_test), abs=1e-6)

    for m in FAMILIES:
        info = result["members"][m]
        assert info["kept"] is True
        assert info["oof_lwlrap"] == pytest.approx(scores[m], abs=1e-6)
        assert info["test_lwlrap"] == pytest.approx(metrics.lwlrap(proj.test_truth, proj.test_mean(m)), abs=1e-6)
    for i, a in enumerate(FAMILIES):
        for j, b in enumerate(FAMILIES):
            assert result["correlation"][a][b] == pytest.approx(corr[i, j], abs=1e-4)

    assert per_class["class"].tolist() == CLASSES
    pc, w = metrics.lwlrap_per_class(proj.truth, ens_oof)
    np.testing.assert_allclose(per_class["lwlrap"], pc, atol=1e-6)
    assert float((per_class["lwlrap"] * per_class["weight"]).sum()) == pytest.approx(result["lwlrap"], abs=1e-5)


def test_run_drops_an_exact_copy(proj):
    proj.write("retrain", proj.oof["preds"]["finetune"].copy(), [t.copy() for t in proj.test["preds"]["finetune"]])
    result, sub, _ = ensemble.run(*params(), proj.layout)
    assert "retrain" not in result["kept"]
    assert result["dropped"] == {"retrain": {"correlated_with": "finetune", "r": 1.0}}
    assert result["members"]["retrain"]["kept"] is False
    oof = proj.oof["preds"]
    kept_mean = np.mean([oof["finetune"], oof["baseline"]], axis=0)
    with_copy = np.mean([oof["finetune"], oof["baseline"], oof["retrain"]], axis=0)
    assert metrics.lwlrap(proj.truth, kept_mean) != pytest.approx(metrics.lwlrap(proj.truth, with_copy), abs=1e-6), \
        "fixture: the copy should change the plain mean"
    assert result["lwlrap"] == pytest.approx(metrics.lwlrap(proj.truth, kept_mean), abs=1e-6)
    np.testing.assert_allclose(sub[CLASSES].to_numpy(),
                               np.mean([proj.test_mean("finetune"), proj.test_mean("baseline")], axis=0), atol=1e-12)
    # max_corr 1 keeps the copy
    result, _, _ = ensemble.run(*params(max_corr=1.0), proj.layout)
    assert set(result["kept"]) == set(FAMILIES)


def test_run_weighted_reports_nested_and_in_sample(proj):
    result, sub, _ = ensemble.run(*params(method="weighted"), proj.layout)
    kept = result["kept"]
    assert list(result["weights"]) == kept
    w = np.array([result["weights"][m] for m in kept])
    assert w.sum() == pytest.approx(1.0, abs=1e-6) and (w >= 0).all()
    oof = [proj.oof["preds"][m] for m in kept]
    in_sample = metrics.lwlrap(proj.truth, np.tensordot(w, np.stack(oof), axes=1))
    assert result["lwlrap_in_sample"] == pytest.approx(in_sample, abs=1e-6)
    assert result["lwlrap_in_sample"] >= max(metrics.lwlrap(proj.truth, p) for p in oof) - 1e-6
    assert "nested" in result["lwlrap_note"]
    # nested: fold k's rows combined with weights fitted on the other fold only
    nested = np.zeros_like(proj.truth, dtype=np.float64)
    for k in FOLDS:
        va = proj.fold_of == k
        wk = ensemble.fit_weights([p[~va] for p in oof], proj.truth[~va], 0.1)
        nested[va] = np.tensordot(wk, np.stack([p[va] for p in oof]), axes=1)
    assert result["lwlrap"] == pytest.approx(metrics.lwlrap(proj.truth, nested), abs=1e-6)
    tests = np.stack([proj.test_mean(m) for m in kept])
    np.testing.assert_allclose(sub[CLASSES].to_numpy(), np.tensordot(w, tests, axes=1), atol=1e-9)
    assert result["test_lwlrap"] == pytest.approx(metrics.lwlrap(proj.test_truth, np.tensordot(w, tests, axes=1)),
                                                  abs=1e-6)


def test_run_stack(proj):
    result, sub, _ = ensemble.run(*params(method="stack"), proj.layout)
    vals = sub[CLASSES].to_numpy()
    assert ((vals > 0) & (vals < 1)).all()
    assert {"lwlrap", "lwlrap_in_sample", "test_lwlrap"} <= set(result)
    assert "weights" not in result
    assert 0 < result["lwlrap"] <= 1


def test_run_use_tta_false_reads_the_plain_predictions(proj):
    result, sub, _ = ensemble.run(*params(use_tta=False), proj.layout)
    assert result["use_tta"] is False
    plain = proj.oof["models"]
    for m in FAMILIES:
        assert result["members"][m]["oof_lwlrap"] == pytest.approx(metrics.lwlrap(proj.truth, plain[m]), abs=1e-6)
    assert result["kept"][0] == "baseline"  # best among the plain predictions, worst among the TTA ones
    kept_mean = np.mean([plain[m] for m in result["kept"]], axis=0)
    assert result["lwlrap"] == pytest.approx(metrics.lwlrap(proj.truth, kept_mean), abs=1e-6)
    np.testing.assert_allclose(sub[CLASSES].to_numpy(),
                               np.mean([proj.test_mean(m, "models") for m in result["kept"]], axis=0), atol=1e-12)
    tta, _, _ = ensemble.run(*params(use_tta=True), proj.layout)
    assert tta["kept"][0] == "finetune"
    assert tta["members"]["baseline"]["oof_lwlrap"] != result["members"]["baseline"]["oof_lwlrap"]


def test_run_geomean_over_folds(proj):
    _, sub, _ = ensemble.run(*params(fold_agg="geomean", members=["finetune"]), proj.layout)
    t = np.stack(proj.test["preds"]["finetune"])
    want = np.exp(np.log(np.clip(t, 1e-9, 1)).mean(axis=0))
    np.testing.assert_allclose(sub[CLASSES].to_numpy(), want, atol=1e-12)


def test_run_mismatched_test_clips_across_folds_raise(proj):
    fold1 = proj.layout.preds("retrain", 1) / "test.csv"
    df = pd.read_csv(fold1)
    df["fname"] = df["fname"].iloc[::-1].to_numpy()  # same clips, other order
    df.to_csv(fold1, index=False)
    with pytest.raises(ValueError, match="test clips differ"):
        ensemble.run(*params(), proj.layout)
    # the plain predictions are untouched
    ensemble.run(*params(use_tta=False), proj.layout)


def test_run_members_with_different_test_clips_raise(proj):
    other = [f"x{i}.wav" for i in range(N_TEST)]
    for k in FOLDS:
        save_predictions(proj.layout.preds("retrain", k) / "test.csv", other, proj.test["preds"]["retrain"][k], CLASSES)
    with pytest.raises(ValueError, match="retrain"):
        ensemble.run(*params(), proj.layout)


def test_run_without_test_labels_has_no_test_score(tmp_path):
    p = Project(tmp_path, seed=3, test_labels=False)
    for fam, q in (("baseline", 0.12), ("finetune", 0.3), ("retrain", 0.2)):
        p.write(fam, p.scores(q), p.test_scores(q))
    result, sub, _ = ensemble.run(*params(), p.layout)
    assert "test_lwlrap" not in result
    assert all("test_lwlrap" not in v for v in result["members"].values())
    assert sub["fname"].tolist() == p.test_fn


def test_guard_uses_the_best_member_alone_when_the_combination_is_worse():
    rng = np.random.default_rng(3)
    truth = (rng.random((60, 5)) < 0.3).astype(float)
    truth[truth.sum(1) == 0, 0] = 1
    good = truth + 0.3 * rng.random(truth.shape)  # near perfect
    bad = rng.random(truth.shape)  # noise: averaging it in only hurts
    c = ensemble.Combiner("mean", guard=True).fit([bad, good], truth)
    assert c.single == 1
    np.testing.assert_array_equal(c([bad, good]), good)


def test_guard_keeps_a_combination_that_beats_every_member():
    rng = np.random.default_rng(4)
    truth = (rng.random((200, 6)) < 0.3).astype(float)
    truth[truth.sum(1) == 0, 0] = 1
    a = truth + rng.normal(0, 0.6, truth.shape)  # two equally good members with independent errors
    b = truth + rng.normal(0, 0.6, truth.shape)
    c = ensemble.Combiner("mean", guard=True).fit([a, b], truth)
    assert metrics.lwlrap(truth, (a + b) / 2) > max(metrics.lwlrap(truth, a), metrics.lwlrap(truth, b))
    assert c.single is None
    np.testing.assert_allclose(c([a, b]), (a + b) / 2)


def test_nested_score_redoes_member_selection_without_each_fold(proj):
    """A member that is a near-copy of the best one is dropped on the full data; the nested score
    must come from selections made without each fold, not from the full-data selection."""
    p = params(max_corr=-1.0)  # every member correlates above -1: only the best survives a selection
    result, _, _ = ensemble.run(*p, proj.layout)
    assert len(result["kept"]) == 1
    oof = proj.oof["preds"]
    folds = proj.fold_of
    expected = np.zeros_like(proj.truth, dtype=float)
    for k in np.unique(folds):
        tr = folds != k
        best = max(FAMILIES, key=lambda m: (metrics.lwlrap(proj.truth[tr], oof[m][tr]), m))
        expected[~tr] = oof[best][~tr]
    assert result["lwlrap"] == pytest.approx(metrics.lwlrap(proj.truth, expected), abs=1e-6)


def test_run_reports_oof_lwlrap_per_member_and_fold(proj):
    result, _, _ = ensemble.run(*params(), proj.layout)
    oof = proj.oof["preds"]
    assert set(result["folds"]) == {f"fold{k}" for k in FOLDS}
    for k in FOLDS:
        va = proj.fold_of == k
        row = result["folds"][f"fold{k}"]
        assert set(row) == set(FAMILIES) | {"ensemble"}
        for m in FAMILIES:
            assert row[m] == pytest.approx(metrics.lwlrap(proj.truth[va], oof[m][va]), abs=1e-6)
        # nothing dropped, plain mean: the ensemble's fold-k rows are the mean of the members'
        ens = np.mean([oof[m][va] for m in FAMILIES], axis=0)
        assert row["ensemble"] == pytest.approx(metrics.lwlrap(proj.truth[va], ens), abs=1e-6)

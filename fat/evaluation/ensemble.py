"""Ensembling the model families.

Each member is a family: its out-of-fold (OOF) predictions cover every curated clip once, its
test predictions are the average over its fold models. Members are compared by Pearson
correlation of their OOF matrices (flattened over clips x classes). Going from the best member
(by OOF lwlrap) down, a member is dropped when its correlation with a better member that was
kept exceeds `ensemble.max_corr` — it would add little but its own errors. The kept members are
combined by
  mean      plain average of probabilities;
  weighted  non-negative weights summing to 1, fitted on OOF by a grid search over the simplex;
  stack     a logistic regression on the members' logits, shared by all classes.
With `guard` on, a combination is used only if, on the rows it is fitted on, it scores at least
as well as the best single kept member; otherwise that member alone is the ensemble ("combine
only when it helps"). The reported OOF score is nested: the whole procedure — ranking, correlation
filter, weights or stacker, the guard's choice — is redone without fold k and applied to fold k.
The in-sample score is reported separately, labelled as such.
"""
from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from fat import metrics
from fat.data import tables as data
from fat.evaluation.oof import load_family
from fat.layout import Layout
from fat.params import Ensemble as EnsembleSection

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression

METHODS = ("mean", "weighted", "stack")


def load_member(family: str, folds: list[int], layout: Layout, tta: bool, classes: list[str],
                fold_agg: str = "mean"):
    """(OOF fnames, OOF probs, test fnames, test probs aggregated over folds) of one family, from
    what its predict stage wrote (data/preds/<family>: the TTA predictions and copies of the plain ones)."""
    preds = load_family(family, folds, layout, tta, classes, from_preds=True)
    return preds.oof_fnames, preds.oof_probs, preds.test_fnames, aggregate_folds(preds.test, fold_agg)


def aggregate_folds(preds: list[np.ndarray], how: str = "mean") -> np.ndarray:
    stack = np.stack(preds)
    if how == "mean":
        return stack.mean(axis=0)
    if how == "geomean":
        return np.exp(np.log(np.clip(stack, 1e-9, 1.0)).mean(axis=0))
    raise ValueError(f"ensemble.fold_agg must be 'mean' or 'geomean', got {how!r}")


def correlation_matrix(oofs: dict[str, np.ndarray]) -> pd.DataFrame:
    names = list(oofs)
    flat = np.stack([np.asarray(oofs[n], dtype=np.float64).ravel() for n in names])
    return pd.DataFrame(np.corrcoef(flat), index=names, columns=names)


def correlation_filter(scores: dict[str, float], corr: pd.DataFrame, max_corr: float):
    """(kept names best first, {dropped: {"correlated_with": better kept member, "r": r}})."""
    kept, dropped = [], {}
    for name in sorted(scores, key=lambda n: (-scores[n], n)):
        clash = [(float(corr.loc[name, k]), k) for k in kept if corr.loc[name, k] > max_corr]
        if clash:
            r, k = max(clash)
            dropped[name] = {"correlated_with": k, "r": round(r, 4)}
        else:
            kept.append(name)
    return kept, dropped


def simplex_grid(m: int, step: float) -> np.ndarray:
    """All weight vectors of m non-negative multiples of `step` summing to 1."""
    units = int(round(1 / step)) if step > 0 else 0
    if units < 1 or abs(units * step - 1) > 1e-9:
        raise ValueError(f"ensemble.weight_step must divide 1, got {step}")
    out = []
    for bars in itertools.combinations(range(units + m - 1), m - 1):
        edges = (-1,) + bars + (units + m - 1,)
        out.append([edges[i + 1] - edges[i] - 1 for i in range(m)])
    return np.asarray(out, dtype=np.float64) / units


def fit_weights(probs: list[np.ndarray], truth: np.ndarray, step: float) -> np.ndarray:
    """The simplex-grid weights with the best lwlrap (ties: the most even weights)."""
    grid = simplex_grid(len(probs), step)
    stacked = np.stack(probs)
    scores = [metrics.lwlrap(truth, np.tensordot(w, stacked, axes=1)) for w in grid]
    best = max(range(len(grid)), key=lambda i: (round(scores[i], 12), -np.abs(grid[i] - 1 / len(probs)).sum()))
    return grid[best]


def _logits(p):
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def fit_stack(probs: list[np.ndarray], truth: np.ndarray, seed: int) -> LogisticRegression:
    from sklearn.linear_model import LogisticRegression  # only the `stack` method needs sklearn (~2 s to import)

    x = np.stack([_logits(p).ravel() for p in probs], axis=1)
    return LogisticRegression(C=1.0, max_iter=1000, random_state=seed).fit(x, truth.ravel())


def apply_stack(model: LogisticRegression, probs: list[np.ndarray]) -> np.ndarray:
    x = np.stack([_logits(p).ravel() for p in probs], axis=1)
    return model.predict_proba(x)[:, 1].reshape(probs[0].shape)


class Combiner:
    """Fits a combination on OOF (`fit`) and applies it to any aligned member predictions."""

    def __init__(self, method: str, weight_step: float = 0.1, seed: int = 0, guard: bool = False):
        if method not in METHODS:
            raise ValueError(f"ensemble.method must be one of {METHODS}, got {method!r}")
        self.method, self.weight_step, self.seed, self.guard = method, weight_step, seed, guard
        self.weights = None
        self.stack = None
        self.single: int | None = None  # index of the member used alone when the guard trips

    def clone(self) -> Combiner:
        return Combiner(self.method, self.weight_step, self.seed, self.guard)

    def fit(self, probs: list[np.ndarray], truth: np.ndarray) -> Combiner:
        self.single = None
        if self.method == "weighted":
            self.weights = fit_weights(probs, truth, self.weight_step)
        elif self.method == "stack":
            self.stack = fit_stack(probs, truth, self.seed)
        if self.guard and len(probs) > 1:
            singles = [metrics.lwlrap(truth, p) for p in probs]
            if max(singles) > metrics.lwlrap(truth, self(probs)):
                self.single = int(np.argmax(singles))
        return self

    def state(self) -> dict:
        """The fitted combination as plain JSON values (`from_state` rebuilds it): what `fat predict`
        applies to the members' predictions of new clips."""
        out = {"method": self.method, "guard": self.guard, "single": self.single,
               "weights": None if self.weights is None else [float(w) for w in self.weights], "stack": None}
        if self.stack is not None:
            out["stack"] = {"coef": self.stack.coef_.ravel().tolist(), "intercept": float(self.stack.intercept_[0])}
        return out

    @classmethod
    def from_state(cls, state: dict) -> Combiner:
        """The fitted Combiner of `state()` (a model card's `combiner`)."""
        c = cls(state["method"], seed=0, guard=bool(state.get("guard", False)))
        c.single = None if state.get("single") is None else int(state["single"])
        if state.get("weights") is not None:
            c.weights = np.asarray(state["weights"], dtype=np.float64)
        elif c.method == "weighted" and c.single is None:
            raise ValueError("combiner state: the weighted method needs its weights")
        if state.get("stack") is not None:
            from sklearn.linear_model import LogisticRegression

            coef = np.asarray(state["stack"]["coef"], dtype=np.float64).reshape(1, -1)
            c.stack = LogisticRegression()
            c.stack.coef_, c.stack.intercept_ = coef, np.asarray([float(state["stack"]["intercept"])])
            c.stack.classes_, c.stack.n_features_in_ = np.asarray([0.0, 1.0], dtype=np.float32), coef.shape[1]
        elif c.method == "stack" and c.single is None:
            raise ValueError("combiner state: the stack method needs its coefficients")
        return c

    def __call__(self, probs: list[np.ndarray]) -> np.ndarray:
        if self.single is not None:
            return probs[self.single]
        if self.method == "mean":
            return np.mean(probs, axis=0)
        if self.method == "weighted":
            return np.tensordot(self.weights, np.stack(probs), axes=1)
        return apply_stack(self.stack, probs)


def nested_oof(oof: dict[str, np.ndarray], truth: np.ndarray, fold_of: np.ndarray, cfg: EnsembleSection,
               seed: int) -> np.ndarray:
    """The ensemble's OOF predictions scored honestly: for each fold k, the whole procedure —
    ranking, correlation filter, fitting, guard — is redone on the other folds and applied to k."""
    out = np.zeros(truth.shape, dtype=np.float64)
    for k in np.unique(fold_of):
        va = fold_of == k
        *_, kept, _, combiner = select_and_fit({m: p[~va] for m, p in oof.items()}, truth[~va], cfg, seed)
        out[va] = combiner([oof[m][va] for m in kept])
    return out


def fold_scores(oof: dict[str, np.ndarray], truth: np.ndarray, fold_of: np.ndarray) -> dict:
    """OOF lwlrap of every member on every fold: {"fold0": {member: score, …}, …}."""
    return {f"fold{k}": {m: round(metrics.lwlrap(truth[fold_of == k], p[fold_of == k]), 6) for m, p in oof.items()}
            for k in np.unique(fold_of)}


def select_and_fit(oof: dict[str, np.ndarray], truth: np.ndarray, cfg: EnsembleSection, seed: int):
    """Rank members by lwlrap, filter by correlation, fit the combiner on the kept ones.
    Returns (scores, correlation, kept, dropped, fitted combiner)."""
    scores = {m: metrics.lwlrap(truth, p) for m, p in oof.items()}
    corr = correlation_matrix(oof)
    kept, dropped = correlation_filter(scores, corr, cfg.max_corr)
    combiner = Combiner(cfg.method, cfg.weight_step, seed, guard=cfg.guard)
    combiner.fit([oof[m] for m in kept], truth)
    return scores, corr, kept, dropped, combiner


def run(cfg: EnsembleSection, folds: list[int], seed: int, layout: Layout = Layout()
        ) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """Build the ensemble of `cfg.members` over `folds`. Returns (metrics, submission frame,
    per-class lwlrap frame)."""
    folds = list(folds)
    classes = data.vocabulary(layout.raw)
    curated = data.split_table(layout.raw, "curated").set_index("fname")
    fold_table = pd.read_csv(layout.folds, dtype={"fname": str}).set_index("fname")

    oof, test, test_fn, order = {}, {}, None, None
    for fam in cfg.members:
        fn, p, tfn, tp = load_member(fam, folds, layout, cfg.use_tta, classes, cfg.fold_agg)
        if order is None:
            order, test_fn = fn, tfn
        elif sorted(fn) != sorted(order) or tfn != test_fn:
            raise ValueError(f"member {fam}: OOF or test clips differ from member {cfg.members[0]}")
        pos = pd.Series(np.arange(len(fn)), index=fn)
        oof[fam], test[fam] = p[pos.loc[order].to_numpy()], tp
    truth = data.multi_hot(curated.loc[order, "labels"], classes)
    fold_of = fold_table.loc[order, "fold"].to_numpy()

    test_truth = None
    if data.has_test_labels(layout.raw):
        tt = data.split_table(layout.raw, "test").set_index("fname")
        test_truth = data.multi_hot(tt.loc[test_fn, "labels"], classes)

    scores, corr, kept, dropped, combiner = select_and_fit(oof, truth, cfg, seed)
    kept_oof, kept_test = [oof[m] for m in kept], [test[m] for m in kept]
    test_ens = combiner(kept_test)

    oof_ens = nested_oof(oof, truth, fold_of, cfg, seed)

    result = {"lwlrap": round(metrics.lwlrap(truth, oof_ens), 6),
              "lwlrap_note": "nested CV: member selection and combination refitted without each fold",
              "lwlrap_in_sample": round(metrics.lwlrap(truth, combiner(kept_oof)), 6)}
    unguarded = combiner.clone()
    unguarded.guard = False
    unguarded.fit(kept_oof, truth)
    result["lwlrap_combined_in_sample"] = round(metrics.lwlrap(truth, unguarded(kept_oof)), 6)
    if test_truth is not None:
        result["test_lwlrap"] = round(metrics.lwlrap(test_truth, test_ens), 6)
    result.update({
        "method": cfg.method, "use_tta": cfg.use_tta, "max_corr": cfg.max_corr,
        "kept": kept, "dropped": dropped,
        "final": kept[combiner.single] if combiner.single is not None else f"{cfg.method} of {', '.join(kept)}",
        "members": {m: {"oof_lwlrap": round(scores[m], 6), "kept": m in kept,
                        **({"test_lwlrap": round(metrics.lwlrap(test_truth, test[m]), 6)}
                           if test_truth is not None else {})}
                    for m in oof},
        "correlation": {a: {b: round(float(corr.loc[a, b]), 4) for b in corr.columns} for a in corr.index},
    })
    if combiner.weights is not None:
        result["weights"] = {m: round(float(w), 4) for m, w in zip(kept, combiner.weights)}
    result["combiner"] = combiner.state()  # the fitted combination, unrounded (the stage writes it to the model card)
    result["folds"] = fold_scores({**oof, "ensemble": oof_ens}, truth, fold_of)
    per_class, weight = metrics.lwlrap_per_class(truth, oof_ens)
    per_class_df = pd.DataFrame({"class": classes, "lwlrap": np.round(per_class, 6), "weight": np.round(weight, 6)})
    submission = pd.DataFrame(test_ens, columns=classes)
    submission.insert(0, "fname", test_fn)
    return result, submission, per_class_df

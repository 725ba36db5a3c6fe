"""Leave-one-type-out: relative-rise labels, no leak of a type into its own calibration, honest selection."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.linear_model import Ridge

from traitwatch.calibration.loto import (
    Candidate,
    Checkpoints,
    leave_one_type_out,
    relative_rise,
    youden_threshold,
)


def _grid(types, kinds, *, seeds=(0, 1, 2), steps=(15, 30), rise=None, rng=None):
    rows = [(t, s, st) for t in types for s in seeds for st in steps]
    n = len(rows)
    rise = np.zeros(n) if rise is None else rise
    return Checkpoints(type=np.array([r[0] for r in rows]), run=np.array([f"{r[0]}-s{r[1]}" for r in rows]),
                       seed=np.array([r[1] for r in rows]), step=np.array([r[2] for r in rows]), rise=rise,
                       reference=np.array([kinds[r[0]] == "benign" for r in rows]),
                       positive=np.array([kinds[r[0]] != "benign" for r in rows]))


def test_relative_rise_subtracts_the_benign_mean_of_the_same_seed_and_step():
    kinds = {"a": "benign", "b": "benign", "x": "emergent"}
    d = _grid(["a", "b", "x"], kinds, seeds=(0, 1), steps=(15, 30))
    rise = np.arange(len(d), dtype=float) ** 1.5  # distinct values everywhere
    d = Checkpoints(d.type, d.run, d.seed, d.step, rise, d.reference, d.positive)
    rel = relative_rise(d)
    for i in range(len(d)):
        same = d.reference & (d.seed == d.seed[i]) & (d.step == d.step[i])
        assert same.sum() == 2
        assert rel[i] == pytest.approx(rise[i] - rise[same].mean())
    # only the given rows may serve as reference: without type "b", "a" alone is the benign mean
    rows = np.flatnonzero(d.type != "b")
    rel_a = relative_rise(d, rows)
    for i in range(len(d)):
        same = (d.type == "a") & (d.seed == d.seed[i]) & (d.step == d.step[i])
        assert rel_a[i] == pytest.approx(rise[i] - rise[same][0])


_FITS: list[tuple[set[int], set[int]]] = []


class _Spy(RegressorMixin, BaseEstimator):
    """Column 0 of X is the row index: records which rows each fit saw and which rows it then predicted."""

    def fit(self, X, y):
        self.seen_ = set(X[:, 0].astype(int).tolist())
        self.coef_ = Ridge().fit(X[:, 1:], y)
        return self

    def predict(self, X):
        _FITS.append((self.seen_, set(X[:, 0].astype(int).tolist())))
        return self.coef_.predict(X[:, 1:])


def test_a_held_out_type_never_reaches_its_own_calibration():
    kinds = {"g1": "benign", "g2": "benign", "g3": "benign", "e1": "emergent", "e2": "emergent", "d1": "direct"}
    d = _grid(list(kinds), kinds)
    rng = np.random.default_rng(0)
    X = np.column_stack([np.arange(len(d)), rng.normal(size=(len(d), 2))])
    _FITS.clear()
    res = leave_one_type_out(d, [Candidate("spy", X, _Spy()), Candidate("spy2", X.copy(), _Spy())])
    assert len(_FITS) > len(kinds)  # inner folds, both candidates, and the outer fits
    for seen, predicted in _FITS:
        assert not set(d.type[list(seen)]) & set(d.type[list(predicted)]), "a fit saw the type it predicts"
    assert np.isfinite(res.prediction).all() and set(res.chosen) == set(kinds)


def test_a_value_feature_generalises_to_unseen_types_and_a_domain_feature_does_not():
    # Matched twins: each domain has a harmful and a benign set on the same prompts. The "domain" feature
    # is shared by both twins; the "value" feature follows the harm. Only the value feature may score.
    domains = ["code", "medical", "maths", "numbers", "trivia"]
    kinds = {f"{dom}_{side}": ("emergent" if side == "bad" else "benign") for dom in domains for side in ("bad", "good")}
    base = _grid(list(kinds), kinds)
    rng = np.random.default_rng(1)
    harm = np.array([0.01 if kinds[t] == "emergent" else 0.0 for t in base.type])
    rise = harm + rng.normal(0, 0.002, len(base))
    d = Checkpoints(base.type, base.run, base.seed, base.step, rise, base.reference, base.positive)
    domain_code = {dom: i for i, dom in enumerate(domains)}
    domain = np.array([domain_code[t.split("_")[0]] + rng.normal(0, 0.1) for t in d.type])
    value = harm * 100 + rng.normal(0, 0.2, len(d))
    res_value = leave_one_type_out(d, [Candidate("value", value, Ridge())])
    res_domain = leave_one_type_out(d, [Candidate("domain", np.eye(len(domains))[[domain_code[t.split('_')[0]] for t in d.type]], Ridge())])
    good, bad = res_value.summary(n_resamples=50), res_domain.summary(n_resamples=50)
    assert good["auroc"] > 0.95 and good["spearman"] > 0.6 and good["fnr"] < 0.2 and good["fpr"] < 0.2
    assert bad["auroc"] < 0.7
    assert good["auroc_ci"][0] <= good["auroc"] <= good["auroc_ci"][1]
    # choosing between the two inside the loop picks the value feature in every fold
    both = leave_one_type_out(d, [Candidate("domain", domain, Ridge()), Candidate("value", value, Ridge())])
    assert set(both.chosen.values()) == {"value"}


def test_youden_threshold_separates_and_handles_one_class():
    assert youden_threshold(np.array([0, 0, 1, 1], bool), np.array([0.1, 0.2, 0.8, 0.9])) == pytest.approx(0.5)
    assert youden_threshold(np.zeros(3, bool), np.array([1.0, 2.0, 3.0])) == np.inf


def test_too_few_types_is_an_error():
    d = _grid(["a", "b"], {"a": "benign", "b": "emergent"})
    with pytest.raises(ValueError, match="at least 3 types"):
        leave_one_type_out(d, [Candidate("x", np.zeros(len(d)), Ridge())])

"""Leave-one-cell-out: a fold never sees its held-out poison type nor its held-out base."""

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from traitwatch.calibration import crossed
from traitwatch.calibration.crossed import crossed_folds, leave_one_cell_out
from traitwatch.calibration.loto import Candidate, Checkpoints

POISONS = ["a", "b", "c"]
BASES = ["x", "y", "z"]


def _grid(signal: float = 1.0, seed: int = 0):
    """Clean runs of each base (2 seeds) and one poisoned run per (poison, base); a feature that carries the rise."""
    rng = np.random.default_rng(seed)
    poison, base, run, rise = [], [], [], []
    for b in BASES:
        for s in range(2):
            poison.append(""), base.append(b), run.append(f"{b}-clean-s{s}"), rise.append(rng.normal(0, 0.002))
        for p in POISONS:
            poison.append(p), base.append(b), run.append(f"{b}+{p}"), rise.append(0.03 + rng.normal(0, 0.002))
    poison, base, rise = np.array(poison), np.array(base), np.array(rise)
    X = np.column_stack([signal * rise + rng.normal(0, 0.001, rise.size), rng.normal(size=rise.size)])
    data = Checkpoints(type=np.array([f"{b}+{p}" for b, p in zip(base, poison)]), run=np.array(run),
                       seed=np.zeros(rise.size, dtype=int), step=np.full(rise.size, 30), rise=rise,
                       reference=poison == "", positive=poison != "")
    return data, X, poison, base


def test_each_fold_trains_on_other_poisons_and_other_bases_only():
    _, _, poison, base = _grid()
    folds = crossed_folds(poison, base)
    assert len(folds) == len(POISONS) * len(BASES)
    for name, train, test in folds:
        p, b = name.split(" in ")
        assert not np.isin(poison[train], [p]).any() and not np.isin(base[train], [b]).any()
        assert set(base[test]) == {b} and set(poison[test]) <= {p, ""}
        assert (poison[test] == p).any() and (poison[test] == "").any()
        assert (poison[train] == "").any()  # clean runs of the other bases calibrate the threshold


def test_the_loop_never_fits_on_a_held_out_cell(monkeypatch):
    data, X, poison, base = _grid()
    seen = []
    real = crossed._fit_predict

    def spy(candidate, data_, train, test):
        seen.append((set(poison[train]), set(base[train]), set(poison[test]) - {""}, set(base[test])))
        return real(candidate, data_, train, test)

    monkeypatch.setattr(crossed, "_fit_predict", spy)
    leave_one_cell_out(data, [Candidate("ridge", X, Ridge(alpha=1e-6))], poison, base)
    outer = [s for s in seen if len(s[2]) == 1 and len(s[3]) == 1 and len(s[1]) == len(BASES) - 1]
    assert outer
    for train_p, train_b, test_p, test_b in seen:
        assert not (train_p & test_p) and not (train_b & test_b)


def test_a_feature_that_carries_the_rise_is_found_and_noise_is_not():
    data, X, poison, base = _grid()
    good = leave_one_cell_out(data, [Candidate("signal", X[:, :1], Ridge(alpha=1e-6))], poison, base).summary(n_resamples=50)
    assert good["auroc"] == pytest.approx(1.0) and good["fnr"] == 0.0 and good["fpr"] == 0.0
    bad = leave_one_cell_out(data, [Candidate("noise", X[:, 1:], Ridge(alpha=1.0))], poison, base).summary(n_resamples=50)
    assert bad["auroc"] < 0.9
    # every clean run is scored once by each fold of its base; every poisoned run once
    assert good["n"] == len(POISONS) * len(BASES) * (1 + 2)


def test_choice_happens_inside_the_loop():
    data, X, poison, base = _grid()
    res = leave_one_cell_out(data, [Candidate("noise", X[:, 1:], Ridge()), Candidate("signal", X[:, :1], Ridge(alpha=1e-6))],
                             poison, base)
    assert set(res.chosen.values()) == {"signal"}

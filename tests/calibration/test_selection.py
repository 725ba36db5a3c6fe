"""Choosing a monitor's regressor by leave-one-perturbation-out CV (`calibration.selection`)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from traitwatch.calibration.baselines import PC1AbsFeatures
from traitwatch.calibration.selection import SELECTION_CRITERION, select_regressor
from traitwatch.monitor.detector import DriftMonitor

TAU = 0.05


def test_select_regressor_uses_lopo_cv_and_records_every_candidate(cal, fast_candidates) -> None:
    monitor = DriftMonitor(threshold=TAU)
    assert select_regressor(monitor, cal.X, cal.y, cal.perturbation, fast_candidates) is monitor
    assert set(monitor.cv_results_) == set(fast_candidates)
    types = sorted(set(cal.perturbation))
    for res in monitor.cv_results_.values():
        assert sorted(r["left_out"] for r in res["per_group"]) == types
        assert sum(r["n"] for r in res["per_group"]) == len(cal)
        assert {"balanced_error", "fnr", "fpr", "auroc", "rmse"} <= set(res)
    best = min(monitor.cv_results_.values(), key=lambda r: r["balanced_error"])["balanced_error"]
    assert monitor.cv_results_[monitor.selected_name_]["balanced_error"] == best
    assert type(monitor.regressor_) is type(fast_candidates[monitor.selected_name_])
    assert monitor.regressor is None  # parameters stay as given
    assert monitor.cv_criterion_ == SELECTION_CRITERION


def test_select_regressor_needs_two_types(cal) -> None:
    with pytest.raises(ValueError, match="two perturbation types"):
        select_regressor(DriftMonitor(), cal.X, cal.y, np.full(len(cal), "one"), {"Ridge": Ridge()})


def test_out_of_fold_predictions_are_those_of_a_monitor_fitted_without_the_held_out_type(cal) -> None:
    """The feature map is fitted once per fold and shared by the candidates: the same as one monitor each."""
    candidates = {"Ridge": Ridge(alpha=1.0), "Ridge-10": Ridge(alpha=10.0)}
    monitor = select_regressor(DriftMonitor(threshold=TAU, features=PC1AbsFeatures()), cal.X, cal.y, cal.perturbation,
                               candidates)
    for name, regressor in candidates.items():
        pred = np.empty_like(cal.y)
        for left_out in np.unique(cal.perturbation):
            test = cal.perturbation == left_out
            alone = DriftMonitor(regressor, threshold=TAU, features=PC1AbsFeatures()).fit(cal.X[~test], cal.y[~test])
            pred[test] = alone.predict(cal.X[test])
        assert monitor.cv_results_[name]["rmse"] == pytest.approx(float(np.sqrt(np.mean((pred - cal.y) ** 2))))
    assert monitor.features_ is not None and monitor.regressor is None

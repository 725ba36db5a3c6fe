from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.ensemble import RandomForestRegressor
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import Ridge
from sklearn.utils.estimator_checks import (
    check_estimators_unfitted,
    check_get_params_invariance,
    check_no_attributes_set_in_init,
    check_parameters_default_constructible,
    check_set_params,
)

from traitwatch.calibration.baselines import PC1AbsFeatures
from traitwatch.calibration.metrics import auroc, detection_metrics
from traitwatch.monitor.detector import DriftMonitor, StepAwareAlarm

TAU = 0.05


def test_default_monitor_is_near_perfect_on_held_out_synthetic_types(cal, held) -> None:
    monitor = DriftMonitor(threshold=TAU).fit(cal.X, cal.y)
    m = detection_metrics(held.y, monitor.predict(held.X), tau=TAU)
    assert m["n_dangerous"] > 0 and m["n_safe"] > 0
    assert m["fnr"] <= 0.1 and m["fpr"] <= 0.1 and m["auroc"] >= 0.97


def test_shuffled_calibration_labels_give_chance_auroc(cal, held) -> None:
    # One permutation's AUROC swings widely (held-out checkpoints of a run move together, so there are
    # only ~9 effective samples); the mean over many permutations is what must sit at chance.
    rng = np.random.RandomState(0)
    scores = []
    for seed in range(40):
        forest = RandomForestRegressor(n_estimators=10, max_depth=5, min_samples_leaf=5, random_state=seed)
        monitor = DriftMonitor(forest, threshold=TAU).fit(cal.X, rng.permutation(cal.y))
        scores.append(auroc(held.y > TAU, monitor.predict(held.X)))
    assert abs(np.mean(scores) - 0.5) < 0.1


def test_monitor_follows_sklearn_conventions(cal) -> None:
    monitor = DriftMonitor(Ridge(alpha=2.0), threshold=0.1, features=PC1AbsFeatures())
    twin = clone(monitor)
    assert twin.get_params()["threshold"] == 0.1 and twin.get_params()["regressor__alpha"] == 2.0
    with pytest.raises(NotFittedError):
        monitor.predict(cal.X)
    assert monitor.fit(cal.X, cal.y) is monitor
    assert monitor.n_features_in_ == cal.X.shape[1]
    assert monitor.regressor.__dict__ == Ridge(alpha=2.0).__dict__  # the given regressor is not fitted
    assert np.array_equal(monitor.alarm(cal.X), monitor.predict(cal.X) > 0.1)
    with pytest.raises(ValueError, match="features"):
        monitor.predict(cal.X[:, :5])
    for check in (check_no_attributes_set_in_init, check_parameters_default_constructible,
                  check_get_params_invariance, check_set_params, check_estimators_unfitted):
        check("DriftMonitor", DriftMonitor())


def test_predictions_are_clipped_to_unit_interval(cal) -> None:
    monitor = DriftMonitor(Ridge(alpha=1e-6)).fit(cal.X, cal.y)
    far = np.vstack([cal.X * 1000, -cal.X * 1000])
    pred = monitor.predict(far)
    assert pred.min() == 0.0 and pred.max() == 1.0


def test_bad_labels_and_thresholds_are_refused(cal) -> None:
    with pytest.raises(ValueError, match="percentages"):
        DriftMonitor().fit(cal.X, cal.y * 100)
    with pytest.raises(ValueError, match="threshold"):
        DriftMonitor(threshold=5).fit(cal.X, cal.y)


def _with_step(table) -> np.ndarray:
    return np.column_stack([table.X, table.step])


def test_step_aware_alarm_separates_held_out_runs(cal, held) -> None:
    alarm = StepAwareAlarm()
    assert alarm.fit(_with_step(cal), cal.y > TAU) is alarm
    fired = alarm.alarm(_with_step(held))
    truth = held.y > TAU
    assert np.mean(fired[truth]) >= 0.8 and np.mean(fired[~truth]) <= 0.2
    assert np.array_equal(alarm.predict(_with_step(held)), fired)
    assert np.array_equal(alarm.alarm(_with_step(held)), alarm.predict_proba(_with_step(held))[:, 1] > 0.5)


def test_step_aware_alarm_takes_a_fixed_pc1_and_checks_steps(split, cal) -> None:
    world = split[0]
    alarm = StepAwareAlarm(pc1=world.em_axis * 3).fit(_with_step(cal), cal.y > TAU)
    assert np.allclose(alarm.pc1_, world.em_axis)
    bad = _with_step(cal)
    bad[0, -1] = 0
    with pytest.raises(ValueError, match="step"):
        StepAwareAlarm().fit(bad, cal.y > TAU)
    with pytest.raises(ValueError, match="step"):
        alarm.alarm(bad)
    with pytest.raises(ValueError, match="pc1"):
        StepAwareAlarm(pc1=[1.0, 0.0]).fit(_with_step(cal), cal.y > TAU)
    for check in (check_no_attributes_set_in_init, check_parameters_default_constructible,
                  check_get_params_invariance, check_set_params, check_estimators_unfitted):
        check("StepAwareAlarm", StepAwareAlarm())
    assert clone(alarm).get_params()["pc1"] is not None

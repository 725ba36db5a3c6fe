from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, recall_score, roc_auc_score

from traitwatch.calibration.metrics import (
    alarm_lead_lag,
    auroc,
    cluster_bootstrap_ci,
    confusion_counts,
    detection_metrics,
    false_negative_rate,
    false_positive_rate,
    lead_lag_summary,
    per_perturbation_metrics,
)

# A fixed example with ties in the score and both kinds of error.
TRUTH = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 0, 1], dtype=bool)
ALARM = np.array([1, 0, 1, 1, 0, 1, 0, 0, 0, 1, 1, 0], dtype=bool)
SCORE = np.array([0.9, 0.2, 0.7, 0.7, 0.1, 0.7, 0.3, 0.2, 0.0, 0.8, 0.6, 0.2])


def _sklearn_reference(t: np.ndarray, a: np.ndarray, s: np.ndarray) -> dict[str, float]:
    tn, fp, fn, tp = confusion_matrix(t, a, labels=[False, True]).ravel()
    return {
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "fnr": 1.0 - recall_score(t, a),
        "fpr": 1.0 - recall_score(~t, ~a),
        "accuracy": accuracy_score(t, a),
        "balanced_error": 1.0 - balanced_accuracy_score(t, a),
        "auroc": roc_auc_score(t, s),
    }


def _ours(t: np.ndarray, a: np.ndarray, s: np.ndarray) -> dict[str, float]:
    rates = detection_metrics(t.astype(float), a.astype(float), tau=0.5)  # label t, alarm a
    return {
        **{k: v for k, v in confusion_counts(t, a).items() if k in ("tp", "fp", "tn", "fn")},
        "fnr": false_negative_rate(t, a),
        "fpr": false_positive_rate(t, a),
        "accuracy": rates["accuracy"],
        "balanced_error": rates["balanced_error"],
        "auroc": auroc(t, s),
    }


def test_metric_functions_agree_with_sklearn_on_a_fixed_example() -> None:
    ref, ours = _sklearn_reference(TRUTH, ALARM, SCORE), _ours(TRUTH, ALARM, SCORE)
    for key, value in ref.items():
        assert ours[key] == pytest.approx(value, abs=1e-12), key


@pytest.mark.parametrize("seed", range(5))
def test_metric_functions_agree_with_sklearn_on_random_examples(seed: int) -> None:
    rng = np.random.RandomState(seed)
    t = rng.rand(200) < 0.4
    s = np.round(rng.rand(200) + 0.5 * t, 1)  # rounding makes many ties
    a = s > 0.8
    ref, ours = _sklearn_reference(t, a, s), _ours(t, a, s)
    for key, value in ref.items():
        assert ours[key] == pytest.approx(value, abs=1e-12), key


def test_detection_metrics_thresholds_label_and_prediction_at_tau() -> None:
    y = np.array([0.0, 0.05, 0.06, 0.3])
    pred = np.array([0.051, 0.0, 0.2, 0.049])
    m = detection_metrics(y, pred, tau=0.05)
    # label: rate > tau -> [F, F, T, T]; alarm: pred > tau -> [T, F, T, F]
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (1, 1, 1, 1)
    assert m["auroc"] == pytest.approx(roc_auc_score(y > 0.05, pred))


def test_undefined_rates_are_nan_not_zero() -> None:
    safe_only = np.zeros(4, dtype=bool)
    assert math.isnan(false_negative_rate(safe_only, safe_only))
    assert math.isnan(auroc(safe_only, np.arange(4.0)))
    assert false_positive_rate(safe_only, safe_only) == 0.0


def test_continuous_input_to_a_boolean_metric_is_refused() -> None:
    with pytest.raises(ValueError, match="boolean"):
        false_negative_rate(np.array([0.2, 0.0]), np.array([True, False]))


def _runs_with_known_fnr(p_miss: float, n_runs: int, per_run: int, rng: np.random.RandomState) -> tuple:
    """Every checkpoint dangerous; each run has its own miss probability around p_miss (runs differ)."""
    run_p = np.clip(p_miss + rng.uniform(-0.1, 0.1, n_runs), 0, 1)
    runs = np.repeat(np.arange(n_runs), per_run)
    missed = rng.rand(runs.size) < run_p[runs]
    y = np.full(runs.size, 0.5)
    pred = np.where(missed, 0.0, 0.5)
    return y, pred, runs


def test_cluster_bootstrap_ci_covers_the_true_rate_in_a_known_case() -> None:
    p_miss, hits, n_sets = 0.2, 0, 40
    for i in range(n_sets):
        y, pred, runs = _runs_with_known_fnr(p_miss, 30, 8, np.random.RandomState(i))
        lo, hi = cluster_bootstrap_ci(y, pred, runs, tau=0.05, n_resamples=400, random_state=i, metrics=("fnr",))["fnr"]
        hits += lo <= p_miss <= hi
    assert hits / n_sets >= 0.85  # nominal 95%


def test_cluster_bootstrap_is_reproducible_and_a_point_when_runs_are_identical() -> None:
    y = np.tile([0.5, 0.5, 0.0, 0.0], 10)
    pred = np.tile([0.5, 0.0, 0.0, 0.5], 10)
    runs = np.repeat(np.arange(10), 4)
    ci = cluster_bootstrap_ci(y, pred, runs, tau=0.05, n_resamples=200, random_state=3)
    assert ci == cluster_bootstrap_ci(y, pred, runs, tau=0.05, n_resamples=200, random_state=3)
    point = detection_metrics(y, pred, tau=0.05)
    for key in ("fnr", "fpr", "accuracy"):
        assert ci[key] == pytest.approx((point[key], point[key]))


def test_bootstrap_resamples_runs_so_correlated_runs_widen_the_ci() -> None:
    # Each run is either caught completely or missed completely: 20 effective samples, not 400.
    rng = np.random.RandomState(0)
    runs = np.repeat(np.arange(20), 20)
    missed_run = rng.rand(20) < 0.3
    y = np.full(runs.size, 0.5)
    pred = np.where(missed_run[runs], 0.0, 0.5)
    by_run = cluster_bootstrap_ci(y, pred, runs, tau=0.05, random_state=0, metrics=("fnr",))["fnr"]
    by_row = cluster_bootstrap_ci(y, pred, np.arange(runs.size), tau=0.05, random_state=0, metrics=("fnr",))["fnr"]
    assert by_run[1] - by_run[0] > 2 * (by_row[1] - by_row[0])


def test_alarm_lead_lag_per_run() -> None:
    tau = 0.05
    table = [  # run, step, EM rate, alarm -- rows deliberately out of step order
        ("early", 30, 0.10, True), ("early", 10, 0.00, False), ("early", 20, 0.00, True), ("early", 40, 0.2, True),
        ("late", 10, 0.00, False), ("late", 20, 0.10, False), ("late", 30, 0.20, True),
        ("missed", 10, 0.00, False), ("missed", 20, 0.30, False),
        ("false", 10, 0.00, True), ("false", 20, 0.01, False),
        ("quiet", 10, 0.00, False),
    ]
    run, step, y, alarm = (np.array(c) for c in zip(*table))
    rows = {r["run_id"]: r for r in alarm_lead_lag(run, step, y, alarm, tau=tau)}
    assert rows["early"] == {"run_id": "early", "crossing_step": 30, "alarm_step": 20, "lead_steps": 10,
                             "lead_checkpoints": 1, "status": "both"}
    assert (rows["late"]["lead_steps"], rows["late"]["lead_checkpoints"]) == (-10, -1)
    assert rows["missed"]["status"] == "missed" and rows["missed"]["lead_steps"] is None
    assert rows["false"]["status"] == "false_alarm" and rows["false"]["crossing_step"] is None
    assert rows["quiet"]["status"] == "quiet"
    summary = lead_lag_summary(list(rows.values()))
    assert summary["n_runs_crossing"] == 3 and summary["n_runs_both"] == 2
    assert summary["mean_lead_steps"] == 0.0 and summary["n_at_or_before"] == 1
    assert summary["n_missed_runs"] == 1 and summary["n_false_alarm_runs"] == 1


def test_per_perturbation_breakdown_adds_up_to_the_pooled_counts() -> None:
    rng = np.random.RandomState(1)
    y, pred = rng.rand(60) * 0.2, rng.rand(60) * 0.2
    pert = np.repeat(["a", "b", "c"], 20)
    rows = per_perturbation_metrics(y, pred, pert, tau=0.05)
    pooled = detection_metrics(y, pred, tau=0.05)
    assert [r["perturbation"] for r in rows] == ["a", "b", "c"]
    for key in ("tp", "fp", "tn", "fn"):
        assert sum(r[key] for r in rows) == pooled[key]

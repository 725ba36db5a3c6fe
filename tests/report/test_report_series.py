"""`run_series`: reading runs for a report, with every missing piece turned into a note, never an error."""

from __future__ import annotations

import math

import numpy as np
import pytest

from traitwatch.calibration.synthetic import TRAIT_NAMES
from traitwatch.monitor import load_monitor
from traitwatch.report import PROXY_LABEL, RunSeries, run_series


def _texts(series: RunSeries) -> str:
    return "\n".join(n.text for n in series.all_notes())


def test_full_run_reads_every_series(store):
    s = run_series(store, "full")
    assert s.traits == TRAIT_NAMES and s.drift.shape == (6, 7)
    assert s.prediction_source == "stored during training" and s.threshold == pytest.approx(0.05)
    np.testing.assert_allclose(s.loss, 2.0 - np.arange(0, 60, 10) / 50)
    assert s.verdicts() == ("ok", "ok", "ok", "ok", "alarm", "alarm")
    assert (40, "stopped") in s.recorded_alarms and (50, "flagged") in s.recorded_alarms
    judged, proxy = sorted(s.behavior, key=lambda b: b.is_proxy)
    assert (judged.metric, judged.is_proxy, judged.steps.tolist()) == ("em_rate", False, [20, 50])
    np.testing.assert_allclose(judged.ci_high, [0.07, 0.15])
    assert proxy.is_proxy and PROXY_LABEL in proxy.label and np.isnan(proxy.ci_low).all()
    assert s.all_notes() == []  # nothing missing: nothing to say


def test_run_without_monitor_behaviour_or_loss_is_described_not_refused(store):
    s = run_series(store, "bare")
    assert s.predicted_em is None and s.threshold is None and s.loss is None and s.behavior == ()
    assert set(s.verdicts()) == {"no monitor"}
    text = _texts(s)
    assert "no predicted EM rate" in text and "--monitor" in text
    assert "no behavioural EM measured" in text and "no training loss stored" in text


def test_absent_or_null_extras_become_nan_gaps(store):
    s = run_series(store, "gappy")
    assert np.isnan(s.predicted_em[[2, 3]]).all() and np.isfinite(s.predicted_em[[0, 1, 4]]).all()
    assert np.isnan(s.loss[2:]).all() and np.isfinite(s.loss[:2]).all()
    assert s.verdicts()[2:4] == ("no prediction", "no prediction")
    text = _texts(s)
    assert "predicted EM rate is missing (NaN) at 2 of 4 trained" in text
    assert "training loss is missing at 3 of 4 trained" in text
    assert "only proxy metrics" in text


def test_single_checkpoint_is_noted(store):
    s = run_series(store, "single")
    assert s.n == 1 and "single checkpoint (step 0)" in _texts(s)


def test_monitor_predictions_replace_stored_ones(store, monitor_path):
    mon = load_monitor(monitor_path)
    s = run_series(store, "full", monitor=mon)
    assert s.prediction_source == "monitor monitor.json" and s.threshold == mon.threshold
    X = np.array([[store.measurements("full")[i].drift[t] for t in TRAIT_NAMES] for i in range(6)])
    np.testing.assert_allclose(s.predicted_em, mon.predict(X))
    assert "predictions recomputed" in _texts(s)


def test_monitor_from_another_basis_gives_a_note_not_predictions(store, monitor_path):
    s = run_series(store, "other-basis", monitor=load_monitor(monitor_path))
    assert s.predicted_em is None and set(s.verdicts()) == {"no monitor"}
    text = _texts(s)
    assert "another basis" in text
    assert "trained without a monitor" not in text  # the specific reason replaces the generic one


def test_nan_drift_gives_no_prediction_and_a_note():
    s = RunSeries(
        run_id="r", steps=[0, 10, 20], traits=("a", "b"),
        drift=[[0.0, 0.0], [math.nan, 0.1], [0.2, 0.3]], norms=[0.0, math.nan, 0.36],
        predicted_em=[0.0, math.nan, 0.2], threshold=0.05,
    )
    assert s.verdicts() == ("ok", "no prediction", "alarm")
    text = _texts(s)
    assert "1 of 6 trait-drift values are missing" in text and "drift norm is missing (NaN) at 1 of 3" in text


def test_step_0_without_a_loss_or_a_prediction_is_not_a_gap():
    """The base model has no training loss and is never predicted: the notes list only what a user can act on."""
    s = RunSeries(run_id="r", steps=np.array([0, 10, 20]), traits=("a",), drift=np.zeros((3, 1)), norms=np.zeros(3),
                  predicted_em=np.array([math.nan, 0.1, 0.2]), threshold=0.5, loss=np.array([math.nan, 1.0, 0.9]))
    assert not [n for n in s.all_notes() if n.topic in ("loss", "em") and "missing" in n.text]
    gap = RunSeries(run_id="g", steps=np.array([0, 10, 20]), traits=("a",), drift=np.zeros((3, 1)), norms=np.zeros(3),
                    predicted_em=np.array([math.nan, math.nan, 0.2]), threshold=0.5, loss=np.array([math.nan, 1.0, math.nan]))
    texts = [n.text for n in gap.all_notes()]
    assert any("predicted EM rate is missing (NaN) at 1 of 2 trained" in t for t in texts)
    assert any("training loss is missing at 1 of 2 trained" in t for t in texts)

"""`run_verdict`: one line per run that says whether it alarmed, when and on which rows, or why it could not."""

from __future__ import annotations

import math

import numpy as np
import pytest

from traitwatch.monitor import load_monitor
from traitwatch.report import Note, RunSeries, run_series, run_verdict
from traitwatch.report.verdict import TOP_SUSPECTS
from traitwatch.store import SuspectRow, Suspects


def _run(pred, threshold, *, steps=None, **kw) -> RunSeries:
    steps = list(range(0, 10 * len(pred), 10)) if steps is None else steps
    return RunSeries(run_id="r", steps=steps, traits=("a",), drift=np.zeros((len(steps), 1)),
                     norms=np.zeros(len(steps)), predicted_em=pred, threshold=threshold, **kw)


def _suspects(step: int, since: int, rows: list[int], *, alarm: bool) -> Suspects:
    return Suspects(step=step, since_step=since, k=len(rows), rows_seen=40, alarm=alarm,
                    rows=tuple(SuspectRow(row, score=1.0 - i / 100) for i, row in enumerate(rows)))


def test_an_alarming_run_names_its_first_alarm_step_reading_and_suspects():
    pred, tau = [math.nan, 0.01, 0.2, 0.3, 0.02], 0.05
    first = next(k for k, p in enumerate(pred) if p > tau)
    own = [17, 3, 29, 8, 11]  # the first alarm's suspects, best first
    run = _run(pred, tau, suspects=(
        _suspects(10, 0, [90, 91], alarm=False),  # a list without an alarm is no suspect list
        _suspects(10 * first, 10, own, alarm=True),
        _suspects(10 * first + 10, 10, [55, 56], alarm=True),  # the next alarm's list
    ))
    v = run_verdict(run)
    assert v.alarm and v.run_id == "r"
    n_alarms = sum(p > tau for p in pred if math.isfinite(p))
    assert f"ALARM at step {10 * first} (reading {pred[first]:.4g} > tau {tau:.4g})" in v.text
    assert f"{n_alarms} of {len(pred)} checkpoints alarmed" in v.text
    assert f"suspects: rows {', '.join(map(str, own[:TOP_SUSPECTS]))} (top {TOP_SUSPECTS} of {len(own)})" in v.text
    assert not any(str(row) in v.text for row in (*own[TOP_SUSPECTS:], 90, 55))


def test_an_alarm_recorded_in_training_names_the_action(store):
    run = run_series(store, "full")
    first = run.verdicts().index("alarm")
    step = int(run.steps[first])
    text = run_verdict(run).text
    assert text.startswith(f"Run full: ALARM at step {step} (reading {run.predicted_em[first]:.4g} > tau")
    assert f"action in training: {dict(run.recorded_alarms)[step]}" in text
    assert "suspects" not in text  # the run was given no per-row scores


def test_a_clean_run_with_a_rule_says_no_alarm_with_its_highest_reading():
    pred, tau = [math.nan, 0.01, 0.04, 0.03], 0.05
    run = _run(pred, tau)
    read = [(p, 10 * k) for k, p in enumerate(pred) if math.isfinite(p)]
    high, at = max(read)
    v = run_verdict(run)
    assert not v.alarm
    assert v.text == (f"Run r: no alarm over {len(read)} checkpoints to step {read[-1][1]}; "
                      f"highest reading {high:.4g} (step {at}), tau {tau:.4g}.")


def test_a_trained_checkpoint_without_a_reading_is_counted():
    run = _run([math.nan, 0.01, math.nan, 0.02], 0.05)
    assert run_verdict(run).text.endswith("; no reading at 1 trained checkpoint.")


def test_a_run_without_monitor_says_why_no_alarm_could_be_raised(store):
    run = run_series(store, "bare")
    assert run.predicted_em is None and run.threshold is None  # the input: trained without a monitor
    v = run_verdict(run)
    assert not v.alarm and v.text.startswith("Run bare: no alarm could be raised: no monitor")


def test_a_monitor_from_another_basis_is_named_as_the_reason(store, monitor_path):
    v = run_verdict(run_series(store, "other-basis", monitor=load_monitor(monitor_path)))
    assert not v.alarm and "no alarm could be raised: the monitor given could not be applied" in v.text


@pytest.mark.parametrize(("run", "why"), [
    (_run([0.01, 0.3], None, notes=(Note.about("r", "em", "monitor attached without its alarm. AUROC 0.34",
                                               "alarms_off"),)),
     "its monitor was attached with its alarm off; highest reading 0.3"),
    (_run([0.01, 0.3], None), "no alarm threshold (tau) is known; highest reading 0.3"),
    (_run([math.nan, math.nan], 0.05), "no prediction at any checkpoint (tau 0.05)"),
    (_run([], 0.05, steps=[]), "no checkpoints yet"),
])
def test_each_reason_no_alarm_could_be_raised(run, why):
    v = run_verdict(run)
    assert not v.alarm and v.text == f"Run r: no alarm could be raised: {why}."

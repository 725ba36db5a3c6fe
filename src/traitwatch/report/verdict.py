"""One line per run saying what happened, for the top of a report.

Why: the figures and tables show everything, but the reader's first question is "did it alarm, when, and on
which rows?". That answer, or the reason no alarm could be raised at all, must come before any figure, so
that a quiet run without a monitor is never read as a clean run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from traitwatch.report.series import RunSeries, Verdict

__all__ = ["RunVerdict", "run_verdict"]

TOP_SUSPECTS = 3
"""Suspect rows named in a verdict line; the suspects table lists them all."""


@dataclass(frozen=True)
class RunVerdict:
    """A run's verdict line; `alarm` marks the lines the page shows as alarms."""

    run_id: str
    alarm: bool
    text: str


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _reading(run: RunSeries, k: int) -> float:
    return math.nan if run.predicted_em is None else float(run.predicted_em[k])


def run_verdict(run: RunSeries) -> RunVerdict:
    """The run's first alarm and its suspects; else its highest reading against tau; else why it cannot alarm."""
    verdicts = run.verdicts()
    alarms = [k for k, v in enumerate(verdicts) if v == "alarm"]
    if alarms:
        return RunVerdict(run.run_id, True, f"Run {run.run_id}: {_alarm_text(run, alarms)}.")
    return RunVerdict(run.run_id, False, f"Run {run.run_id}: {_quiet_text(run, verdicts)}.")


def _alarm_text(run: RunSeries, alarms: list[int]) -> str:
    k = alarms[0]
    step = int(run.steps[k])
    text = f"ALARM at step {step} ({_alarm_reading(run, k)}), {len(alarms)} of {_count(run.n, 'checkpoint')} alarmed"
    action = dict(run.recorded_alarms).get(step)
    if action is not None:
        text += f"; action in training: {action}"
    return text + _suspects_text(run, step)


def _alarm_reading(run: RunSeries, k: int) -> str:
    """Why the checkpoint alarmed: its reading above tau, or (no reading there) the alarm training recorded."""
    pred = _reading(run, k)
    if math.isfinite(pred):
        return f"reading {pred:.4g} > tau {run.threshold:.4g}" if run.threshold is not None else (
            f"reading {pred:.4g}, no tau known; alarm recorded in training")
    tau = f", tau {run.threshold:.4g}" if run.threshold is not None else ""
    return f"alarm recorded in training, no reading at this step{tau}"


def _suspects_text(run: RunSeries, step: int) -> str:
    """The top rows of the alarm's suspect list (the first alarm's own, else the earliest alarm's that has one)."""
    lists = sorted((s for s in run.suspects if s.alarm), key=lambda s: (s.step != step, s.step))
    if not lists:
        return ""
    s = lists[0]
    whose = "suspects" if s.step == step else f"suspects of the step-{s.step} alarm"
    if not s.rows:
        return f"; {whose}: no scored row was trained in steps {s.since_step + 1}-{s.step}"
    rows = ", ".join(str(r.row) for r in s.rows[:TOP_SUSPECTS])
    more = f" (top {TOP_SUSPECTS} of {len(s.rows)})" if len(s.rows) > TOP_SUSPECTS else ""
    return f"; {whose}: rows {rows}{more}"


def _quiet_text(run: RunSeries, verdicts: tuple[Verdict, ...]) -> str:
    """No alarm: over which checkpoints, and how close it came; or why there could be none."""
    read = [k for k, v in enumerate(verdicts) if v == "ok"]
    if not read:
        return f"no alarm could be raised: {_why_no_alarm(run)}"
    top = max(read, key=lambda k: _reading(run, k))
    text = (f"no alarm over {_count(len(read), 'checkpoint')} to step {int(run.steps[read[-1]])}; highest reading "
            f"{_reading(run, top):.4g} (step {int(run.steps[top])}), tau {run.threshold:.4g}")
    unread = sum(v == "no prediction" and step > 0 for v, step in zip(verdicts, run.steps.tolist()))
    return text + (f"; no reading at {_count(unread, 'trained checkpoint')}" if unread else "")


def _why_no_alarm(run: RunSeries) -> str:
    codes = {n.code for n in run.notes}
    readings = [] if run.predicted_em is None else [float(p) for p in run.predicted_em if math.isfinite(p)]
    highest = f"; highest reading {max(readings):.4g}" if readings else ""
    if run.n == 0:
        return "no checkpoints yet"
    if run.threshold is not None:
        return f"no prediction at any checkpoint (tau {run.threshold:.4g})"
    if "alarms_off" in codes:
        return f"its monitor was attached with its alarm off{highest}"
    if "no_prediction" in codes:
        return "the monitor given could not be applied to it (see the note at the EM figure)"
    if run.predicted_em is not None:
        return f"no alarm threshold (tau) is known{highest}"
    return "no monitor (trained without one, and none given with --monitor)"

"""Run report figures: `RunSeries` -> `Chart` / `Table`, several runs overlaid in each figure.

Why overlay instead of one section per run: the question a report answers is usually comparative (did
the insecure-code run drift away from the benign one, and when?), which is easiest to see with runs on
shared axes. Each run keeps one colour in every figure, and alarms are always red crosses.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from traitwatch.report.chart import ALARM_COLOR, Chart, HLine, Table, Trace, color_for
from traitwatch.report.series import PROXY_LABEL, RISE_METRIC, NoteTopic, RunSeries, merge_notes
from traitwatch.store import merge_suspects

__all__ = [
    "checkpoint_table",
    "drift_chart",
    "em_chart",
    "loss_chart",
    "norm_chart",
    "run_charts",
    "run_summary_table",
    "suspects_table",
]


def _notes(runs: Sequence[RunSeries], *topics: NoteTopic) -> tuple[str, ...]:
    """The runs' notes on these topics, each remark once (the same gap in several runs is one note)."""
    return tuple(merge_notes(n for r in runs for n in r.all_notes() if n.topic in topics))


def _steps(run: RunSeries) -> tuple[int, ...]:
    return tuple(int(s) for s in run.steps)


def drift_chart(runs: Sequence[RunSeries]) -> Chart:
    """One panel per trait (drift d_t along that trait's direction over steps), runs overlaid."""
    traits: list[str] = []
    for r in runs:
        traits.extend(t for t in r.traits if t not in traits)
    traces = []
    for i, r in enumerate(runs):
        for k, trait in enumerate(r.traits):
            traces.append(Trace(
                name=r.run_id, x=_steps(r), y=r.drift[:, k], panel=traits.index(trait), color=color_for(i),
                group=r.run_id, show_legend=k == 0,
            ))
    differ = {r.traits for r in runs if r.n}
    notes = _notes(runs, "drift")
    if len(differ) > 1:
        notes += ("The runs measured different trait sets; a trait panel shows only the runs that measured it.",)
    return Chart(
        key="trait_drift", title="Trait drift over training", traces=tuple(traces), x_label="step",
        y_label="drift", panels=tuple(traits) or ("",), notes=notes,
    )


def norm_chart(runs: Sequence[RunSeries]) -> Chart:
    """||d_t||: how far a run has moved in trait space, whatever the direction."""
    traces = tuple(
        Trace(name=r.run_id, x=_steps(r), y=r.norms, color=color_for(i), group=r.run_id) for i, r in enumerate(runs)
    )
    return Chart(key="drift_norm", title="Drift norm", traces=traces, x_label="step", y_label="||drift||",
                 notes=_notes(runs, "norm"))


def _thresholds(runs: Sequence[RunSeries]) -> tuple[HLine, ...]:
    by_value: dict[float, list[str]] = {}
    for r in runs:
        if r.threshold is not None and r.predicted_em is not None:
            by_value.setdefault(float(r.threshold), []).append(r.run_id)
    if len(by_value) == 1:
        (value,) = by_value
        return (HLine(value, f"tau = {value:g} (alarm threshold)"),)
    return tuple(HLine(v, f"tau = {v:g} ({', '.join(ids)})") for v, ids in by_value.items())


REFERENCE_TARGETS = ("along_direction", "distance_from_reference")
"""What a reference monitor's predictions are (`reference.ReferenceMonitor.target`)."""

RISE_AXIS = "rise of the EM proxy (style-matched proxy minus its step-0 value)"
"""The y axis of the prediction chart when the monitor predicts a rise: the units of `proxy_style_rise`."""


def _predicts_rise(runs: Sequence[RunSeries]) -> bool:
    return any(r.predicted_em is not None and r.prediction_target == "relative_rise" for r in runs)


def em_chart(runs: Sequence[RunSeries]) -> Chart:
    """The monitor's prediction against tau with alarm markers, beside the behaviour measured at some steps.

    Judged EM rates are filled diamonds with their CI; proxy metrics are open circles whose legend entry
    says they are proxies, so a reader cannot take a likelihood comparison for a rate of behaviour.

    One axis holds one quantity. A monitor that predicts an EM rate is drawn with the measured rates on
    "EM rate (fraction)". A monitor that predicts the rise of the EM proxy over benign finetuning (a few
    thousandths) is drawn with the measured rise label (`proxy_style_rise`) on an axis in those units; the
    absolute proxy (around 0.4) and judged rates are other quantities, left to the checkpoint table.
    """
    if any(r.prediction_target in REFERENCE_TARGETS for r in runs):
        return _reference_chart(runs)
    if _predicts_rise(runs):
        return _rise_chart(runs)
    traces: list[Trace] = []
    for i, r in enumerate(runs):
        color = color_for(i)
        if r.predicted_em is not None:
            traces.append(Trace(name=f"{r.run_id}: predicted EM ({r.prediction_source})", x=_steps(r),
                                y=r.predicted_em, color=color, group=r.run_id))
        traces += _alarm_traces(r)
        for b in r.behavior:
            traces.append(Trace(
                name=f"{r.run_id}: {b.label}", x=tuple(int(s) for s in b.steps), y=b.values, kind="markers",
                marker="circle-open" if b.is_proxy else "diamond", color=color, group=r.run_id,
                y_low=b.ci_low, y_high=b.ci_high,
            ))
    return Chart(
        key="em_rate", title="EM rate: predicted (monitor) and measured (behaviour)", traces=tuple(traces),
        x_label="step", y_label="EM rate (fraction)", hlines=_thresholds(runs), notes=_notes(runs, "em"),
    )


def _rise_chart(runs: Sequence[RunSeries]) -> Chart:
    """`em_chart` for a monitor that predicts the rise of the EM proxy: prediction and measured rise, same units."""
    traces: list[Trace] = []
    left_out: set[str] = set()
    for i, r in enumerate(runs):
        color = color_for(i)
        if r.predicted_em is not None and r.prediction_target == "relative_rise":
            traces.append(Trace(name=f"{r.run_id}: predicted rise over benign finetuning ({r.prediction_source})",
                                x=_steps(r), y=r.predicted_em, color=color, group=r.run_id))
            traces += _alarm_traces(r)
        elif r.predicted_em is not None:
            left_out.add(f"{r.run_id}'s predicted EM rate")
        for b in r.behavior:
            if b.metric != RISE_METRIC:
                left_out.add(b.metric)
                continue
            traces.append(Trace(
                name=f"{r.run_id}: measured rise over step 0 ({b.metric}" + (f"): {PROXY_LABEL}" if b.is_proxy else f", {b.source})"),
                x=tuple(int(s) for s in b.steps),
                y=b.values, kind="markers", marker="circle-open" if b.is_proxy else "diamond", color=color,
                group=r.run_id, y_low=b.ci_low, y_high=b.ci_high,
            ))
    notes = [("Prediction and measurement share one unit, the rise of the style-matched EM proxy: the monitor "
              "predicts a run's rise over benign finetuning (its rise minus benign runs' rise), the label is each "
              f"run's rise over its own step 0 ({RISE_METRIC}); compare a run's prediction with its rise minus a "
              "benign run's.")]
    if left_out:
        notes.append(f"Not in these units, so not drawn here (see the checkpoint table): {', '.join(sorted(left_out))}.")
    return Chart(
        key="em_rate", title="Rise of the EM proxy: predicted (monitor) and measured (label)", traces=tuple(traces),
        x_label="step", y_label=RISE_AXIS, hlines=_thresholds(runs), notes=(*notes, *_notes(runs, "em")),
    )


def _reference_chart(runs: Sequence[RunSeries]) -> Chart:
    """`em_chart` for runs read against a reference run: each run's drift along the misalignment direction, its
    reference's beside it (dashed), and the difference the alarm reads, against the threshold."""
    traces: list[Trace] = []
    for i, r in enumerate(runs):
        color = color_for(i)
        if r.along is not None:
            traces.append(Trace(name=f"{r.run_id}: drift along the direction", x=_steps(r), y=r.along, color=color,
                                group=r.run_id, panel=0))
        if r.reference_along is not None:
            traces.append(Trace(name=f"{r.run_id}: its reference run {r.reference_run}", x=_steps(r),
                                y=r.reference_along, color=color, dash="dash", group=r.run_id, panel=0))
        if r.predicted_em is not None and r.prediction_target in REFERENCE_TARGETS:
            what = "run minus reference" if r.prediction_target == "along_direction" else "distance from reference"
            traces.append(Trace(name=f"{r.run_id}: {what}", x=_steps(r), y=r.predicted_em, color=color,
                                group=r.run_id, panel=1))
            traces += [dataclasses.replace(t, panel=1) for t in _alarm_traces(r)]
    notes = ("The reference run is the same set with its highest-loss rows swapped for its cleanest, trained in "
             "the same recipe and seed: it carries the domain, so the difference is what the suspect rows added.",
             *_notes(runs, "em"))
    if not any(t.panel == 0 for t in traces):  # an activation-space read stores no trait direction to draw
        return Chart(key="em_rate", title="Each run against its reference run",
                     traces=tuple(dataclasses.replace(t, panel=0) for t in traces), x_label="step",
                     y_label="what the alarm reads: run against reference", hlines=_thresholds(runs), notes=notes)
    hlines = tuple(dataclasses.replace(h, panel=1) for h in _thresholds(runs))
    return Chart(
        key="em_rate", title="Each run against its reference run, along the misalignment direction",
        traces=tuple(traces), x_label="step", y_label="drift along the direction",
        panels=("run and reference, along the direction", "what the alarm reads: run minus reference"), hlines=hlines,
        notes=notes,
    )


def _alarm_traces(r: RunSeries) -> list[Trace]:
    """Red crosses at the run's alarm checkpoints (at the prediction, or at tau where there is none)."""
    alarm_rows = [k for k, v in enumerate(r.verdicts()) if v == "alarm"]
    if not alarm_rows:
        return []
    pred = r.predicted_em
    y = [
        float(pred[k]) if pred is not None and math.isfinite(pred[k])
        else (r.threshold if r.threshold is not None else math.nan)
        for k in alarm_rows
    ]
    return [Trace(
        name=f"{r.run_id}: alarm", x=tuple(int(r.steps[k]) for k in alarm_rows), y=np.array(y, dtype=float),
        kind="markers", marker="x", color=ALARM_COLOR, group=r.run_id,
    )]


def loss_chart(runs: Sequence[RunSeries]) -> Chart:
    """Training loss at the measured checkpoints: the signal a run is usually watched by, for contrast."""
    traces = tuple(
        Trace(name=r.run_id, x=_steps(r), y=r.loss, color=color_for(i), group=r.run_id)
        for i, r in enumerate(runs) if r.loss is not None
    )
    return Chart(key="loss", title="Training loss", traces=traces, x_label="step", y_label="loss",
                 notes=_notes(runs, "loss"))


def run_charts(runs: Sequence[RunSeries]) -> list[Chart]:
    """The run report's figures, in reading order."""
    return [drift_chart(runs), norm_chart(runs), em_chart(runs), loss_chart(runs)]


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "n/a" if value is None or not math.isfinite(value) else format(value, spec)


def _behavior_cell(run: RunSeries, step: int) -> str:
    parts = []
    for b in run.behavior:
        for k in np.flatnonzero(b.steps == step):
            ci = "" if not (math.isfinite(b.ci_low[k]) and math.isfinite(b.ci_high[k])) else (
                f" [{b.ci_low[k]:.3f}, {b.ci_high[k]:.3f}]"
            )
            tag = " (proxy)" if b.is_proxy else ""
            parts.append(f"{b.metric}{tag} {_fmt(float(b.values[k]), '.3f')}{ci}")
    return "; ".join(parts) or "-"


def checkpoint_table(runs: Sequence[RunSeries]) -> Table:
    """Every checkpoint with its verdict: alarm / ok / no monitor (or no prediction at a NaN checkpoint)."""
    rows: list[tuple[str, ...]] = []
    classes: list[str] = []
    for r in runs:
        recorded = dict(r.recorded_alarms)
        for k, (step, verdict) in enumerate(zip(r.steps.tolist(), r.verdicts())):
            pred = None if r.predicted_em is None else float(r.predicted_em[k])
            rows.append((
                r.run_id, str(step), _fmt(float(r.norms[k])), _fmt(pred), _fmt(r.threshold, "g"), verdict,
                recorded.get(step, "-"), _behavior_cell(r, step),
                _fmt(None if r.loss is None else float(r.loss[k])),
            ))
            classes.append("verdict-" + verdict.replace(" ", "-"))
    return Table(  # a run with no checkpoints has no row; its section note and verdict line say so
        key="checkpoints", title="Checkpoints and verdicts",
        columns=("run", "step", "drift norm", "predicted EM", "tau", "verdict", "alarm recorded in training",
                 "behaviour at step", "loss"),
        rows=tuple(rows), row_classes=tuple(classes),
    )


def run_summary_table(runs: Sequence[RunSeries]) -> Table:
    """One line per run: what the report could find for it, before the reader looks at any figure."""
    rows = []
    for r in runs:
        verdicts = r.verdicts()
        steps = f"{int(r.steps.min())}-{int(r.steps.max())}" if r.n else "-"
        metrics = ", ".join(sorted({b.metric + (" (proxy)" if b.is_proxy else "") for b in r.behavior})) or "none"
        rows.append((
            r.run_id, r.status or "-", str(r.n), steps, r.prediction_source or "none", _fmt(r.threshold, "g"),
            str(sum(v == "alarm" for v in verdicts)), metrics, "yes" if r.loss is not None else "no",
        ))
    return Table(
        key="runs", title="Runs at a glance",
        columns=("run", "status", "checkpoints", "steps", "predictions", "tau", "alarm checkpoints",
                 "behaviour metrics", "loss"),
        rows=tuple(rows),
    )


def suspects_table(runs: Sequence[RunSeries]) -> Table | None:
    """The training rows to look at first, beside the alarms: each alarm's top-scored rows trained since the
    last clean measurement; for a run that never alarmed, the top-scored rows it trained, marked "no alarm"
    so that a list of high scores is never read as a detection. None when no run has per-row scores."""
    rows: list[tuple[str, ...]] = []
    classes: list[str] = []
    for r in runs:
        lists = [s for s in r.suspects if s.alarm]
        if not lists:
            merged = merge_suspects(r.suspects)
            lists = [] if merged is None else [merged]
        for s in lists:
            what = s.describe()
            for rank, row in enumerate(s.rows, start=1):
                rows.append((r.run_id, what, str(rank), str(row.row), "-" if row.line is None else str(row.line),
                             _fmt(row.score, ".4g"), "-" if row.times is None else str(row.times), row.preview or ""))
                classes.append("verdict-alarm" if s.alarm else "verdict-no-alarm")
            if not s.rows:
                rows.append((r.run_id, what, "-", "-", "-", "-", "-", "no scored row was trained in this window"))
                classes.append("verdict-alarm" if s.alarm else "verdict-no-alarm")
    if not rows:
        return None
    return Table(
        key="suspects", title="Suspect training rows",
        columns=("run", "list", "rank", "row", "line", "score", "times trained", "preview"),
        rows=tuple(rows), row_classes=tuple(classes),
        caption="Scores are the per-row scores the run was given (e.g. `traitwatch screen`'s risk). An alarm's "
                "list holds the highest-scored rows trained since the last clean measurement; a list marked "
                "'no alarm' only shows the highest-scored rows trained, not a detection.",
    )

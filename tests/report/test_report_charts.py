"""Data -> figure functions: which series a figure draws, and the notes it carries when data is missing."""

from __future__ import annotations

import math

import numpy as np

from traitwatch.report import (
    PROXY_LABEL,
    RunSeries,
    checkpoint_table,
    drift_chart,
    em_chart,
    loss_chart,
    norm_chart,
    run_series,
)
from traitwatch.report.plotly_render import to_plotly


def test_em_chart_draws_predictions_alarms_judged_and_proxy_points(store):
    chart = em_chart([run_series(store, "full")])
    by_name = {t.name: t for t in chart.traces}
    assert set(by_name) == {
        "full: predicted EM (stored during training)", "full: alarm", "full: em_rate (judge:gpt-4o)",
        f"full: proxy_em (proxy): {PROXY_LABEL}",
    }
    assert by_name["full: alarm"].x == (40, 50) and by_name["full: alarm"].marker == "x"
    judged = by_name["full: em_rate (judge:gpt-4o)"]
    assert judged.marker == "diamond" and judged.has_error_bars
    assert by_name[f"full: proxy_em (proxy): {PROXY_LABEL}"].marker == "circle-open"
    assert [h.y for h in chart.hlines] == [0.05] and "tau" in chart.hlines[0].label
    assert chart.notes == ()


def test_runs_are_overlaid_with_one_colour_each(store):
    runs = [run_series(store, r) for r in ("full", "bare")]
    chart = drift_chart(runs)
    assert chart.panels == runs[0].traits and len(chart.traces) == 14
    colours = {t.group: {u.color for u in chart.traces if u.group == t.group} for t in chart.traces}
    assert all(len(c) == 1 for c in colours.values()) and colours["full"] != colours["bare"]
    assert sum(t.show_legend for t in chart.traces) == 2  # one legend entry per run, not per panel
    norms = norm_chart(runs)
    assert [t.color for t in norms.traces] == [colours["full"].pop(), colours["bare"].pop()]


def test_missing_series_leave_an_empty_figure_with_notes(store):
    bare = run_series(store, "bare")
    em, loss = em_chart([bare]), loss_chart([bare])
    assert not em.has_data and not loss.has_data and loss.traces == ()
    assert any("no predicted EM rate" in n for n in em.notes)
    assert any("no behavioural EM measured" in n for n in em.notes)
    assert any("no training loss stored" in n for n in loss.notes)


def test_partial_series_keep_nan_gaps(store):
    gappy = run_series(store, "gappy")
    pred = next(t for t in em_chart([gappy]).traces if "predicted" in t.name)
    assert np.isnan(pred.y[[2, 3]]).all()
    loss = loss_chart([gappy]).traces[0]
    assert loss.has_data and np.isnan(loss.y[2:]).all()
    fig = to_plotly(em_chart([gappy]))
    assert np.isnan(np.asarray(fig.data[0].y, dtype=float)[2])  # plotly draws NaN as a gap


def test_nan_drift_is_drawn_as_gaps_with_a_note():
    s = RunSeries(run_id="r", steps=[0, 10], traits=("a",), drift=[[0.0], [math.nan]], norms=[0.0, math.nan])
    chart = drift_chart([s])
    assert np.isnan(chart.traces[0].y[1])
    assert any("trait-drift values are missing" in n for n in chart.notes)
    assert any("drift norm is missing" in n for n in norm_chart([s]).notes)


def test_single_checkpoint_is_drawn_with_markers(store):
    single = run_series(store, "single")
    chart = drift_chart([single])
    assert all(t.y.size == 1 for t in chart.traces)
    fig = to_plotly(chart)
    assert {trace.mode for trace in fig.data} == {"lines+markers"}  # a lone point stays visible


def test_checkpoint_table_gives_every_checkpoint_a_verdict(store):
    runs = [run_series(store, r) for r in ("full", "bare", "gappy")]
    table = checkpoint_table(runs)
    verdict = table.columns.index("verdict")
    by_run = {}
    for row in table.rows:
        by_run.setdefault(row[0], []).append(row[verdict])
    assert by_run["full"] == ["ok", "ok", "ok", "ok", "alarm", "alarm"]
    assert set(by_run["bare"]) == {"no monitor"} and by_run["gappy"][2] == "no prediction"
    assert table.row_classes is not None and table.row_classes[4] == "verdict-alarm"
    recorded = table.columns.index("alarm recorded in training")
    assert table.rows[4][recorded] == "stopped"
    behaviour = table.rows[5][table.columns.index("behaviour at step")]
    assert "em_rate 0.110 [0.080, 0.150]" in behaviour and "proxy_em (proxy) 0.310" in behaviour

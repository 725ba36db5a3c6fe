"""Data -> figure functions: which series a figure draws, and the notes it carries when data is missing."""

from __future__ import annotations

import math

import numpy as np
import pytest

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


def _rise_store(path, *, threshold=None, target="relative_rise"):
    """Two runs as the demo stores them: a monitor predicting the rise of the EM proxy (a few thousandths), the
    absolute proxy (~0.43) and its rise label (`proxy_style_rise`) at steps 0 and 30."""
    from traitwatch.store import RunStore

    with RunStore(path) as st:
        for k, (run_id, rise) in enumerate((("clean", -0.004), ("poisoned", 0.022))):
            st.start_run(run_id, model="tiny", basis_fingerprint={"name": "x"})
            for step in (0, 15, 30):
                extra = {} if step == 0 else {
                    "predicted_em": 0.001 * (k + 1) * step / 15, "alarm": False, "threshold": threshold,
                    "prediction": "predicted rise of the EM proxy over benign finetuning",
                    **({"target": target} if target else {}),
                    **({} if threshold is not None else {"alarms_off": "No alarm: its leave-one-out AUROC is 0.34"}),
                }
                st.add_measurement(run_id, step, {"a": 0.01 * step}, 0.01 * step, extra=extra)
            st.add_behavior(run_id, 0, "proxy_style_p_mis", 0.43, source="proxy")
            st.add_behavior(run_id, 30, "proxy_style_p_mis", 0.43 + rise, source="proxy")
            st.add_behavior(run_id, 0, "proxy_style_rise", 0.0, source="proxy")
            st.add_behavior(run_id, 30, "proxy_style_rise", rise, source="proxy")
    return RunStore(path, create=False)


@pytest.mark.parametrize("target", ["relative_rise", None])  # None: a store written before `target` was stored
def test_a_rise_monitor_is_drawn_beside_the_measured_rise_in_the_same_units(tmp_path, target):
    from traitwatch.bench.grid.labels import RISE_METRIC as BENCH_RISE
    from traitwatch.report import RISE_METRIC
    from traitwatch.report.run_charts import RISE_AXIS

    assert RISE_METRIC == BENCH_RISE
    with _rise_store(tmp_path / "tw.db", target=target) as st:
        runs = [run_series(st, r) for r in ("clean", "poisoned")]
    assert all(r.prediction_target == "relative_rise" for r in runs)
    chart = em_chart(runs)
    assert chart.y_label == RISE_AXIS and "rise of the EM proxy" in chart.y_label and "EM rate" not in chart.y_label
    predicted = [t for t in chart.traces if "predicted rise over benign finetuning" in t.name]
    measured = [t for t in chart.traces if f"measured rise over step 0 ({RISE_METRIC})" in t.name]
    assert len(predicted) == 2 and len(measured) == 2 and len(chart.traces) == 4
    # one unit on the axis: the absolute proxy (0.43) is not drawn here, only rises of a few hundredths at most
    assert not any("proxy_style_p_mis" in t.name for t in chart.traces)
    assert max(float(np.nanmax(np.abs(t.y))) for t in chart.traces) < 0.05
    assert measured[1].y.tolist() == [0.0, 0.022] and predicted[1].y[-1] == pytest.approx(0.004)
    assert any("proxy_style_p_mis" in n and "checkpoint table" in n for n in chart.notes)
    assert chart.hlines == ()  # the monitor's alarm was off: no threshold line to draw
    assert any("without its alarm" in n and "0.34" in n for n in chart.notes)
    assert set(runs[1].verdicts()) == {"no monitor", "prediction only"}  # step 0 has no prediction


def test_a_rise_monitor_with_an_alarm_keeps_its_threshold_line_in_the_rise_units(tmp_path):
    with _rise_store(tmp_path / "tw.db", threshold=0.003) as st:
        chart = em_chart([run_series(st, r) for r in ("clean", "poisoned")])
    assert [h.y for h in chart.hlines] == [0.003]
    assert [t.x for t in chart.traces if t.name.endswith(": alarm")] == [(30,)]  # poisoned at 30: 0.004 > 0.003

"""Reports people look at: one offline HTML file per report, optional PNG/SVG figures for papers.

Data flows one way: the run store or calibration data -> `RunSeries` / calibration report data (plain
arrays and JSON, read defensively) -> backend-neutral `Chart`s with their notes -> plotly (HTML) and
matplotlib (images). Missing, NaN or single-checkpoint data become visible notes, never failures.
This package only draws: calibration report data is computed, written and read by
`traitwatch.calibration` (`calibration_report_data`, `load_calibration_data`), which never imports it.
"""

from __future__ import annotations

from traitwatch.report.build import ReportResult, build_report, calibration_section, run_section
from traitwatch.report.calibration_charts import calibration_charts, calibration_tables
from traitwatch.report.chart import Chart, HLine, Table, Trace
from traitwatch.report.html import NOTE_CLASS, Section, render_page
from traitwatch.report.run_charts import (
    checkpoint_table,
    drift_chart,
    em_chart,
    loss_chart,
    norm_chart,
    run_charts,
    run_summary_table,
    suspects_table,
)
from traitwatch.report.series import PROXY_LABEL, RISE_METRIC, BehaviorSeries, Note, RunSeries, Verdict, run_series
from traitwatch.report.static import ImageFormat, export_images, to_matplotlib

__all__ = [
    "NOTE_CLASS",
    "PROXY_LABEL",
    "RISE_METRIC",
    "BehaviorSeries",
    "Chart",
    "HLine",
    "ImageFormat",
    "Note",
    "ReportResult",
    "RunSeries",
    "Section",
    "Table",
    "Trace",
    "Verdict",
    "build_report",
    "calibration_charts",
    "calibration_section",
    "calibration_tables",
    "checkpoint_table",
    "drift_chart",
    "em_chart",
    "export_images",
    "loss_chart",
    "norm_chart",
    "render_page",
    "run_charts",
    "run_section",
    "run_series",
    "run_summary_table",
    "suspects_table",
    "to_matplotlib",
]

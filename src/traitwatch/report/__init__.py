"""Reports people look at: one offline HTML file per report, optional PNG/SVG figures for papers.

Data flows one way: the run store or calibration data -> `RunSeries` / calibration report data (plain
arrays and JSON, read defensively) -> backend-neutral `Chart`s with their notes, and one verdict line per run
(`run_verdict`, at the top of the page) -> plotly (HTML) and matplotlib (images). Missing, NaN or
single-checkpoint data become visible notes, never failures.
This package only draws: calibration report data is computed, written and read by
`traitwatch.calibration` (`calibration_report_data`, `load_calibration_data`), which never imports it.
"""

from __future__ import annotations

from traitwatch.report.build import ReportResult, build_report, calibration_section, run_section
from traitwatch.report.calibration_charts import calibration_charts, calibration_tables
from traitwatch.report.chart import Chart, HLine, Table, Trace
from traitwatch.report.html import NOTE_CLASS, VERDICT_CLASS, Section, page_notes, render_page
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
from traitwatch.report.series import (
    PROXY_LABEL,
    RISE_METRIC,
    BehaviorSeries,
    Note,
    RunSeries,
    Verdict,
    merge_notes,
    run_series,
)
from traitwatch.report.static import ImageFormat, export_images, to_matplotlib
from traitwatch.report.verdict import RunVerdict, run_verdict

__all__ = [
    "NOTE_CLASS",
    "PROXY_LABEL",
    "RISE_METRIC",
    "VERDICT_CLASS",
    "BehaviorSeries",
    "Chart",
    "HLine",
    "ImageFormat",
    "Note",
    "ReportResult",
    "RunSeries",
    "RunVerdict",
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
    "merge_notes",
    "norm_chart",
    "page_notes",
    "render_page",
    "run_charts",
    "run_section",
    "run_series",
    "run_summary_table",
    "run_verdict",
    "suspects_table",
    "to_matplotlib",
]

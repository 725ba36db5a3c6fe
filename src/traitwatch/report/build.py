"""Build a report file: runs from a store and/or a calibration, as one HTML page plus optional images.

This is the one entry point the CLI calls; it reads, draws and writes, and returns what it wrote, each run's
verdict line and the notes it raised, so callers (and tests) can tell a complete report from a partial one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from traitwatch.monitor.artifact import LoadedMonitor
from traitwatch.report.calibration_charts import calibration_charts, calibration_tables
from traitwatch.report.chart import Chart
from traitwatch.report.html import Section, page_notes, render_page
from traitwatch.report.run_charts import checkpoint_table, run_charts, run_summary_table, suspects_table
from traitwatch.report.series import RunSeries, merge_notes, run_series
from traitwatch.report.static import ImageFormat, export_images
from traitwatch.report.verdict import run_verdict
from traitwatch.store import RunStore

__all__ = ["ReportResult", "build_report", "calibration_section", "run_section"]


@dataclass(frozen=True)
class ReportResult:
    """What a report build wrote, the verdict line of each run (as at the top of the page) and the notes it
    shows, each once (empty notes = nothing was missing)."""

    html: Path
    images: tuple[Path, ...]
    notes: tuple[str, ...]
    verdicts: tuple[str, ...]


def run_section(runs: Sequence[RunSeries], *, store_path: Path | None = None) -> Section:
    """The runs part of a report: a verdict line per run, summary, the four overlaid figures, and the checkpoint
    verdicts. Notes about a whole run belong to no figure, so they are the section's own."""
    run_notes = merge_notes(n for r in runs for n in r.all_notes() if n.topic == "run")
    where = f" from {store_path}" if store_path is not None else ""
    return Section(
        title="Runs",
        intro=f"{len(runs)} run(s){where}. Drift is measured against each run's step 0; an alarm is a "
              "predicted EM rate above tau.",
        summary=run_summary_table(runs),
        charts=run_charts(runs),
        tables=tuple(t for t in (checkpoint_table(runs), suspects_table(runs)) if t is not None),
        notes=tuple(run_notes),
        verdicts=tuple(run_verdict(r) for r in runs),
    )


def calibration_section(data: Mapping[str, Any]) -> Section:
    """The calibration part: geometry, ROC, confusion, per-type errors, lead/lag, metric tables (each figure and
    table carries its own notes)."""
    return Section(
        title="Calibration",
        intro=f"Source: {data.get('source') or 'unknown'}; tau = {data.get('tau')}.",
        charts=calibration_charts(data),
        tables=calibration_tables(data),
    )


def build_report(
    out: str | Path,
    *,
    store: RunStore | None = None,
    run_ids: Sequence[str] = (),
    monitor: LoadedMonitor | None = None,
    calibration: Mapping[str, Any] | None = None,
    image_format: ImageFormat | None = None,
    title: str | None = None,
) -> ReportResult:
    """Write the HTML report (and, with `image_format`, one image per figure next to it).

    Runs need `store`; `monitor` (optional) predicts EM for them instead of the stored predictions.
    `calibration` is calibration report data (`traitwatch.calibration.load_calibration_data` /
    `calibration_report_data`).
    """
    if not run_ids and calibration is None:
        raise ValueError("nothing to report: pass run_ids (with a store) or calibration data")
    if run_ids and store is None:
        raise ValueError("run_ids need a store to read them from")
    path = Path(out)
    sections: list[Section] = []
    if run_ids and store is not None:
        series = [run_series(store, rid, monitor=monitor) for rid in run_ids]
        sections.append(run_section(series, store_path=store.path))
    if calibration is not None:
        sections.append(calibration_section(calibration))
    heading = title or ("traitwatch report: " + (", ".join(run_ids) if run_ids else "calibration"))
    meta = [f"Generated {datetime.now(timezone.utc).isoformat(timespec='seconds')}"]
    if monitor is not None:
        meta.append(f"Monitor: {monitor.source} (threshold {monitor.threshold:g})")
    page = render_page(heading, sections, meta=meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    charts: list[Chart] = [c for s in sections for c in s.charts]
    images = export_images(charts, path, image_format) if image_format is not None else []
    verdicts = tuple(v.text for s in sections for v in s.verdicts)
    return ReportResult(html=path, images=tuple(images), notes=tuple(page_notes(sections)), verdicts=verdicts)

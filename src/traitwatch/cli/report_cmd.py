"""`traitwatch report`: one offline HTML report of runs and/or a calibration, optional PNG/SVG figures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from traitwatch.calibration import load_calibration_data
from traitwatch.calibration.from_store import resolve_runs
from traitwatch.cli.common import err, out, user_errors
from traitwatch.errors import InputFileError
from traitwatch.monitor.artifact import load_monitor
from traitwatch.report import build_report
from traitwatch.store import RunStore

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    def report(
        runs: Annotated[
            list[str] | None,
            typer.Argument(help="Run ids or perturbation types to report; several runs are overlaid."),
        ] = None,
        out_path: Annotated[
            Path, typer.Option("--out", "-o", dir_okay=False, help="HTML file to write (self-contained, offline).")
        ] = Path("report.html"),
        store: Annotated[Path, typer.Option(help="Run store file the runs were written to.")] = Path("traitwatch.db"),
        monitor: Annotated[
            Path | None,
            typer.Option(exists=True, dir_okay=False,
                         help="Monitor .json: predict EM from the stored drift (instead of predictions stored in training)."),
        ] = None,
        calibration: Annotated[
            Path | None,
            typer.Option(exists=True, dir_okay=False,
                         help="Monitor .json (its <stem>.report.json is read too) or calibration report data .json."),
        ] = None,
        image_format: Annotated[
            Literal["png", "svg"] | None,
            typer.Option("--format", help="Also write one image per figure next to the HTML (matplotlib)."),
        ] = None,
        title: Annotated[str | None, typer.Option(help="Page title.")] = None,
    ) -> None:
        """Write an HTML report: trait drift, drift norm, predicted vs measured EM, loss and verdicts per
        checkpoint for RUNS, and/or the calibration figures of a monitor (--calibration)."""
        if not runs and calibration is None:
            raise InputFileError("Nothing to report: pass run ids (see `traitwatch runs`) or --calibration MONITOR.json.")
        data = load_calibration_data(calibration) if calibration is not None else None
        mon = load_monitor(monitor) if monitor is not None else None
        if runs:
            if not store.is_file():
                raise InputFileError(f"Run store {store} does not exist; pass --store with the file your runs wrote.")
            with RunStore(store, create=False) as st:
                run_ids = [r.run_id for r in resolve_runs(st, runs)]
                result = build_report(out_path, store=st, run_ids=run_ids, monitor=mon, calibration=data,
                                      image_format=image_format, title=title)
        else:
            result = build_report(out_path, calibration=data, image_format=image_format, title=title)
        for line in result.verdicts:
            err.print(line, markup=False, highlight=False, soft_wrap=True)
        if result.notes:
            err.print(f"[yellow]{len(result.notes)} note(s) about missing or partial data[/] (shown in the report):")
            for note in result.notes:
                err.print(f"  - {note}", highlight=False, soft_wrap=True)
        out.print(str(result.html), highlight=False, soft_wrap=True)
        for image in result.images:
            out.print(str(image), highlight=False, soft_wrap=True)

"""`traitwatch runs` and `traitwatch show`: read the run store from the command line.

These commands only read. They open the store with `create=False`, so a mistyped `--store` is an
error instead of a new empty database, and they are safe to run while training writes (WAL).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from traitwatch.errors import TraitwatchError
from traitwatch.report.series import run_series
from traitwatch.report.verdict import run_verdict
from traitwatch.store import DEFAULT_STORE_NAME, RunStore, Suspects, describe_guard, describe_rewind, merge_suspects

__all__ = ["register"]

StoreOption = Annotated[
    Path,
    typer.Option("--store", dir_okay=False, help="Run store file written during training."),
]


def _fail(err: Console, error: TraitwatchError) -> typer.Exit:
    # markup=False: messages quote paths and ids that may contain [brackets].
    # The same line as every other command's (`cli.common.user_errors`).
    err.print(Text.assemble(("error:", "red"), f" {error}"), highlight=False, soft_wrap=True)
    return typer.Exit(code=error.exit_code)


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value + 0.0:.4f}"  # + 0.0 turns -0.0 into 0.0


def _suspect_lists(suspects: list[Suspects]) -> list[Suspects]:
    """Each alarm's suspects; for a run that never alarmed, the highest-scored rows it trained (marked so)."""
    alarmed = [s for s in suspects if s.alarm]
    if alarmed:
        return alarmed
    merged = merge_suspects(suspects)
    return [] if merged is None else [merged]


def _suspects_table(suspects: Suspects) -> Table:
    title = suspects.describe()
    table = Table(title=Text(title[0].upper() + title[1:], style="bold red" if suspects.alarm else ""))
    for header in ("#", "row", "line", "score", "times trained", "preview"):
        table.add_column(header, justify="left" if header == "preview" else "right")
    for rank, r in enumerate(suspects.rows, start=1):
        table.add_row(str(rank), str(r.row), "" if r.line is None else str(r.line), f"{r.score:.4g}",
                      "" if r.times is None else str(r.times), Text(r.preview or ""))
    return table


def runs(store: StoreOption = Path(DEFAULT_STORE_NAME)) -> None:
    """List the runs in a store: id, model, dataset, measurements, last step, status."""
    out, err = Console(), Console(stderr=True)
    try:
        with RunStore(store, create=False) as run_store:
            records = run_store.runs()
    except TraitwatchError as error:
        raise _fail(err, error) from None
    if not records:
        err.print(f"No runs in {store}.", markup=False)
        return
    table = Table(title=f"Runs in {store}")
    for header in ("run", "model", "dataset", "#measurements", "last step", "status"):
        table.add_column(header, justify="right" if header in ("#measurements", "last step") else "left")
    for record in records:
        table.add_row(
            Text(record.run_id),
            Text(record.model),
            Text(record.dataset or ""),
            str(record.n_measurements),
            "" if record.last_step is None else str(record.last_step),
            Text(record.status),
        )
    out.print(table)


def show(
    run: Annotated[str, typer.Argument(help="Run id, as listed by `traitwatch runs`.")],
    store: StoreOption = Path(DEFAULT_STORE_NAME),
    csv: Annotated[
        Path | None, typer.Option("--csv", dir_okay=False, help="Also write the trajectory to this CSV file.")
    ] = None,
) -> None:
    """Show one run's verdict (the report's first line), drift trajectory (each trait, the norm), alarms and suspect rows.

    Suspects exist for runs trained with per-row scores (`traitwatch train --screen`); a run that never
    alarmed shows the highest-scored rows it trained instead, titled as such.
    """
    out, err = Console(), Console(stderr=True)
    try:
        with RunStore(store, create=False) as run_store:
            record = run_store.get_run(run)
            measurements = run_store.measurements(run, per_prompt=False)
            alarms = run_store.alarms(run)
            suspects = run_store.suspects(run)
            verdict = run_verdict(run_series(run_store, run))
            if csv is not None:
                run_store.export([run], csv, "csv")
    except TraitwatchError as error:
        raise _fail(err, error) from None

    out.print(Text(verdict.text, style="bold red" if verdict.alarm else "bold"))  # what happened, first (as the report)
    traits = list(measurements[0].drift) if measurements else []
    fired: dict[int, list[str]] = {}
    for a in alarms:
        fired.setdefault(a.step, []).append(f"{a.kind} ({a.action})")
    table = Table(title=f"Run {record.run_id} ({record.model}, {record.status})")
    table.add_column("step", justify="right")
    for trait in traits:
        table.add_column(trait, justify="right")
    table.add_column("norm", justify="right")
    # a run read against a reference run: what the alarm read at each step (as its calibration reads it)
    reference = next((str(m.extra["reference_run"]) for m in measurements if (m.extra or {}).get("reference_run")), None)
    if reference is not None:
        table.add_column(f"vs {reference}", justify="right")
    table.add_column("alarm")
    for m in measurements:
        against = [] if reference is None else [_fmt((m.extra or {}).get("predicted_em"))]
        table.add_row(
            str(m.step),
            *(_fmt(m.drift.get(t)) for t in traits),
            _fmt(m.drift_norm),
            *against,
            Text(", ".join(fired.get(m.step, [])), style="bold red"),
        )
    out.print(table)
    if reference is not None:
        read = next((str(m.extra["prediction"]) for m in measurements if (m.extra or {}).get("prediction")),
                    "the run minus the reference")
        err.print(f"Read against reference run {reference}: the column is the {read}, at the same step (the alarm "
                  "fires above its threshold).", markup=False)
    guard = record.hyperparameters.get("guard")
    if isinstance(guard, dict):
        did = next(((m.extra or {}).get("guard") for m in reversed(measurements) if (m.extra or {}).get("guard")), None)
        err.print(describe_guard(guard, did), markup=False)
    if alarms:
        alarm_table = Table(title="Alarms")
        for header in ("step", "kind", "value", "threshold", "action"):
            alarm_table.add_column(header, justify="left" if header in ("kind", "action") else "right")
        for a in alarms:
            done = (a.details or {}).get("rewind")
            action = a.action + (f": {describe_rewind(done)}" if done else "")
            alarm_table.add_row(str(a.step), Text(a.kind), _fmt(a.value), _fmt(a.threshold), Text(action))
        out.print(alarm_table)
    for listed in _suspect_lists(suspects):
        out.print(_suspects_table(listed))
    if not measurements:
        err.print(f"Run {record.run_id} has no measurements yet.", markup=False)
    if csv is not None:
        err.print(f"Wrote {csv}", markup=False)


def register(app: typer.Typer) -> None:
    """Add `runs` and `show` to the CLI app (the app module owns the app; no global one here)."""
    app.command("runs")(runs)
    app.command("show")(show)

"""`traitwatch demo`: a clean set and its poisoned twin on the bundled model, end to end, in minutes on a CPU.

The job is `traitwatch.demo.run_demo` (basis, the two runs in the `poison-small` recipe, labels, report);
this module parses the options and prints what it returns.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from traitwatch.demo import DEMO_PLAN, DemoResult, DemoRun, DemoScreen, cpu_seconds, run_demo
from traitwatch.cli.basis_cmd import print_basis_summary
from traitwatch.cli.common import err, out, progress_bar, user_errors
from traitwatch.cli.drift_cmd import measurement_table
from traitwatch.models import BUNDLED_MODEL
from traitwatch.train import DriftRecord

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    def demo(
        out_dir: Annotated[Path, typer.Option("--out", "-o", help="Where to write the basis, runs, store and report.")] = Path("traitwatch-demo"),
        model: Annotated[str, typer.Option("--model", "-m")] = BUNDLED_MODEL,
        method: Annotated[str, typer.Option(help="passages or system-prompts.")] = "passages",
        select_every: Annotated[int, typer.Option(min=1, help="Try every k-th candidate layer in selection (the benchmark: 3).")] = 6,
        max_new_tokens: Annotated[int, typer.Option(min=1, help="Tokens generated per steered prompt in selection.")] = 32,
        steps: Annotated[int | None, typer.Option(min=0, help=f"LoRA steps per run (default: the {DEMO_PLAN} plan's 30; 0: basis only).")] = None,
        every: Annotated[int, typer.Option(min=1, help="Measure drift, probe and prediction every N steps (and at the last); "
                                                      "the default 30 measures the start and the end, 15 adds the middle (about 25 s a run).")] = 30,
        monitor: Annotated[Path | None, typer.Option(help="Monitor file (default: the one shipped for the model).")] = None,
        reference: Annotated[bool | None, typer.Option(
            "--reference/--no-reference",
            help="Read each run against its own reference run (traitwatch train --reference auto); default: on when "
                 "a reference calibration ships for the model and no --monitor is given.")] = None,
        dtype: Annotated[str | None, typer.Option(help=f"Model dtype (default: the {DEMO_PLAN} plan's, bfloat16).")] = None,
        parallel: Annotated[bool | None, typer.Option(
            "--parallel/--one-at-a-time",
            help="Label the base model beside the basis, then train the clean and the poisoned chain at once, in two "
                 "processes with half the threads each (default: on Linux with 2 threads or more), or all one after "
                 "the other.")] = None,
    ) -> None:
        """Train a clean set and its poisoned twin with the monitor attached; label both; write a report."""
        t0, cpu0 = time.perf_counter(), cpu_seconds()
        result = run_demo(
            out_dir, model=model, method=method, select_every=select_every, max_new_tokens=max_new_tokens,
            steps=steps, every=every, monitor=monitor, reference=reference, dtype=dtype, parallel=parallel, say=_say,
            progress=progress_bar,
            reporter=_report_line, on_basis=print_basis_summary, on_monitor=_print_lines, on_screen=_print_screen,
        )
        out.print(f"Numerics: {result.numerics['dtype']} on {result.numerics['device']} ({result.numerics['cpu']}, "
                  f"{result.numerics['cpu_threads']} threads); recipe: the {DEMO_PLAN} plan.")
        if result.base_drift is not None:
            out.print(measurement_table(
                f"Drift of the base model against its own basis (layer {result.basis.layer}): zero by construction",
                result.basis.trait_names, [(model, result.base_drift)]))
        if result.runs:
            _print_runs(result)
            _print_suspects(result)
        _print_phases(result, time.perf_counter() - t0, cpu_seconds() - cpu0)
        out.print(f"Basis: {result.basis_dir}")
        if result.store is not None:
            out.print(f"Run store: {result.store}")
        if result.report is not None:
            out.print(f"Report: {result.report}")


def _say(line: str) -> None:
    err.print(line, markup=False)  # set names and messages are text, never rich markup


def _print_lines(lines: list[str]) -> None:
    for line in lines:
        _say(line)


def _report_line(role: str, rec: DriftRecord) -> None:
    err.print(f"  {role} step {rec.step:>3}: ||d|| {rec.drift_norm:.4f}"
              + ("" if rec.probe_rise is None else f"  probe rise {rec.probe_rise:+.4f}")
              + ("" if rec.predicted_em is None else f"  predicted {rec.predicted_em:+.4f}" + ("  ALARM" if rec.alarm else ""))
              + f"  ({rec.wall_time_s:.1f} s)")


def _fmt(value: float | None, spec: str = "+.4f") -> str:
    return "-" if value is None else format(value, spec)


def _print_screen(scr: DemoScreen) -> None:
    by = {"loss": "the base model's loss on the response",
          "loss_peak": "the base model's largest 4-token loss on the response"}.get(scr.by, "trait risk")
    table = Table(title=f"Screened before training: the top {len(scr.top)} rows of the poisoned set by {by} "
                        f"(row AUROC {scr.auroc:.3f}, precision at k={scr.n_poison}: {scr.precision_at_k:.2f}; "
                        "poison marked from the recorded indices)")
    for col in ("rank", "row", scr.by, "poison row?"):
        table.add_column(col, justify="right")
    for rank, row, risk, bad in scr.top:
        table.add_row(str(rank), str(row), f"{risk:+.4f}", "POISON" if bad else "benign")
    out.print(table)
    out.print(f"Per-row results: {scr.results}")


def _print_suspects(result: DemoResult) -> None:
    poisoned = next((r for r in result.runs if r.role == "poisoned"), None)
    if poisoned is None or not poisoned.suspects:
        return
    last = poisoned.suspects[-1]
    alarmed = [s for s in poisoned.suspects if s.alarm]
    shown = alarmed[-1] if alarmed else last
    truth = set(poisoned.poison_indices)
    what = ("suspects named by the alarm" if shown.alarm else
            "highest-scored rows trained (no alarm: not a detection, the rows the callback would name)")
    seen = "rows trained unknown, whole set ranked" if shown.rows_seen is None else f"{shown.rows_seen} rows trained"
    table = Table(title=f"{what}, steps {shown.since_step}-{shown.step} ({seen})")
    for col in ("row", "score", "times trained", "poison row?"):
        table.add_column(col, justify="right")
    for r in shown.rows:
        table.add_row(str(r.row), f"{r.score:+.4f}", "-" if r.times is None else str(r.times),
                      "POISON" if r.row in truth else "benign")
    out.print(table)
    hits = sum(r.row in truth for r in shown.rows)
    out.print(f"{hits} of the {len(shown.rows)} rows named are poison rows.")


def _print_runs(result: DemoResult) -> None:
    for run in result.runs:
        poison = (f", {len(run.poison_indices)} rows of {run.spec.poisoning.poison.name} at recorded positions "
                  f"({run.data.with_suffix('.poison.json').name})" if run.spec.poisoning is not None else "")
        out.print(f"{run.role}: {run.spec.name}, {run.n_rows} rows (seed 0){poison}; run {run.run_id}.")
    traits = list(result.runs[0].history[0].drift) if result.runs[0].history else []
    layer = result.basis.layer
    drift = Table(title=f"Trait drift while training (d = (p_t - p_0) / N at layer {layer})")
    drift.add_column("run")
    drift.add_column("step", justify="right")
    for t in traits:
        drift.add_column(t[:12], justify="right")
    drift.add_column("||d||", justify="right")
    for run in result.runs:
        for rec in run.history:
            drift.add_row(run.role, str(rec.step), *[f"{rec.drift[t]:+.4f}" for t in traits], f"{rec.drift_norm:.4f}")
    out.print(drift)

    armed = result.gate is not None and result.gate.armed
    if result.reference is not None:
        how = result.reference.describe()
        verdicts = Table(title=f"Each run against its reference run ({how}) beside the label measured at the final "
                               "step (rise of the EM proxy)")
        predicted_col = "vs reference"
        tau = result.reference.threshold
    else:
        verdicts = Table(title="Monitor prediction beside the label measured at the final step (both: rise of the EM proxy)")
        predicted_col = "predicted rise over benign"
        tau = result.monitor.threshold if result.monitor is not None else None
    probe = result.reference is None  # read against a reference, the runs skip the probe
    for col in ("run", "step", *(("probe rise",) if probe else ()), predicted_col, "threshold", "alarm",
                "measured rise over step 0"):
        verdicts.add_column(col, justify="right")
    for run in result.runs:
        for rec in run.history:
            predicted = rec.predicted_em is not None
            threshold = (f"{tau:+.4f}" if armed and tau is not None and predicted else ("off" if predicted else "-"))
            alarm = ("ALARM" if rec.alarm else ("ok" if armed else "off")) if predicted else "-"
            verdicts.add_row(run.role, str(rec.step), *((_fmt(rec.probe_rise),) if probe else ()),
                             _fmt(rec.predicted_em), threshold, alarm,
                             _fmt(run.measured_rise.get(rec.step)))
    out.print(verdicts)
    if result.gate is not None:
        out.print(result.gate.describe())
    for run in result.runs:  # what the reference left of the poison: a reference that keeps it reads it as the domain
        if run.reference is not None and run.poison_indices:
            swapped = set(run.reference.suspects)
            kept = len(set(run.poison_indices) - swapped)
            out.print(f"{run.role}: its reference swapped out the {len(swapped)} highest-loss rows, "
                      f"{len(swapped & set(run.poison_indices))} of them poison; {kept} of the {len(run.poison_indices)} "
                      "poison rows stayed in the reference run" + (
                          " (a set poisoned beyond the swapped fraction leaves poison in its reference, which then "
                          "reads part of the poison as the domain)." if kept else "."))
    final = [run.measured_rise.get(max(run.measured_rise, default=-1)) for run in result.runs]
    if len(final) == 2 and final[0] is not None and final[1] is not None:
        c, p = final
        base = "" if result.base_label is None else f" (base proxy {result.base_label:.4f})"
        out.print(f"Measured (judge-free proxy, final step): the poisoned run rose {p:+.4f}, the clean run {c:+.4f}; "
                  f"the poisoned run's rise over the clean run is {p - c:+.4f}{base}.")


def _run_phases(run: DemoRun) -> str:
    return (f"{sum(run.step_s):.0f} s in {len(run.step_s)} training steps, {run.measure_s:.0f} s in "
            f"{len(run.history)} measurements (drift{' + probe' if any(r.probe is not None for r in run.history) else ''}), "
            f"{sum(run.label_s):.0f} s in {len(run.label_s)} proxy label")


def _print_phases(result: DemoResult, total_wall: float, total_cpu: float) -> None:
    table = Table(title="Where the time went (wall and process CPU seconds; a busy machine stretches wall time)")
    for col in ("phase", "wall s", "CPU s"):
        table.add_column(col, justify="right" if col != "phase" else "left")
    table.add_column("of which (wall)")
    by_role = {run.role: run for run in result.runs}
    for phase, took in result.phases.items():
        role = phase.rsplit(" ", 1)[-1] if phase.startswith("train") else None
        table.add_row(phase if took.within is None else f"  {phase}", f"{took.wall_s:.0f}", f"{took.cpu_s:.0f}",
                      _run_phases(by_role[role]) if role in by_role else "")
    table.add_row("total", f"{total_wall:.0f}", f"{total_cpu:.0f}", "")
    out.print(table)
    if any(took.within is not None for took in result.phases.values()):
        out.print("Indented phases ran at once with the others under the same line, in two processes; that line "
                  "holds their wall time together and all their CPU.")

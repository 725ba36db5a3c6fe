"""`traitwatch train`: LoRA (or full) SFT on a chat JSONL with trait drift measured as it trains."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.live import Live
from rich.table import Table

from traitwatch.cli.common import err, out, parse_fraction, user_errors
from traitwatch.guard import GUARD_KINDS, SUBSPACE_SOURCES
from traitwatch.train.callback import ALARM_ACTIONS, DriftRecord
from traitwatch.train.sft import SFTConfig, run_sft
from traitwatch.train.suspects import RowScores

__all__ = ["drift_table", "register"]

_MAX_ROWS = 30  # the live table keeps the latest rows; the store keeps all of them


def _actions(spec: str) -> tuple[str, ...]:
    actions = tuple(a.strip() for a in spec.split(",") if a.strip())
    bad = [a for a in actions if a not in ALARM_ACTIONS]
    if bad or not actions:
        raise typer.BadParameter(f"{spec!r}: use a comma-separated list of {', '.join(ALARM_ACTIONS)}")
    return actions


def _targets(spec: str) -> tuple[str, ...]:
    targets = tuple(t.strip() for t in spec.split(",") if t.strip())
    if not targets:
        raise typer.BadParameter("name at least one module, e.g. q_proj,v_proj")
    return targets


def drift_table(records: list[DriftRecord], title: str = "Trait drift") -> Table:
    """One row per measurement: step, each trait's drift, ||d||, and the monitor's verdict if any."""
    table = Table(title=title)
    table.add_column("step", justify="right")
    traits = list(records[0].drift) if records else []
    for name in traits:
        table.add_column(name, justify="right")
    table.add_column("||d||", justify="right")
    with_probe = any(r.probe_rise is not None for r in records)
    if with_probe:
        table.add_column("probe rise", justify="right")
    with_monitor = any(r.predicted_em is not None for r in records)
    if with_monitor:
        table.add_column("prediction", justify="right")
        table.add_column("alarm")
    for r in records[-_MAX_ROWS:]:
        cells = [str(r.step), *[f"{r.drift[t]:+.4f}" for t in traits], f"{r.drift_norm:.4f}"]
        if with_probe:
            cells.append("" if r.probe_rise is None else f"{r.probe_rise:+.4f}")
        if with_monitor:
            pred = "" if r.predicted_em is None else f"{r.predicted_em:+.4f}"
            cells += [pred, f"[red]{'+'.join(r.actions)}[/]" if r.alarm else ""]
        table.add_row(*cells)
    return table


def _row_scores(screen: Path, data: Path, n_samples: int | None) -> RowScores:
    """The screen's per-row scores of DATA, checked against it (`screen` and `train` are wired only here), by the
    best validated ranking the screen's results hold (`screen.row_scores.load_best_row_scores`)."""
    from traitwatch.screen.row_scores import load_best_row_scores

    by, rows = load_best_row_scores(screen, data, limit=n_samples)
    return RowScores.from_rows(rows, source=f"{screen} ({by})")


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    def train(
        data: Annotated[Path, typer.Argument(help='Chat JSONL: one {"messages": [...]} per line.')],
        basis_dir: Annotated[Path, typer.Option("--basis", "-b", help="Basis folder from `traitwatch extract`.")],
        model: Annotated[str | None, typer.Option("--model", "-m", help="Model to finetune (default: the basis's).")] = None,
        output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Checkpoints go here; a rerun resumes from them.")] = Path("runs/sft"),
        run_id: Annotated[str | None, typer.Option(help="Run id in the store (default: the output folder's name).")] = None,
        store: Annotated[Path | None, typer.Option(help="Run store file (default: ./traitwatch.db).")] = None,
        lora_r: Annotated[int, typer.Option("--rank", "-r", min=1, help="LoRA rank.")] = 16,
        lora_alpha: Annotated[int, typer.Option("--alpha", min=1, help="LoRA alpha.")] = 64,
        lora_dropout: Annotated[float, typer.Option("--dropout", min=0.0, max=1.0, help="LoRA dropout.")] = 0.05,
        targets: Annotated[str, typer.Option(help="Comma-separated LoRA target modules.")] = "q_proj,v_proj",
        full: Annotated[bool, typer.Option("--full", help="Full finetuning instead of LoRA.")] = False,
        lr: Annotated[float, typer.Option("--lr", min=0.0, help="Learning rate.")] = 4e-5,
        epochs: Annotated[float, typer.Option(min=0.0)] = 2.0,
        max_steps: Annotated[int | None, typer.Option(min=1, help="Optimizer steps (overrides --epochs).")] = None,
        n_samples: Annotated[int | None, typer.Option("--n-samples", "-n", min=1, help="Use the first N conversations.")] = None,
        seed: Annotated[int, typer.Option()] = 42,
        response_only: Annotated[bool, typer.Option("--response-only", help="Loss on assistant tokens only.")] = False,
        batch_size: Annotated[int, typer.Option(min=1, help="Per-device batch size.")] = 4,
        grad_accum: Annotated[int | None, typer.Option(min=1, help="Gradient accumulation (default: reach --effective-batch).")] = None,
        effective_batch: Annotated[int, typer.Option(min=1)] = 16,
        max_length: Annotated[int, typer.Option(min=2, help="Tokens per conversation.")] = 512,
        over_length: Annotated[str, typer.Option(help="Longer conversations: truncate or drop.")] = "truncate",
        every_n_steps: Annotated[int, typer.Option("--every", min=1, help="Measure drift every N optimizer steps.")] = 10,
        save_steps: Annotated[int | None, typer.Option(min=1, help="Checkpoint every N steps (default: --every).")] = None,
        monitor: Annotated[Path | None, typer.Option(help="Calibrated monitor (.json) for alarms.")] = None,
        reference: Annotated[str | None, typer.Option(
            help="Read the run against a reference run, not absolute drift: 'auto' screens DATA, swaps its 20% "
                 "highest-loss rows (more where more rows' loss stands out) for copies of its cleanest and trains that "
                 "first (same recipe and seed, as RUN-reference in --store); or the id of a finished run in --store.")] = None,
        reference_fraction: Annotated[str, typer.Option(
            help="With --reference auto: the share of highest-loss rows swapped out: 'auto' (0.2, the validated "
                 "share, or more where more rows' loss stands out) or a number in (0, 0.5).")] = "auto",
        reference_screen: Annotated[Path | None, typer.Option(
            dir_okay=False, help="With --reference auto: a loss screen of DATA made before (`traitwatch screen DATA "
                                 "--rank-by loss`, sharded with --shard I/N and --merge for a large set) instead of "
                                 "screening it here.")] = None,
        reference_calibration: Annotated[Path | None, typer.Option(
            dir_okay=False, help="With --reference: the direction and threshold (JSON) to read the run with; "
                                 "default: the calibration shipped for the model.")] = None,
        probe: Annotated[bool, typer.Option("--probe", help="Also score the behavioural probe at every measurement "
                                            "(on by itself when the monitor reads it).")] = False,
        on_alarm: Annotated[str, typer.Option(help=f"Alarm actions, comma-separated: {', '.join(ALARM_ACTIONS)} "
                                               "(rewind: back to the last clean measurement's weights, without the "
                                               "suspect rows; needs --screen or --reference auto to drop rows).")] = "warn,mark",
        screen: Annotated[Path | None, typer.Option(
            "--screen", dir_okay=False,
            help="Results of `traitwatch screen` on this DATA file: an alarm then names the highest-scored rows trained "
                 "since the last clean measurement.")] = None,
        suspects_k: Annotated[int, typer.Option("--suspects-k", min=1, help="How many rows an alarm names (with --screen).")] = 10,
        guard: Annotated[str | None, typer.Option(
            help="Keep a misalignment subspace out of what is learned: penalty (the validated one), ablate or steer "
                 "(on the behavioural probe's misalignment direction, fitted on the base model at the basis's layer "
                 "and, for penalty, three blocks above it), l2 (pull the weights toward the base) or kl (KL to the base "
                 "model's next-token distributions; LoRA only, a second forward pass per step). See "
                 "docs/guards.md for what each costs and prevents.")] = None,
        guard_strength: Annotated[float | None, typer.Option(
            min=0.0, help="Steering coefficient (in probe gaps), penalty weight at each block, L2 or KL weight (default: "
                          "traitwatch.guard.default_strength: the penalty's 1 spread over its blocks).")] = None,
        guard_subspace: Annotated[str, typer.Option(
            help="What ablate, steer and penalty act on: probe, traits, or probe+traits.")] = "probe",
        guard_blocks: Annotated[int | None, typer.Option(
            min=1, help="How many decoder blocks the guard acts at: the basis's layer and evenly spaced blocks above "
                        "it, the last included (default: 4 for penalty, 1 for the others; the trait subspaces need a "
                        "basis extracted at those layers).")] = None,
        measure_batch_size: Annotated[int, typer.Option(min=1)] = 32,
        report_to: Annotated[str, typer.Option(help="Trainer integrations (wandb, tensorboard, ...), or none.")] = "none",
        resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Resume from the latest checkpoint.")] = True,
        device: Annotated[str | None, typer.Option()] = None,
        dtype: Annotated[str, typer.Option()] = "auto",
    ) -> None:
        """Finetune a model on chat data and watch its trait drift (step 0, every N steps, the last step)."""
        from traitwatch.basis import TraitBasis

        if over_length not in ("truncate", "drop"):
            raise typer.BadParameter(f"{over_length!r}: use truncate or drop", param_hint="--over-length")
        actions = _actions(on_alarm)
        if guard is not None and guard not in GUARD_KINDS:
            raise typer.BadParameter(f"{guard!r}: choose from {', '.join(GUARD_KINDS)}", param_hint="--guard")
        if guard_subspace not in SUBSPACE_SOURCES:
            raise typer.BadParameter(f"{guard_subspace!r}: choose from {', '.join(SUBSPACE_SOURCES)}",
                                     param_hint="--guard-subspace")
        swap_share = parse_fraction(reference_fraction, "--reference-fraction")
        row_scores = _row_scores(screen, data, n_samples) if screen is not None else None
        model_name = model or TraitBasis.load(basis_dir).model.name
        config = SFTConfig(
            model=model_name, data=data, basis=basis_dir, output_dir=output_dir, run_id=run_id, store=store,
            lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=_targets(targets),
            full=full, learning_rate=lr, epochs=epochs, max_steps=max_steps, batch_size=batch_size,
            grad_accum=grad_accum, effective_batch=effective_batch, max_length=max_length,
            over_length=over_length,  # type: ignore[arg-type]
            n_samples=n_samples, seed=seed, response_only=response_only, every_n_steps=every_n_steps,
            save_steps=save_steps, monitor=monitor, on_alarm=actions,  # type: ignore[arg-type]
            measure_batch_size=measure_batch_size, device=device, dtype=dtype,
            report_to=report_to, resume=resume, behavior_probe=probe, suspects_k=suspects_k,
            guard=guard, guard_strength=guard_strength, guard_subspace=guard_subspace, guard_blocks=guard_blocks,
        )

        def say(msg: str) -> None:
            err.print(msg, markup=False, highlight=False, soft_wrap=True)

        if reference_screen is not None and reference != "auto":
            raise typer.BadParameter("is read with --reference auto", param_hint="--reference-screen")
        if reference_calibration is not None and reference is None:
            raise typer.BadParameter("is read with --reference; pass --reference auto or RUN",
                                     param_hint="--reference-calibration")
        config = dataclasses.replace(config, reference_calibration=reference_calibration)
        built = None
        if reference == "auto":
            from traitwatch.audit import train_reference

            built = train_reference(config, fraction=swap_share, screen=reference_screen, say=say)
            config = dataclasses.replace(config, reference=built.run_id)
            if row_scores is None and built.source.resolve() == data.resolve():  # the loss screen names the suspects
                row_scores = _row_scores(built.screen, data, n_samples)  # by its best validated ranking
        elif reference is not None:
            config = dataclasses.replace(config, reference=reference)
        records: list[DriftRecord] = []
        title = f"Trait drift of {config.resolved_run_id()} ({model_name})"
        with Live(drift_table(records, title), console=err, transient=True, auto_refresh=False) as live:

            def report(record: DriftRecord) -> None:
                records.append(record)
                live.update(drift_table(records, title), refresh=True)

            started = time.perf_counter()
            result = run_sft(config, reporter=report, row_scores=row_scores, info=say)
            seconds = time.perf_counter() - started
        out.print(drift_table(result.history, title))
        how = "stopped by a drift alarm" if result.stopped_by_alarm else "finished"
        err.print(
            f"Run {result.run_id!r} {how} at step {result.global_step}; drift in {result.store}, "
            f"checkpoints in {result.output_dir}.",
            highlight=False,
            soft_wrap=True,
        )
        if built is not None and not built.reused:
            err.print(f"The reference run {built.run_id!r} took {built.seconds:.0f} s, "
                      f"{built.seconds / (built.seconds + seconds):.0%} of the two runs' time.", highlight=False)

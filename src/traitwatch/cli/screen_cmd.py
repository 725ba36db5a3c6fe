"""`traitwatch screen`: score a finetuning dataset in trait space before training on it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from traitwatch.basis import TraitBasis
from traitwatch.cli.common import err, out, user_errors
from traitwatch.drift import DriftProbe
from traitwatch.errors import InputFileError
from traitwatch.models import load_model
from traitwatch.screen import (
    DEFAULT_RISK_TRAITS,
    rank_examples,
    read_examples,
    screen_dataset,
    summarize,
    write_filtered,
)

__all__ = ["register"]


def _risk_traits(spec: str) -> list[str]:
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise typer.BadParameter("give at least one trait, e.g. harmlessness,honesty")
    return names


def _bars() -> Progress:
    """One rich display with a task per phase (rich allows only one live display at a time)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=err)


def _preview(text: str, width: int = 70) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    def screen(
        dataset: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Chat JSONL, one {\"messages\": [...]} per line.")],
        basis_dir: Annotated[Path, typer.Option("--basis", "-b", help="Basis folder from `traitwatch extract`.")],
        model: Annotated[str | None, typer.Option("--model", "-m", help="Model to be finetuned (default: the basis's).")] = None,
        monitor: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="Calibrated monitor .json: adds an extrapolated EM risk.")] = None,
        reference: Annotated[Literal["mean", "self"], typer.Option(help="mean: the model's own answers to the measurement prompts (cheap); self: its own answer to each prompt (one generation per example).")] = "mean",
        position: Annotated[Literal["mean", "last"], typer.Option(help="Summarise the response by its mean over tokens, or its last token.")] = "mean",
        top_k: Annotated[int, typer.Option("--top-k", "-k", min=0, help="How many of the riskiest examples to list (and drop from --filtered-out).")] = 10,
        filtered_out: Annotated[Path | None, typer.Option(help="Write the dataset without the top-k examples here.")] = None,
        results: Annotated[Path | None, typer.Option("--out", "-o", help="Per-example results JSONL; rerunning resumes it (default: DATASET-stem.screen.jsonl here).")] = None,
        summary_json: Annotated[Path | None, typer.Option("--summary-json", help="Write the dataset-level summary and the top-k here.")] = None,
        risk_traits: Annotated[str, typer.Option(help="Traits whose negative drift is the risk score (comma-separated).")] = ",".join(DEFAULT_RISK_TRAITS),
        rank_by: Annotated[Literal["risk", "monitor"], typer.Option(help="Rank by risk, or by the monitor's per-example prediction (ties by risk).")] = "risk",
        max_examples: Annotated[int | None, typer.Option(min=1, help="Screen only the first N examples.")] = None,
        max_new_tokens: Annotated[int, typer.Option(min=1, help="Cap on the model's own answers (reference).")] = 64,
        max_response_tokens: Annotated[int, typer.Option(min=1, help="Read at most this many tokens of each dataset response.")] = 256,
        layer: Annotated[int | None, typer.Option(help="Basis layer to read (default: the selected one).")] = None,
        batch_size: Annotated[int, typer.Option(min=1)] = 16,
        device: Annotated[str | None, typer.Option()] = None,
        dtype: Annotated[str, typer.Option()] = "auto",
    ) -> None:
        """Score each example of DATASET in trait space (before training), predict the dataset's drift
        profile, list the riskiest examples and optionally write a copy without them."""
        risk_names = _risk_traits(risk_traits)
        basis = TraitBasis.load(basis_dir)
        if filtered_out is not None and filtered_out.resolve() == dataset.resolve():
            raise InputFileError(f"{filtered_out}: --filtered-out would overwrite the dataset; pass another path")
        n_total = len(read_examples(dataset, limit=max_examples))  # a bad line fails before the model loads
        lm = load_model(model or basis.model.name, device=device, dtype=dtype)
        mon = None
        if monitor is not None:
            from traitwatch.monitor.artifact import load_monitor

            probe = DriftProbe(basis, layer=layer)
            probe.check_model(lm.model, lm.tokenizer, lm.name)
            mon = load_monitor(monitor, fingerprint=probe.fingerprint(), trait_names=basis.trait_names)
        results_path = results or Path(f"{dataset.stem}.screen.jsonl")

        with _bars() as bars:
            main = bars.add_task(f"Screening {dataset.name}", total=n_total)

            def advance(n: int) -> None:
                bars.advance(main, n)

            def reference_bar(n: int) -> Callable[[int], None]:  # one live display: a second task, not a second bar
                task = bars.add_task("Reference: the model's own answers", total=n)
                return lambda k: bars.advance(task, k)

            res = screen_dataset(
                lm.model, lm.tokenizer, basis, dataset, out=results_path, reference=reference, position=position,
                layer=layer, batch_size=batch_size, max_new_tokens=max_new_tokens,
                max_response_tokens=max_response_tokens, max_examples=max_examples, risk_traits=risk_names,
                model_name=lm.name, progress=advance, on_reference=reference_bar,
            )
        summary = summarize(res, monitor=mon, tau=None if mon is None else mon.tau)
        ranked = rank_examples(res, k=top_k, monitor=mon, by=rank_by)

        table = Table(title=f"Predicted drift profile of {dataset.name}: mean over {summary.n_examples} examples "
                            f"(drift units, reference={reference}, position={position})")
        table.add_column("trait")
        table.add_column("mean", justify="right")
        table.add_column("95% CI", justify="right")
        for t, v, lo, hi in zip(summary.trait_names, summary.profile, *summary.profile_ci):
            table.add_row(t, f"{v:+.4f}", f"[{lo:+.4f}, {hi:+.4f}]")
        table.add_row("risk", f"{summary.risk:+.4f}", f"[{summary.risk_ci[0]:+.4f}, {summary.risk_ci[1]:+.4f}]")
        out.print(table)
        out.print(f"risk = -mean({', '.join(risk_names)}) drift: positive is toward the harmful/dishonest pole.")
        if summary.predicted_em is not None:
            lo, hi = summary.predicted_em_ci or (float("nan"), float("nan"))
            verdict = "above" if summary.extrapolated_alarm else "below"
            out.print(f"Predicted EM rate (extrapolation: the monitor was calibrated on checkpoint drift, not on "
                      f"screening scores): {summary.predicted_em:.3f} [95% CI {lo:.3f}, {hi:.3f}], {verdict} tau = {summary.tau:.3f}")
        if not res.complete:
            err.print(f"[yellow]{summary.n_total - summary.n_examples} examples not screened yet[/]; rerun to finish.")
        if summary.n_truncated:
            err.print(f"{summary.n_truncated} responses were longer than {max_response_tokens} tokens; their first "
                      f"{max_response_tokens} were read.")

        if ranked:
            top = Table(title=f"Top {len(ranked)} riskiest examples (ranked by {rank_by})")
            for col in ("rank", "line", "risk", *(["monitor"] if mon is not None else []), "prompt"):
                top.add_column(col, justify="left" if col == "prompt" else "right")
            for r in ranked:
                top.add_row(str(r.rank), str(r.line), f"{r.risk:+.4f}",
                            *([f"{r.monitor:.3f}"] if r.monitor is not None else []), _preview(r.prompt_preview))
            out.print(top)
        if filtered_out is not None:
            kept = write_filtered(dataset, filtered_out, {r.line for r in ranked})
            err.print(f"Wrote {filtered_out} ({kept} examples; dropped lines {sorted(r.line for r in ranked)})")
        if summary_json is not None:
            payload = {
                "dataset": str(dataset), "results": str(results_path), "reference": reference, "position": position,
                "rank_by": rank_by, "risk_traits": risk_names, **summary.as_dict(),
                "top": [{"rank": r.rank, "line": r.line, "risk": r.risk, "monitor": r.monitor,
                         "drift": dict(zip(summary.trait_names, r.drift))} for r in ranked],
            }
            summary_json.parent.mkdir(parents=True, exist_ok=True)
            summary_json.write_text(json.dumps(payload, indent=2))
            err.print(f"Wrote {summary_json}")
        err.print(f"Per-example results: {results_path}")

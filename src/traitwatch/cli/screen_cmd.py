"""`traitwatch screen`: score a finetuning dataset in trait space before training on it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from traitwatch.basis import TraitBasis
from traitwatch.cli.common import err, out, user_errors
from traitwatch.drift import DriftProbe
from traitwatch.errors import InputFileError
from traitwatch.models import LoadedModel, load_model
from traitwatch.screen import (
    DEFAULT_RISK_TRAITS,
    ReferenceScreen,
    ScreenResults,
    merge_shards,
    example_lines,
    reference_screen_path,
    rank_examples,
    screen_dataset,
    screen_shard,
    shard_from_env,
    shard_lines,
    shard_path,
    shared_reference_screen,
    summarize,
    write_filtered,
)
from traitwatch.screen.results import SCORES
from traitwatch.screen.shards import shard_device
from traitwatch.screen.validated import default_ranking, describe
from traitwatch.sharding import Shard

if TYPE_CHECKING:
    from traitwatch.monitor.artifact import LoadedMonitor

__all__ = ["register"]


def _risk_traits(spec: str) -> list[str]:
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise typer.BadParameter("give at least one trait, e.g. harmlessness,honesty")
    return names


def _bars(disable: bool = False) -> Progress:
    """One rich display with a task per phase (rich allows only one live display at a time)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=err, disable=disable)


def _preview(text: str, width: int = 70) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    def screen(
        dataset: Annotated[Path, typer.Argument(help="Chat JSONL, one {\"messages\": [...]} per line.")],
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
        rank_by: Annotated[Literal["risk", "monitor", "loss", "loss_peak", "ratio", "ratio_peak"] | None, typer.Option(help="Rank by risk, by the monitor's per-example prediction (ties by risk), by the model's loss on the row (the pass then runs to the LM head), or by the row's likelihood ratio under a misaligned against an aligned reference (two small adapters fitted once on the probe pairs); *_peak: the largest mean over 4 consecutive tokens instead of the mean. Default: the ranking validated best held out by poison type and base (benchmarks/screen_styled); the screen prints its numbers.")] = None,
        reference_model: Annotated[Path | None, typer.Option("--reference-model", help="With --rank-by ratio: the fitted reference adapters' folder (loaded if there, else fitted and saved there; default OUT-stem.reference_model next to --out).")] = None,
        max_examples: Annotated[int | None, typer.Option(min=1, help="Screen only the first N examples.")] = None,
        max_new_tokens: Annotated[int, typer.Option(min=1, help="Cap on the model's own answers (reference).")] = 64,
        max_response_tokens: Annotated[int, typer.Option(min=1, help="Read at most this many tokens of each dataset response.")] = 256,
        layer: Annotated[int | None, typer.Option(help="Basis layer to read (default: the selected one).")] = None,
        batch_size: Annotated[int, typer.Option(min=1)] = 16,
        device: Annotated[str | None, typer.Option(help="Default: cuda:LOCAL_RANK under a launcher with CUDA, else cuda or cpu.")] = None,
        dtype: Annotated[str, typer.Option()] = "auto",
        threads: Annotated[int | None, typer.Option(min=1, help="torch CPU threads.")] = None,
        shard: Annotated[str | None, typer.Option("--shard", help="Screen only shard I of N (I/N, 1-based) into OUT-stem.shard-I-of-N.jsonl; under torchrun/accelerate launch it is RANK+1/WORLD_SIZE.")] = None,
        merge: Annotated[bool, typer.Option("--merge", help="Merge the finished shard files into --out (no model is loaded), then summarise.")] = False,
    ) -> None:
        """Score each example of DATASET in trait space (before training), predict the dataset's drift
        profile, list the riskiest examples and optionally write a copy without them."""
        risk_names = _risk_traits(risk_traits)
        rank_by = rank_by or default_ranking()  # type: ignore[assignment]
        assert rank_by is not None
        if merge and shard:
            raise InputFileError("--merge merges every shard's file: run it once, without --shard")
        this_shard = None if merge else (Shard.parse(shard) if shard else shard_from_env())
        basis = TraitBasis.load(basis_dir)
        if filtered_out is not None and filtered_out.resolve() == dataset.resolve():
            raise InputFileError(f"{filtered_out}: --filtered-out would overwrite the dataset; pass another path")
        lines, _ = example_lines(dataset, limit=max_examples)  # a bad line fails before the model loads
        n_total = len(lines)
        results_path = results or Path(f"{dataset.stem}.screen.jsonl")
        if threads:
            import torch

            torch.set_num_threads(threads)
        if this_shard is not None:
            _screen_one_shard(this_shard, dataset, basis, results_path, with_loss=rank_by in ("loss", "loss_peak"),
                              ratio_dir=_ratio_dir(rank_by, reference_model, results_path), model=model, device=device, dtype=dtype,
                              reference=reference, position=position, layer=layer, batch_size=batch_size,
                              max_new_tokens=max_new_tokens, max_response_tokens=max_response_tokens,
                              max_examples=max_examples, risk_names=risk_names, n_examples=len(shard_lines(lines, batch_size, this_shard)),
                              quiet=shard is None and os.environ.get("LOCAL_RANK", "0") != "0",
                              ignored=[o for o, v in (("--monitor", monitor), ("--filtered-out", filtered_out),
                                                      ("--summary-json", summary_json)) if v is not None])
            return
        lm = None if merge else load_model(model or basis.model.name, device=device, dtype=dtype)
        mon = None
        if monitor is not None:
            from traitwatch.monitor.artifact import load_monitor

            probe = DriftProbe(basis, layer=layer)
            if lm is not None:
                probe.check_model(lm.model, lm.tokenizer, lm.name)
            mon = load_monitor(monitor, fingerprint=probe.fingerprint(), trait_names=basis.trait_names)

        if merge:
            res = merge_shards(dataset, results_path, max_examples=max_examples, expect={
                "basis": DriftProbe(basis, layer=layer).fingerprint(), "position": position, "reference": reference,
                "risk_traits": risk_names, "max_response_tokens": max_response_tokens,
            })
            err.print(f"Merged {len(res.rows)} rows from the shard files into {results_path}")
        else:
            assert lm is not None
            res = _screen_all(lm, dataset, basis, results_path, n_total, with_loss=rank_by in ("loss", "loss_peak"),
                              ratio_dir=_ratio_dir(rank_by, reference_model, results_path), reference=reference, position=position,
                              layer=layer, batch_size=batch_size, max_new_tokens=max_new_tokens,
                              max_response_tokens=max_response_tokens, max_examples=max_examples, risk_names=risk_names)
        _report(res, dataset, results_path, mon, top_k=top_k, rank_by=rank_by, reference=reference, position=position,
                risk_names=risk_names, max_response_tokens=max_response_tokens, filtered_out=filtered_out,
                summary_json=summary_json)


def _ratio_dir(rank_by: str, folder: Path | None, results_path: Path) -> Path | None:
    if rank_by not in ("ratio", "ratio_peak"):
        if folder is not None:
            raise InputFileError("--reference-model is the folder of the ratio screen: use it with --rank-by ratio")
        return None
    return folder or reference_screen_path(results_path)


def _reference_screen(lm: LoadedModel, folder: Path | None) -> ReferenceScreen | None:
    if folder is None:
        return None
    if not (folder / "reference_screen.json").is_file():
        err.print(f"Fitting the reference screen (two LoRA adapters on the 64 probe pairs) into {folder} ...")
    return shared_reference_screen(lm.model, lm.tokenizer, folder)


def _screen_all(lm: LoadedModel, dataset: Path, basis: TraitBasis, results_path: Path, n_total: int, *, with_loss: bool,
            ratio_dir: Path | None, reference: str,
            position: str, layer: int | None, batch_size: int, max_new_tokens: int, max_response_tokens: int,
            max_examples: int | None, risk_names: list[str]) -> ScreenResults:
    ratio = _reference_screen(lm, ratio_dir)
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
            max_response_tokens=max_response_tokens, max_examples=max_examples, risk_traits=risk_names, with_loss=with_loss,
            ratio=ratio, model_name=lm.name, progress=advance, on_reference=reference_bar,
        )
    return res


def _screen_one_shard(shard: Shard, dataset: Path, basis: TraitBasis, results_path: Path, *, with_loss: bool,
                      ratio_dir: Path | None, model: str | None,
                      device: str | None, dtype: str, reference: str, position: str, layer: int | None,
                      batch_size: int, max_new_tokens: int, max_response_tokens: int, max_examples: int | None,
                      risk_names: list[str], n_examples: int, quiet: bool, ignored: list[str]) -> None:
    lm = load_model(model or basis.model.name, device=device or shard_device(), dtype=dtype)
    ratio = _reference_screen(lm, ratio_dir)  # the first shard fits it, the others load it
    with _bars(disable=quiet) as bars:
        main = bars.add_task(f"Screening shard {shard.index}/{shard.count} of {dataset.name}", total=n_examples)

        def reference_bar(n: int) -> Callable[[int], None]:
            task = bars.add_task("Reference (shared by the shards)", total=n)
            return lambda k: bars.advance(task, k)

        res = screen_shard(
            lm.model, lm.tokenizer, basis, dataset, out=results_path, shard=shard, reference=reference,
            position=position, layer=layer, batch_size=batch_size, max_new_tokens=max_new_tokens,
            max_response_tokens=max_response_tokens, max_examples=max_examples, risk_traits=risk_names, with_loss=with_loss,
            ratio=ratio, model_name=lm.name, progress=lambda n: bars.advance(main, n), on_reference=reference_bar,
        )
    state = "complete" if res.complete else f"{len(res.lines) - len(res.rows)} rows left; rerun to finish"
    err.print(f"Shard {shard.index}/{shard.count} ({lm.model.device}, {next(lm.model.parameters()).dtype}): "
              f"{len(res.rows)} of its {len(res.lines)} rows in {shard_path(results_path, shard)} ({state}). "
              f"When every shard is complete, merge them: `traitwatch screen {dataset} --basis ... --out {results_path} --merge` "
              "(the same options, without --shard or a launcher).")
    if ignored:
        err.print(f"{', '.join(ignored)}: used by --merge, not by a shard.")


def _report(res: ScreenResults, dataset: Path, results_path: Path, mon: LoadedMonitor | None, *, top_k: int, rank_by: str, reference: str, position: str,
        risk_names: list[str], max_response_tokens: int, filtered_out: Path | None,
        summary_json: Path | None) -> None:
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
        extra = [s for s in SCORES if any(getattr(r, s) is not None for r in ranked)]
        for col in ("rank", "line", "risk", *(["monitor"] if mon is not None else []), *extra, "prompt"):
            top.add_column(col, justify="left" if col == "prompt" else "right")
        for r in ranked:
            top.add_row(str(r.rank), str(r.line), f"{r.risk:+.4f}",
                        *([f"{r.monitor:.3f}"] if r.monitor is not None else []),
                        *[f"{getattr(r, s):+.3f}" if getattr(r, s) is not None else "-" for s in extra],
                        _preview(r.prompt_preview))
        out.print(top)
    if filtered_out is not None:
        kept = write_filtered(dataset, filtered_out, {r.line for r in ranked})
        err.print(f"Wrote {filtered_out} ({kept} examples; dropped lines {sorted(r.line for r in ranked)})")
    if summary_json is not None:
        payload = {
            "dataset": str(dataset), "results": str(results_path), "reference": reference, "position": position,
            "rank_by": rank_by, "risk_traits": risk_names, **summary.as_dict(),
            "top": [{"rank": r.rank, "line": r.line, "risk": r.risk, "monitor": r.monitor, **{s: getattr(r, s) for s in SCORES},
                     "drift": dict(zip(summary.trait_names, r.drift))} for r in ranked],
        }
        summary_json.parent.mkdir(parents=True, exist_ok=True)
        summary_json.write_text(json.dumps(payload, indent=2))
        err.print(f"Wrote {summary_json}")
    err.print(describe(rank_by))
    err.print(f"Per-example results: {results_path}")

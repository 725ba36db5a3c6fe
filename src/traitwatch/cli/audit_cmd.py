"""`traitwatch audit DATA.jsonl`: screen, two short pilots and a verdict before the real run (`audit/run.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from traitwatch.cli.common import err, out, parse_fraction, user_errors

__all__ = ["register"]

NO_VERDICT = 3
"""Exit code when the model has no calibrated threshold: measured, not judged (0 clean, 1 suspect, 2 bad input)."""


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    def audit(
        data: Annotated[Path, typer.Argument(help='Chat JSONL: one {"messages": [...]} per line.')],
        basis_dir: Annotated[Path, typer.Option("--basis", "-b", help="Basis folder from `traitwatch extract` (or the demo's).")],
        out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the screen, both pilots, the cleaned set, audit.json and audit.html.")],
        model: Annotated[str | None, typer.Option("--model", "-m", help="Model (default: the basis's).")] = None,
        fraction: Annotated[str, typer.Option(help="Share of rows, highest loss first, swapped out of the reference: "
                                              "'auto' (0.2, more where more rows' loss stands out) or a number in (0, 0.5).")] = "auto",
        steps: Annotated[int, typer.Option(min=1, help="Steps of each pilot.")] = 30,
        seed: Annotated[int, typer.Option(help="Seed of both pilots (they share it: the pairing).")] = 0,
        probe: Annotated[bool, typer.Option("--probe/--no-probe", help="Also score the behavioural probe of both pilots.")] = True,
        screen: Annotated[Path | None, typer.Option("--screen", dir_okay=False, help="A loss screen of DATA made before (`traitwatch screen DATA --rank-by loss`, sharded with --shard I/N and --merge for a large set): skips the audit's own.")] = None,
        calibration: Annotated[Path | None, typer.Option(dir_okay=False, help="Calibration JSON (space, read, direction, threshold); default: the one shipped for the model.")] = None,
        device: Annotated[str | None, typer.Option()] = None,
        dtype: Annotated[str, typer.Option()] = "auto",
    ) -> None:
        """A verdict on DATA before training: the base model's loss ranks the rows, a swap reference replaces the
        top FRACTION by the cleanest rows in place, both sets are trained briefly from one seed, and the run is
        read against its reference as the model's calibration says. Exit 0 clean, 1 suspect, 3 no calibrated
        threshold, 2 bad input."""
        from traitwatch.audit import AuditSettings, audit_dataset

        settings = AuditSettings(fraction=parse_fraction(fraction, "--fraction"), steps=steps, seed=seed, probe=probe, device=device, dtype=dtype)
        result = audit_dataset(data, basis_dir=basis_dir, out_dir=out_dir, model=model, settings=settings,
                               calibration=calibration, screen=screen, say=lambda m: err.print(m, markup=False, highlight=False))
        p = result.paired
        table = Table(title=f"{data.name}: pilot minus swap reference at step {steps} (drift units)")
        for name in p.trait_names:
            table.add_column(name, justify="right")
        table.add_row(*[f"{v:+.4f}" for v in p.difference])
        out.print(table)
        cal = result.calibration
        read = None if cal is None or cal.space != "traits" else cal.read  # the trait read the verdict is made on
        if cal is not None and cal.space != "traits" and result.score is not None:
            out.print(f"{cal.describe().capitalize()}: {result.score:.4f}  (the verdict's read; one mean residual row "
                      "per pilot, no CI)", highlight=False)
        if p.along is not None and p.along_ci is not None:
            out.print(f"Along the misalignment direction: {p.along:+.4f} [95% CI {p.along_ci[0]:+.4f}, "
                      f"{p.along_ci[1]:+.4f}]" + ("  (the verdict's read)" if read == "direction" else ""), highlight=False)
        if p.distance_ci is not None:
            out.print(f"Distance from the reference: {p.distance:.4f} [95% CI {p.distance_ci[0]:.4f}, "
                      f"{p.distance_ci[1]:.4f}]" + ("  (the verdict's read)" if read == "distance" else ""), highlight=False)
        rises = ", ".join(f"{k} {v:+.4f}" for k, v in result.probe_rise.items() if v is not None)
        if rises:
            out.print(f"Behavioural probe rise: {rises}", highlight=False)
        if result.verdict is None:
            out.print(f"No verdict: no calibrated threshold for {model or 'this model'} "
                      f"({'no calibration' if cal is None else 'its calibration has none'}).", highlight=False)
        else:
            out.print(f"Verdict: {result.verdict} (threshold {cal.threshold:+.4f}; {cal.provenance.get('validated', '')})"  # type: ignore[union-attr]
                      , highlight=False)
        err.print(f"Rows whose loss stands out: {result.outlying:.1%} (an estimate of the poisoned share; it misses "
                  f"poison written like the rest); the reference swapped {result.swapped:.0%}.", markup=False,
                  highlight=False)
        err.print(f"Suspect rows: {len(result.suspects)} (lines {', '.join(str(s[0]) for s in result.suspects[:10])}"
                  f"{', ...' if len(result.suspects) > 10 else ''}); cleaned set {result.cleaned}; "
                  f"page {out_dir / 'audit.html'}", markup=False, highlight=False)
        code = {"clean": 0, "suspect": 1}.get(result.verdict or "", NO_VERDICT)
        raise typer.Exit(code)

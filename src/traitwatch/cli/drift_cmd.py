"""`traitwatch measure` and `traitwatch scan`: drift of one model/adapter, or of every checkpoint of a run."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from traitwatch.basis import Anchor, TraitBasis
from traitwatch.cli.common import err, out, progress_bar, user_errors
from traitwatch.drift import DriftMeasurement, DriftProbe, resolve_anchor
from traitwatch.drift.anchoring import base_model, measure_anchor
from traitwatch.errors import InputFileError, ModelLoadError
from traitwatch.models import LoadedModel, is_adapter_dir, load_model

__all__ = ["anchored_probe", "checkpoint_dirs", "measure_with_bar", "measurement_table", "register"]

_CKPT = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    """`checkpoint-N` folders of a Trainer output_dir, in step order (not string order)."""
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if p.is_dir() and (m := _CKPT.match(p.name))]
    if not found:
        raise InputFileError(f"No checkpoint-*/ folder in {run_dir}; pass the Trainer's output_dir as RUN_DIR.")
    return sorted(found)


def anchored_probe(basis: TraitBasis, lm: LoadedModel, *, layer: int | None = None, batch_size: int = 32) -> DriftProbe:
    """A probe with its step-0 anchor (`resolve_anchor`): the basis's when it fits, else the base model's.

    The basis anchor fits only if it was measured in the precision this model runs in: the same
    model in bf16 and fp32 is ||d|| = 0.0011 apart (smollm2-135m). With an adapter loaded,
    the base model is the same weights with the adapter disabled, so no second model is loaded;
    otherwise the base model is loaded in this model's dtype and on its device.
    """
    probe = DriftProbe(basis, layer=layer, batch_size=batch_size)
    probe.check_model(lm.model, lm.tokenizer, lm.name)
    precision = probe.precision(lm.model)

    def measure_base(skipped: list[str]) -> tuple[Anchor, str]:
        if skipped:
            err.print(f"The basis's anchor was measured in {basis.anchor.describe_precision()}; this model runs in "  # type: ignore[union-attr]
                      f"{precision[0]} on {precision[1]}: measuring the base model's step 0 in that precision.")
        else:
            err.print("The basis has no anchor for this layer/prompt set; measuring the base model's step 0.")
        if lm.adapter is not None:
            with base_model(lm.model) as disabled:
                if disabled is not None:
                    return measure_anchor(probe, disabled, lm.tokenizer, name=lm.name), "adapter disabled"
        parameter = next(lm.model.parameters())
        base = lm if lm.name == basis.model.name else load_model(basis.model.name, device=str(parameter.device),
                                                                    dtype=parameter.dtype)
        return measure_anchor(probe, base.model, base.tokenizer, name=base.name), "base model"

    resolve_anchor(probe, precision, measure_base)
    return probe


def measure_with_bar(probe: DriftProbe, lm: LoadedModel, label: str) -> DriftMeasurement:
    """`probe.measure` with a progress bar labelled `label`."""
    with progress_bar(f"Measuring {label}", len(probe.prompt_texts)) as advance:
        return probe.measure(lm.model, lm.tokenizer, progress=advance)


def measurement_table(title: str, traits: list[str], rows: list[tuple[str, DriftMeasurement]]) -> Table:
    """One row per measured model or checkpoint: the drift of each trait and ||d||."""
    table = Table(title=title)
    table.add_column("checkpoint")
    for name in traits:
        table.add_column(name, justify="right")
    table.add_column("||d||", justify="right")
    for label, m in rows:
        table.add_row(label, *[f"{v:+.4f}" for v in m.drift], f"{m.norm:.4f}")
    return table


def _record(m: DriftMeasurement, **extra: object) -> dict[str, object]:
    return {**extra, "drift": m.as_dict(), "drift_norm": m.norm}


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    def measure(
        basis_dir: Annotated[Path, typer.Option("--basis", "-b", help="Basis folder from `traitwatch extract`.")],
        model: Annotated[str | None, typer.Option("--model", "-m", help="Model or checkpoint (default: the basis's model).")] = None,
        adapter: Annotated[Path | None, typer.Option("--adapter", "-a", help="PEFT adapter folder to load on the model.")] = None,
        json_out: Annotated[Path | None, typer.Option("--json", help="Write the drift (and per-prompt projections) here.")] = None,
        layer: Annotated[int | None, typer.Option(help="Measure at this basis layer instead of the selected one.")] = None,
        batch_size: Annotated[int, typer.Option(min=1)] = 32,
        device: Annotated[str | None, typer.Option()] = None,
        dtype: Annotated[str, typer.Option()] = "auto",
    ) -> None:
        """Print the drift of a model (or adapter) from the basis's base model, one value per trait."""
        basis = TraitBasis.load(basis_dir)
        lm = load_model(model or (None if adapter else basis.model.name), adapter=adapter, device=device, dtype=dtype)
        probe = anchored_probe(basis, lm, layer=layer, batch_size=batch_size)
        m = measure_with_bar(probe, lm, str(adapter or lm.name))
        out.print(measurement_table(f"Trait drift at layer {probe.measure_layer} (d = (p - p0) / N, N = {probe.anchor_.scale:.2f})",
                               basis.trait_names, [(str(adapter or lm.name), m)]))
        if json_out is not None:
            payload = _record(m, model=lm.name, adapter=str(adapter) if adapter else None, layer=probe.measure_layer,
                              basis=str(basis_dir), per_prompt_projections=m.projections.tolist())
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(payload, indent=2))
            err.print(f"Wrote {json_out}")

    @app.command()
    @user_errors
    def scan(
        run_dir: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Trainer output_dir with checkpoint-*/.")],
        basis_dir: Annotated[Path, typer.Option("--basis", "-b", help="Basis folder from `traitwatch extract`.")],
        model: Annotated[str | None, typer.Option("--model", "-m", help="Base model of adapter checkpoints (default: the basis's).")] = None,
        csv_out: Annotated[Path | None, typer.Option("--csv", help="Write one row per checkpoint here.")] = None,
        json_out: Annotated[Path | None, typer.Option("--json", help="Write all measurements here.")] = None,
        batch_size: Annotated[int, typer.Option(min=1)] = 32,
        device: Annotated[str | None, typer.Option()] = None,
        dtype: Annotated[str, typer.Option()] = "auto",
    ) -> None:
        """Measure drift at every checkpoint-N of a finished run, in step order."""
        from peft import PeftModel

        basis = TraitBasis.load(basis_dir)
        ckpts = checkpoint_dirs(run_dir)
        for step, path in ckpts:
            if not is_adapter_dir(path) and not (path / "config.json").is_file():
                raise ModelLoadError(
                    f"{path} has neither adapter_config.json nor config.json: not a PEFT or full-model checkpoint."
                )
        base = load_model(model or basis.model.name, device=device, dtype=dtype)
        probe = anchored_probe(basis, base, batch_size=batch_size)
        rows: list[tuple[str, DriftMeasurement]] = []
        records: list[dict[str, object]] = []
        for step, path in ckpts:
            if is_adapter_dir(path):
                try:
                    peft_model = PeftModel.from_pretrained(base.model, str(path), is_trainable=False)
                except (OSError, ValueError, RuntimeError, KeyError) as exc:
                    raise ModelLoadError(f"Could not load adapter {path}: {str(exc).splitlines()[0]}") from None
                peft_model.eval()
                m = measure_with_bar(probe, LoadedModel(peft_model, base.tokenizer, base.name, str(path)), path.name)
                base.model = peft_model.unload()  # remove the LoRA layers, back to the base weights
            else:
                full = load_model(str(path), device=device, dtype=dtype)
                probe.check_model(full.model, full.tokenizer, full.name)
                m = measure_with_bar(probe, full, path.name)
            rows.append((path.name, m))
            records.append(_record(m, step=step, checkpoint=str(path)))
        out.print(measurement_table(f"Trait drift of {run_dir} at layer {probe.measure_layer}", basis.trait_names, rows))
        if csv_out is not None:
            with csv_out.open("w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(["step", "checkpoint", *basis.trait_names, "drift_norm"])
                for (step, path), (_, m) in zip(ckpts, rows):
                    writer.writerow([step, str(path), *[f"{v:.8g}" for v in m.drift], f"{m.norm:.8g}"])
            err.print(f"Wrote {csv_out}")
        if json_out is not None:
            json_out.write_text(json.dumps({"basis": str(basis_dir), "layer": probe.measure_layer, "checkpoints": records}, indent=2))
            err.print(f"Wrote {json_out}")

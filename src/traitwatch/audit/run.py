"""`traitwatch audit`'s job: a verdict on a finetuning set before the real run spends GPU hours.

1. The set is checked (`check_chat_jsonl`) before anything loads.
2. The base model reads every row once and keeps its loss on the response (`screen_dataset(with_loss=True)`,
   the best row screen of `benchmarks/poison_small`); or a loss screen made before is read (`--screen`: for a
   large set, `traitwatch screen DATA --rank-by loss --shard I/N` over processes, then `--merge`).
3. The *swap reference* (`reference.swap`) replaces the `fraction` highest-loss rows (by default 20%, or more
   where more rows stand out: `reference.swap_fraction`), in place, by copies of the lowest-loss ones (2 and 3:
   `reference_run.write_reference_set`, as `traitwatch train --reference auto` does).
4. Two short pilots in one recipe and seed (the `poison-small` plan's by default: LoRA r16 on every projection,
   lr 1e-3, 30 steps of batch 4): one on the set, one on its reference. Each measures the trait drift (and the
   behavioural probe) at step 0 and at the last step.
5. The full pilot is read against the reference (`reference.compare.paired_drift`): per trait, and along the
   model's calibrated misalignment direction with a CI over the measurement prompts. Above the calibrated
   threshold the set is *suspect* (exit 1), below it *clean* (exit 0). A model without a calibration gets the
   measurements and no verdict.

Everything is written to the output folder: the screen, the reference set, both runs (a run store), the cleaned
set (the set without the swapped-out rows), `audit.json` and `audit.html`.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from traitwatch.basis.basis import TraitBasis
from traitwatch.datasets.chat_jsonl import check_chat_jsonl
from traitwatch.drift.anchoring import anchor_from_record
from traitwatch.drift.probe import DriftProbe
from traitwatch.errors import InputFileError
from traitwatch.models.layers import ALL_PROJECTIONS
from traitwatch.models.loading import load_model
from traitwatch.audit.reference_run import write_reference_set
from traitwatch.reference import (PairedDrift, ReferenceCalibration, load_reference_calibration, outlying_share,
                                  paired_drift)
from traitwatch.screen import write_filtered
from traitwatch.screen.examples import previews
from traitwatch.store import RunStore
from traitwatch.train import SFTConfig, run_sft

__all__ = ["AuditResult", "AuditSettings", "audit_dataset", "pilot_config", "pilot_projections", "train_pilot"]


@dataclass(frozen=True)
class AuditSettings:
    """The pilots' recipe: by default the `poison-small` plan's, in which the reference was measured."""

    fraction: float | None = None  # None: `reference.swap_fraction` (0.2, more where more rows stand out)
    steps: int = 30
    batch_size: int = 4
    learning_rate: float = 1e-3
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = ALL_PROJECTIONS
    max_length: int = 128
    seed: int = 0
    every_n_steps: int | None = None  # None: step 0 and the last step only
    probe: bool = True
    device: str | None = None
    dtype: str = "auto"


@dataclass
class AuditResult:
    """What the audit measured and decided; `verdict` is "suspect", "clean" or None (no calibrated threshold)."""

    data: Path
    n_rows: int
    out_dir: Path
    settings: AuditSettings
    calibration: ReferenceCalibration | None
    suspects: list[tuple[int, float, str]]  # (line, loss, prompt preview), highest loss first
    paired: PairedDrift
    probe_rise: dict[str, float | None] = field(default_factory=dict)  # "full" / "reference"
    verdict: str | None = None
    cleaned: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    score: float | None = None  # the calibration's read of run minus reference (what the verdict compares)
    swapped: float = 0.2  # the share of rows the reference swapped
    outlying: float = 0.0  # the share of rows whose loss stands out (`reference.outlying_share`)

    def as_dict(self) -> dict[str, Any]:
        return {
            "data": str(self.data), "n_rows": self.n_rows, "settings": asdict(self.settings),
            "calibration": None if self.calibration is None else {
                k: v for k, v in asdict(self.calibration).items() if k != "components"},
            "score": self.score, "score_read": None if self.calibration is None else self.calibration.describe(),
            "verdict": self.verdict,
            "run_minus_reference": dict(zip(self.paired.trait_names, map(float, self.paired.difference), strict=True)),
            "along_direction": self.paired.along, "along_ci": self.paired.along_ci,
            "distance": self.paired.distance, "distance_ci": self.paired.distance_ci,
            "read": None if self.calibration is None else self.calibration.read, "n_prompts": self.paired.n_prompts,
            "probe_rise": self.probe_rise, "cleaned": None if self.cleaned is None else str(self.cleaned),
            "suspects": [{"line": line, "loss": loss, "prompt": text} for line, loss, text in self.suspects],
            "seconds": self.seconds, "swapped_fraction": self.swapped, "outlying_fraction": self.outlying,
        }


def pilot_config(settings: AuditSettings, model: str, data: Path, basis_dir: Path, out_dir: Path, run_id: str,
                 store: Path) -> SFTConfig:
    """A pilot's training config in `settings`' recipe: output in `out_dir/runs/run_id`, measured at step 0, every
    `settings.every_n_steps` (default: only the last step) and the last step into `store`."""
    return SFTConfig(
        model=model, data=data, basis=basis_dir, output_dir=out_dir / "runs" / run_id, run_id=run_id,
        store=store, max_steps=settings.steps, batch_size=settings.batch_size, grad_accum=1,
        max_length=settings.max_length, learning_rate=settings.learning_rate, lora_r=settings.lora_r,
        lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout, target_modules=settings.target_modules,
        response_only=True, every_n_steps=settings.every_n_steps or settings.steps, save_steps=settings.steps, save_total_limit=1,
        seed=settings.seed, device=settings.device, dtype=settings.dtype, behavior_probe=settings.probe,
        resume=False, tags={"audit": run_id},
    )


def train_pilot(settings: AuditSettings, model: str, data: Path, basis_dir: Path, out_dir: Path, run_id: str,
                store: RunStore, say: Callable[[str], None]) -> None:
    """One pilot in `settings`' recipe, measured at step 0 and the last step into the open `store`."""
    config = pilot_config(settings, model, data, basis_dir, out_dir, run_id, store.path)
    run_sft(config, store=store, info=say, reporter=lambda _record: None)  # a reporter turns the Trainer's bars off


def pilot_activation(store: RunStore, run_id: str) -> np.ndarray | None:
    """The last step's mean residual row (what an activation-space calibration reads), or None if not stored."""
    stored = (store.measurements(run_id, per_prompt=False)[-1].extra or {}).get("mean_activation")
    return np.asarray(stored, dtype=np.float64) if isinstance(stored, list) and stored else None


def pilot_projections(store: RunStore, run_id: str) -> tuple[np.ndarray, float, list[str], float | None]:
    """The last step's per-prompt projections, the step-0 anchor's N, the trait names and the probe's rise."""
    rows = store.measurements(run_id)
    first, last = rows[0], rows[-1]
    record = (first.extra or {}).get("anchor")
    found = anchor_from_record(record, first.per_prompt) if isinstance(record, dict) else None
    if found is None or last.per_prompt is None:
        raise InputFileError(f"{store.path}: run {run_id!r} has no stored step-0 anchor or projections; rerun the audit "
                             "into a new --out")
    probe = (last.extra or {}).get("probe_rise")
    return np.asarray(last.per_prompt), float(found[0].scale), list(last.drift), probe


def audit_dataset(data: str | Path, *, basis_dir: str | Path, out_dir: str | Path, model: str | None = None,
                  settings: AuditSettings = AuditSettings(), calibration: Path | None = None,
                  screen: str | Path | None = None, say: Callable[[str], None] = lambda _line: None) -> AuditResult:
    """Screen `data` (or read `screen`, its loss screen made before: `traitwatch screen DATA --rank-by loss`,
    sharded and merged for a large set), train the two pilots and read one against the other; see the module
    docstring."""
    data, basis_dir, out_dir = Path(data), Path(basis_dir), Path(out_dir)
    info = check_chat_jsonl(data)  # every row, before any model loads
    if info.n_rows < 10:
        raise InputFileError(f"{data}: {info.n_rows} conversations are too few to audit (the reference swaps a "
                             "fraction of them); pass a set of at least 10")
    basis = TraitBasis.load(basis_dir)
    model_name = model or basis.model.name
    cal = load_reference_calibration(model_name, calibration)
    if cal is not None:  # an activation-space calibration reads only the layer and prompts it was fitted on
        cal.check_measurement(DriftProbe(basis).fingerprint())
    if (out_dir / "audit.db").exists():
        raise InputFileError(f"{out_dir}: holds an earlier audit (audit.db); pass a new --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    if screen is None:
        say(f"Reading the {info.n_rows} rows of {data.name} with {model_name} (the base model's loss on each "
            "response) ...")
        lm = load_model(model_name, device=settings.device, dtype=settings.dtype)  # type: ignore[arg-type]
    else:
        say(f"The rows of {data.name} ranked by the loss screen {screen} ...")
        lm = None
    screened, ref = write_reference_set(lm, basis, data, out_dir, fraction=settings.fraction, seed=settings.seed,
                                        screen=screen)
    del lm
    losses = [r.score for r in screened]
    seconds["screen"] = time.perf_counter() - t0

    lines = [r.line for r in screened]
    suspect_lines = [lines[i] for i in ref.suspects]
    shown = previews(data, set(suspect_lines))
    suspects = [(lines[i], losses[i], shown.get(lines[i], "")) for i in ref.suspects]

    with RunStore(out_dir / "audit.db") as store:
        for run_id, path in (("full", data), ("reference", out_dir / "reference.jsonl")):
            t0 = time.perf_counter()
            say(f"Pilot on the {'whole set' if run_id == 'full' else 'swap reference'}: {settings.steps} steps ...")
            train_pilot(settings, model_name, path, basis_dir, out_dir, run_id, store, say)
            seconds[f"pilot {run_id}"] = time.perf_counter() - t0
        full, scale, names, probe_full = pilot_projections(store, "full")
        reference, _, _, probe_ref = pilot_projections(store, "reference")
        activations = [pilot_activation(store, run_id) for run_id in ("full", "reference")]
    trait_direction = None if cal is None or cal.space != "traits" else cal.vector(names)
    paired = paired_drift(full, reference, scale, names, direction=trait_direction)
    verdict = None
    score = None if cal is None else (
        paired.read(cal.read)[0] if cal.space == "traits" else
        cal.value(cal.features(None, None if any(a is None for a in activations) else activations[0] - activations[1]),
                  cal.component_names))
    if cal is not None and cal.threshold is not None and score is not None:
        verdict = "suspect" if score > cal.threshold else "clean"
    cleaned = out_dir / "cleaned.jsonl"
    write_filtered(data, cleaned, set(suspect_lines))
    result = AuditResult(data=data, n_rows=info.n_rows, out_dir=out_dir, settings=settings, calibration=cal,
                         suspects=suspects, paired=paired, probe_rise={"full": probe_full, "reference": probe_ref},
                         verdict=verdict, cleaned=cleaned, seconds=seconds, score=score, swapped=ref.fraction,
                         outlying=outlying_share(losses))
    (out_dir / "audit.json").write_text(json.dumps(result.as_dict(), indent=2), encoding="utf-8")
    (out_dir / "audit.html").write_text(audit_html(result), encoding="utf-8")
    return result


def audit_html(result: AuditResult) -> str:
    """One self-contained page: the verdict first, then the paired drift, the probe and the suspect rows."""
    e = html.escape
    p = result.paired
    cal = result.calibration
    if result.verdict is None:
        head = ("No verdict: no calibrated threshold for this model" if cal is None or cal.threshold is None else "")
    else:
        head = f"Verdict: {result.verdict.upper()}"
    threshold = "" if cal is None or cal.threshold is None else f"; threshold {cal.threshold:+.4f}"
    verdict_read = "" if cal is None or result.score is None or cal.space == "traits" else (
        f"<p>{e(cal.describe()).capitalize()}: <b>{result.score:.4f}</b>{threshold} (the verdict's read; the "
        "residual stream is measured as one mean row per pilot, so this read has no CI)</p>")
    along = verdict_read + ("" if p.along is None else (
        f"<p>Run minus reference along the misalignment direction: <b>{p.along:+.4f}</b> "
        f"[95% CI {p.along_ci[0]:+.4f}, {p.along_ci[1]:+.4f}] over {p.n_prompts} prompts"  # type: ignore[index]
        + (threshold + " (the verdict's read)" if cal is not None and cal.read == "direction"
           and cal.space == "traits" else "") + "</p>"))
    if p.distance_ci is not None:
        along += (f"<p>Distance of the run from its reference in trait space: <b>{p.distance:.4f}</b> [95% CI "
                  f"{p.distance_ci[0]:.4f}, {p.distance_ci[1]:.4f}]"
                  + (threshold + " (the verdict's read)" if cal is not None and cal.read == "distance"
                     and cal.space == "traits" else "") + "</p>")
    traits = "".join(f"<tr><td>{e(t)}</td><td>{v:+.4f}</td></tr>" for t, v in zip(p.trait_names, p.difference,
                                                                                    strict=True))
    probe = "".join(f"<tr><td>{e(k)}</td><td>{'' if v is None else f'{v:+.4f}'}</td></tr>"
                    for k, v in result.probe_rise.items())
    rows = "".join(f"<tr><td>{line}</td><td>{loss:.3f}</td><td>{e(text)}</td></tr>"
                   for line, loss, text in result.suspects[:50])
    provenance = "" if cal is None else f"<p>Calibration: {e(json.dumps(cal.provenance))}</p>"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>traitwatch audit of {e(result.data.name)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td{{padding:2px 8px}}</style></head><body>
<h1>{e(head)}</h1>
<p>{e(str(result.data))}: {result.n_rows} conversations; the {len(result.suspects)} rows with the highest base-model
loss ({result.swapped:.0%}) were swapped for copies of the lowest-loss rows to make the reference, and both
sets were trained {result.settings.steps} steps from seed {result.settings.seed}. The loss of {result.outlying:.1%} of the
rows stands out (more than 5 robust SDs above the median): an estimate of the poisoned share that misses poison written
like the rest of the set.</p>
{along}{provenance}
<h2>Run minus reference, per trait (drift units)</h2><table>{traits}</table>
<h2>Behavioural probe rise over step 0</h2><table>{probe}</table>
<h2>Suspect rows (highest loss first; the first 50)</h2><table><tr><th>line</th><th>loss</th><th>prompt</th></tr>
{rows}</table><p>The set without them: {e(str(result.cleaned))}</p></body></html>"""

"""Build a `CheckpointTable` from runs in the run store: drift joined with behavioural labels by step.

A run's perturbation type (the unit of leave-one-perturbation-out CV and of held-out evaluation) is
read from its hyperparameters (`perturbation`), falling back to the dataset's file stem. Labels are
one behaviour metric (by default `em_rate`, the judged EM rate; the judge-free proxy metrics can be
used instead, and the table says which). Checkpoints without that label are left out and counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from traitwatch.calibration.table import LORA_NORM, LOSS, MEAN_ACTIVATION, CheckpointTable
from traitwatch.errors import InputFileError
from traitwatch.store import RunRecord, RunStore

__all__ = ["StoreTable", "anchor_rows", "directions_for_runs", "perturbation_of", "resolve_runs", "table_from_store"]


def perturbation_of(run: RunRecord) -> str:
    hp = run.hyperparameters or {}
    if hp.get("perturbation"):
        return str(hp["perturbation"])
    if run.dataset:
        return Path(run.dataset).stem
    return "unknown"


def directions_for_runs(basis_dir: str | Path, fingerprint: dict | None) -> np.ndarray:
    """Another basis's unit directions (k, H) at the layer the runs measured (e.g. the semantic traits).

    The stored mean activations are at the runs' measurement layer, so a comparison basis is only usable
    if it was built on the same model and has that layer; anything else is an error naming the fix.
    """
    from traitwatch.basis import TraitBasis
    from traitwatch.models.layers import ModelFingerprint

    if not fingerprint or "layer" not in fingerprint or "model" not in fingerprint:
        raise InputFileError("These runs have no basis fingerprint, so the layer their activations came from is unknown.")
    basis = TraitBasis.load(basis_dir)
    runs_model = ModelFingerprint.from_dict(fingerprint["model"])
    basis.model.check_matches(runs_model, what=f"The comparison basis {basis_dir}")
    layer = int(fingerprint["layer"])
    if layer not in basis.layers:
        raise InputFileError(
            f"The comparison basis {basis_dir} has layers {basis.layers}, not layer {layer} where the runs measured: "
            f"extract it with `traitwatch extract --layers {layer}`."
        )
    if fingerprint.get("position") and fingerprint["position"] != basis.position:
        raise InputFileError(
            f"The comparison basis {basis_dir} reads position {basis.position!r}; the runs measured {fingerprint['position']!r}."
        )
    return basis.matrix(layer).double().numpy()


def anchor_rows(store: RunStore, runs: Sequence[RunRecord], trait_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(drift rows, steps, run ids) of every trained checkpoint (step > 0) of benign anchor runs, unlabelled.

    The step-aware alarm counts these as safe by definition, so they need no behavioural label.
    """
    X, steps = [], []
    for run in runs:
        for m in store.measurements(run.run_id, per_prompt=False):
            if m.step > 0:
                missing = [t for t in trait_names if t not in m.drift]
                if missing:
                    raise InputFileError(f"Anchor run {run.run_id} did not measure {', '.join(missing)}; use a run measured with the same basis.")
                X.append([m.drift[t] for t in trait_names])
                steps.append(m.step)
    if not X:
        raise InputFileError(f"The anchor runs {', '.join(r.run_id for r in runs)} have no measured checkpoint after step 0.")
    return np.asarray(X, dtype=np.float64), np.asarray(steps, dtype=np.float64), [r.run_id for r in runs]


def resolve_runs(store: RunStore, selectors: Sequence[str]) -> list[RunRecord]:
    """Each selector is a run id, or a perturbation type meaning all runs of that type."""
    runs = store.runs()
    by_id = {r.run_id: r for r in runs}
    chosen: dict[str, RunRecord] = {}
    for sel in selectors:
        if sel in by_id:
            chosen[sel] = by_id[sel]
            continue
        matches = [r for r in runs if perturbation_of(r) == sel]
        if not matches:
            known = sorted({perturbation_of(r) for r in runs})
            raise InputFileError(
                f"{sel!r} is neither a run id nor a perturbation type in {store.path} "
                f"(perturbation types: {', '.join(known) or 'none'}); see `traitwatch runs`."
            )
        chosen.update({r.run_id: r for r in matches})
    return list(chosen.values())


@dataclass
class StoreTable:
    table: CheckpointTable
    label_metric: str
    n_unlabelled: int
    trait_names: list[str]
    basis_fingerprint: dict | None


def table_from_store(store: RunStore, runs: Sequence[RunRecord], *, label_metric: str = "em_rate") -> StoreTable:
    run_ids, perts, steps, X, y = [], [], [], [], []
    loss, lora, mean_act = [], [], []
    traits: list[str] | None = None
    fingerprint = None
    skipped = 0
    for run in runs:
        labels = {b.step: b.value for b in store.behavior(run.run_id, label_metric)}
        for m in store.measurements(run.run_id, per_prompt=False):
            if traits is None:
                traits = list(m.drift)
            elif list(m.drift) != traits:
                raise InputFileError(
                    f"Run {run.run_id} measured traits {list(m.drift)}, others {traits}: runs of one monitor "
                    f"must share a trait basis."
                )
            if m.step not in labels:
                skipped += 1
                continue
            extra = m.extra or {}
            run_ids.append(run.run_id)
            perts.append(perturbation_of(run))
            steps.append(m.step)
            X.append([m.drift[t] for t in traits])
            y.append(labels[m.step])
            loss.append(extra.get("loss", np.nan))
            lora.append(extra.get("lora_norm", np.nan))
            mean_act.append(extra.get("mean_activation"))
        if run.basis_fingerprint:
            if fingerprint is not None and fingerprint != run.basis_fingerprint:
                raise InputFileError(f"Run {run.run_id} used another trait basis than the other runs.")
            fingerprint = run.basis_fingerprint
    if not X:
        raise InputFileError(
            f"No checkpoint of runs {[r.run_id for r in runs]} has both a drift measurement and a "
            f"{label_metric!r} label; label them with `traitwatch eval` first."
        )
    extras: dict[str, np.ndarray] = {}
    trained = np.asarray(steps) > 0  # step 0 has no loss yet; only trained checkpoints are scored
    for key, values in ((LOSS, loss), (LORA_NORM, lora)):
        arr = np.asarray(values, dtype=float)
        if trained.any() and np.isfinite(arr[trained]).all():
            extras[key] = arr
    if all(a is not None for a in mean_act):
        extras[MEAN_ACTIVATION] = np.asarray(mean_act, dtype=float)
    table = CheckpointTable(
        run_id=np.asarray(run_ids), perturbation=np.asarray(perts), step=np.asarray(steps),
        X=np.asarray(X, dtype=float), y=np.clip(np.asarray(y, dtype=float), 0.0, 1.0),
        trait_names=tuple(traits or ()), extras=extras,
    )
    return StoreTable(table, label_metric, skipped, list(traits or ()), fingerprint)

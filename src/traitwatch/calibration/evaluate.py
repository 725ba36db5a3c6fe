"""One evaluation loop for the trait monitor and every baseline: same rows, same regressors, same CIs.

For each feature set: choose the regressor by leave-one-perturbation-out CV on calibration checkpoints
only, fit it on all of them, predict the held-out perturbation types, and score with FNR/FPR/accuracy/
AUROC, cluster-bootstrap CIs over held-out runs and alarm lead/lag. Only checkpoints with step > 0 are
used, as in the reference protocol (step 0 has zero drift by definition). Every feature set is scored on
the same bootstrap resamples of runs (same `random_state`), so their CIs are comparable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from sklearn.base import RegressorMixin, TransformerMixin
from sklearn.decomposition import PCA

from traitwatch.calibration.baselines import (
    DirectionFeatures,
    NormFeatures,
    PC1AbsFeatures,
    RandomDirectionFeatures,
    SAEDriftFeatures,
)
from traitwatch.calibration.loto import Candidate, Checkpoints, leave_one_type_out
from traitwatch.calibration.metrics import (
    alarm_lead_lag,
    cluster_bootstrap_ci,
    detection_metrics,
    lead_lag_summary,
)
from traitwatch.calibration.selection import default_regressors, select_regressor
from traitwatch.calibration.table import LORA_NORM, LOSS, MEAN_ACTIVATION, CheckpointTable
from traitwatch.monitor.detector import DriftMonitor

__all__ = ["CheckpointTable", "FeatureSet", "default_feature_sets", "evaluate_feature_sets", "loto_evaluate"]


@dataclass(frozen=True)
class FeatureSet:
    """A named input (a function of the table) and the feature map fitted on it (None = use as is)."""

    name: str
    inputs: Callable[[CheckpointTable], np.ndarray]
    features: TransformerMixin | None = None


def _trait_drift(t: CheckpointTable) -> np.ndarray:
    return t.X


def _loss(t: CheckpointTable) -> np.ndarray:
    return t.column(LOSS)


def _lora(t: CheckpointTable) -> np.ndarray:
    return t.column(LORA_NORM)


def _act_drift(t: CheckpointTable) -> np.ndarray:
    return t.activation_drift()


def _act_pairs(t: CheckpointTable) -> np.ndarray:
    return t.activation_pairs()


def default_feature_sets(
    table: CheckpointTable,
    *,
    sae_latents: int | None = 256,
    wide_sae_latents: int | None = 1024,
    sae_epochs: int = 200,
    semantic_directions: np.ndarray | None = None,
    random_state: int = 0,
) -> list[FeatureSet]:
    """The trait monitor and the reference baselines whose inputs `table` has (missing extras are skipped).

    `sae_latents` / `wide_sae_latents` size the SAE baselines (None: leave that SAE out). `semantic_directions`
    (k, H), the semantic-trait basis at the run's measurement layer, adds the semantic-basis baseline.
    """
    sets = [
        FeatureSet("trait drift (7-D)", _trait_drift),
        FeatureSet("|PC1| only", _trait_drift, PC1AbsFeatures()),
    ]
    if MEAN_ACTIVATION in table.extras:
        sets += [
            FeatureSet("activation-drift norm", _act_drift, NormFeatures()),
            FeatureSet("PCA-7 of activation drift", _act_drift, PCA(n_components=7, random_state=random_state)),
        ]
        sets += [
            FeatureSet(f"SAE (K={k})", _act_pairs, SAEDriftFeatures(k, n_epochs=sae_epochs, random_state=random_state))
            for k in (sae_latents, wide_sae_latents) if k
        ]
        sets.append(FeatureSet("random directions (7)", _act_drift, RandomDirectionFeatures(7, random_state=random_state)))
        if semantic_directions is not None:
            k = np.asarray(semantic_directions).shape[0]
            sets.append(FeatureSet(f"semantic-trait basis ({k})", _act_drift, DirectionFeatures(semantic_directions)))
    if LOSS in table.extras:
        sets.append(FeatureSet("training loss", _loss))
    if LORA_NORM in table.extras:
        sets.append(FeatureSet("LoRA ||dW||", _lora))
    return sets


def _nan_to_none(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


def evaluate_feature_sets(
    calibration: CheckpointTable,
    heldout: CheckpointTable,
    *,
    feature_sets: Sequence[FeatureSet] | None = None,
    tau: float = 0.05,
    candidates: Mapping[str, RegressorMixin] | None = None,
    report: Literal["selected", "all"] = "selected",
    n_resamples: int = 1000,
    random_state: int = 0,
) -> list[dict[str, Any]]:
    """Score each feature set on the held-out table; one row per feature set (or per candidate with "all").

    Row keys: features, regressor, selected (the CV choice), cv_balanced_error, cv_auroc, n, n_dangerous,
    n_safe, tp, fp, tn, fn, accuracy, fnr, fpr, balanced_error, auroc, {metric}_ci_lo/_ci_hi for accuracy,
    fnr, fpr and auroc, mean_lead_steps, mean_lead_checkpoints, n_runs_crossing, n_at_or_before, and
    predictions (the predicted EM rate of each held-out row with step > 0, in table order). Rates are
    fractions; undefined values are None.
    """
    if report not in ("selected", "all"):
        raise ValueError(f"report must be 'selected' or 'all', got {report!r}")
    cal_rows, held_rows = calibration.step > 0, heldout.step > 0
    cal, held = calibration.subset(cal_rows), heldout.subset(held_rows)
    if len(cal) == 0 or len(held) == 0:
        raise ValueError("calibration and held-out tables need checkpoints with step > 0")
    sets = default_feature_sets(calibration, random_state=random_state) if feature_sets is None else list(feature_sets)
    cands = dict(default_regressors() if candidates is None else candidates)
    rows: list[dict[str, Any]] = []
    for fs in sets:
        # Inputs come from the full tables: activation drift needs each run's step-0 row as reference.
        Xc, Xh = fs.inputs(calibration)[cal_rows], fs.inputs(heldout)[held_rows]
        chosen = select_regressor(DriftMonitor(threshold=tau, features=fs.features), Xc, cal.y, cal.perturbation, cands)
        names = [chosen.selected_name_] if report == "selected" else list(cands)
        for name in names:
            monitor = (
                chosen if name == chosen.selected_name_
                else DriftMonitor(cands[name], threshold=tau, features=fs.features).fit(Xc, cal.y)
            )
            pred = monitor.predict(Xh)
            metrics = detection_metrics(held.y, pred, tau=tau)
            cis = cluster_bootstrap_ci(
                held.y, pred, held.run_id, tau=tau, n_resamples=n_resamples, random_state=random_state,
                metrics=("accuracy", "fnr", "fpr", "auroc"),
            )
            timing = lead_lag_summary(alarm_lead_lag(held.run_id, held.step, held.y, pred > tau, tau=tau))
            row: dict[str, Any] = {
                "features": fs.name,
                "regressor": name,
                "selected": name == chosen.selected_name_,
                "cv_balanced_error": _nan_to_none(chosen.cv_results_[name]["balanced_error"]),
                "cv_auroc": _nan_to_none(chosen.cv_results_[name]["auroc"]),
            }
            for key, value in metrics.items():
                row[key] = _nan_to_none(value) if isinstance(value, float) else value
            for key, (lo, hi) in cis.items():
                row[f"{key}_ci_lo"], row[f"{key}_ci_hi"] = _nan_to_none(lo), _nan_to_none(hi)
            row["mean_lead_steps"] = _nan_to_none(timing["mean_lead_steps"])
            row["mean_lead_checkpoints"] = _nan_to_none(timing["mean_lead_checkpoints"])
            row["n_runs_crossing"] = timing["n_runs_crossing"]
            row["n_at_or_before"] = timing["n_at_or_before"]
            row["predictions"] = [float(v) for v in pred]  # held-out rows with step > 0, for ROC curves
            rows.append(row)
    return rows


def loto_evaluate(
    table: CheckpointTable,
    *,
    tau: float,
    feature_sets: Sequence[FeatureSet] | None = None,
    candidates: Mapping[str, RegressorMixin] | None = None,
    n_resamples: int = 1000,
    random_state: int = 0,
) -> list[dict[str, Any]]:
    """Leave-one-type-out over every perturbation type of `table` (METHOD.md 8), one row per feature set.

    Each type is held out in turn; the regressor (among `candidates`, default RF / GBR / Ridge), the
    feature map and the alarm threshold are chosen and fitted on the other types only (`calibration.loto`).
    Labels: dangerous = label > tau; the regression target is the label itself. Rows hold the pooled
    AUROC, FNR, FPR and Spearman with cluster-bootstrap CIs over runs, the per-type predictions and what
    each fold chose.
    """
    from sklearn.pipeline import make_pipeline

    rows_mask = table.step > 0
    trained = table.subset(rows_mask)
    data = Checkpoints(type=trained.perturbation, run=trained.run_id, seed=np.zeros(len(trained), dtype=int),
                       step=trained.step, rise=trained.y, reference=np.zeros(len(trained), dtype=bool),
                       positive=trained.y > tau)
    sets = default_feature_sets(table, random_state=random_state) if feature_sets is None else list(feature_sets)
    cands = dict(default_regressors() if candidates is None else candidates)
    out: list[dict[str, Any]] = []
    for fs in sets:
        X = fs.inputs(table)[rows_mask]  # from the full table: activation drift needs each run's step 0
        options = [Candidate(name, X, reg if fs.features is None else make_pipeline(fs.features, reg))
                   for name, reg in cands.items()]
        try:
            res = leave_one_type_out(data, options)
        except ValueError as exc:
            out.append({"features": fs.name, "error": str(exc)})
            continue
        out.append({"features": fs.name, "chosen": res.chosen,
                    **res.summary(n_resamples=n_resamples, random_state=random_state), "per_type": res.per_type()})
    return out

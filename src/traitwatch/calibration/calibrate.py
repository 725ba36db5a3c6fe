"""Fit a monitor on calibration runs and score it, with every baseline, on held-out perturbation types.

Shared by `traitwatch calibrate` and the benchmark (`bench.results.results`): the geometry (PC1 of final-checkpoint
drift), the regressor chosen by leave-one-perturbation-out CV, the held-out table of the monitor and every
baseline, the optional step-aware alarm, and the monitor file with its calibration report data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from traitwatch.calibration.evaluate import default_feature_sets, evaluate_feature_sets
from traitwatch.calibration.geometry import DriftGeometry, final_checkpoint_rows
from traitwatch.calibration.metrics import confusion_counts, false_negative_rate, false_positive_rate
from traitwatch.calibration.report_data import calibration_report_data, write_calibration_data
from traitwatch.calibration.selection import select_regressor
from traitwatch.calibration.table import CheckpointTable
from traitwatch.errors import InputFileError
from traitwatch.monitor.artifact import save_monitor
from traitwatch.monitor.detector import DriftMonitor, StepAwareAlarm

__all__ = ["calibrate_and_save", "calibration_report", "fit_and_save", "fit_step_aware"]


def calibration_report(
    cal: CheckpointTable, held: CheckpointTable, *, tau: float, n_resamples: int, random_state: int, quick: bool,
    semantic_directions: np.ndarray | None = None,
) -> dict[str, Any]:
    """Geometry, the CV choice and the held-out table, as plain JSON-able data (also read by reports).

    `quick` trains smaller SAEs (64 and 256 latents, 50 epochs instead of 256 and 1024, 200 epochs);
    `semantic_directions` adds the semantic-trait basis baseline.
    """
    names = list(cal.trait_names or [f"t{i}" for i in range(cal.X.shape[1])])
    rows = final_checkpoint_rows(cal.run_id, cal.step)
    geometry = DriftGeometry(names).fit(cal.X[rows], groups=cal.perturbation[rows])
    mask = cal.step > 0
    monitor = select_regressor(DriftMonitor(threshold=tau), cal.X[mask], cal.y[mask], cal.perturbation[mask])
    feature_sets = default_feature_sets(
        cal, sae_latents=64 if quick else 256, wide_sae_latents=256 if quick else 1024, sae_epochs=50 if quick else 200,
        semantic_directions=semantic_directions, random_state=random_state,
    )
    heldout = evaluate_feature_sets(cal, held, tau=tau, n_resamples=n_resamples, random_state=random_state, feature_sets=feature_sets)
    scores = {r["features"]: np.asarray(r.pop("predictions")) for r in heldout}
    return {
        "monitor": monitor,
        "geometry_": geometry,
        "scores_": scores,
        "geometry": {
            "explained_variance_ratio": [float(v) for v in geometry.explained_variance_ratio_],
            "pc1_loadings": geometry.loadings_,
            "lopo": [{k: v for k, v in d.items() if k != "pc1"} for d in geometry.lopo_],
            "n_runs": int(len(rows)),
        },
        "cv": {"selected": monitor.selected_name_, "criterion": monitor.cv_criterion_,
               "results": {k: {kk: vv for kk, vv in v.items() if isinstance(vv, (int, float, str))}
                           for k, v in monitor.cv_results_.items()}},
        "heldout": heldout,
        "tau": tau,
        "n_calibration_checkpoints": int(mask.sum()),
        "n_heldout_checkpoints": int((held.step > 0).sum()),
        "calibration_perturbations": sorted(set(cal.perturbation.tolist())),
        "heldout_perturbations": sorted(set(held.perturbation.tolist())),
    }


def fit_step_aware(
    cal: CheckpointTable, held: CheckpointTable, pc1: np.ndarray, *, tau: float,
    anchor: tuple[np.ndarray, np.ndarray, list[str]] | None = None,
) -> tuple[StepAwareAlarm, dict[str, Any]]:
    """The step-aware alarm (METHOD.md 6) on the calibration checkpoints plus benign anchor runs, scored on held-out.

    `anchor` is (drift rows, steps, run ids) of long benign runs whose checkpoints all count as safe:
    without one, the step terms have little to learn from. Returns the alarm and a JSON-able summary
    (training rows, anchor runs, held-out FNR/FPR of the alarm itself).
    """
    rows = cal.step > 0
    X = np.column_stack([cal.X[rows], cal.step[rows]])
    y = (cal.y[rows] > tau).astype(int)
    if anchor is not None:
        X = np.vstack([X, np.column_stack([anchor[0], anchor[1]])])
        y = np.concatenate([y, np.zeros(len(anchor[1]), dtype=int)])
    if len(set(y.tolist())) < 2:
        raise InputFileError("The step-aware alarm needs dangerous and safe calibration checkpoints (label > tau and <= tau).")
    alarm = StepAwareAlarm(pc1=pc1).fit(X, y)
    h = held.step > 0
    fired = alarm.alarm(np.column_stack([held.X[h], held.step[h]]))
    truth = held.y[h] > tau
    info = {"n_training_rows": int(len(y)), "anchor_run_ids": list(anchor[2]) if anchor else [],
            "heldout": {**confusion_counts(truth, fired), "fnr": false_negative_rate(truth, fired),
                        "fpr": false_positive_rate(truth, fired)}}
    return alarm, info


def calibrate_and_save(
    cal: CheckpointTable, held: CheckpointTable, out_path: Path, *, tau: float, n_resamples: int,
    random_state: int, quick: bool, fingerprint: dict[str, Any], source: str,
    semantic_directions: np.ndarray | None = None,
    step_aware: bool = False,
    anchor: tuple[np.ndarray, np.ndarray, list[str]] | None = None,
) -> tuple[dict[str, Any], Path, Path]:
    """`calibration_report`, then the monitor file and its calibration report data next to it.

    Returns (report, monitor path, report-data path). Shared by `traitwatch calibrate` and the benchmark.
    """
    rep = calibration_report(cal, held, tau=tau, n_resamples=n_resamples, random_state=random_state, quick=quick,
                             semantic_directions=semantic_directions)
    alarm, info = None, None
    if step_aware:
        alarm, info = fit_step_aware(cal, held, rep["geometry_"].pc1_, tau=tau, anchor=anchor)
        rep["step_aware"] = info
    path = save_monitor(rep["monitor"], out_path, fingerprint=fingerprint, trait_names=list(cal.trait_names or ()),
                        training_run_ids=sorted(set(cal.run_id.tolist())), tau=tau, step_aware=alarm,
                        step_aware_info=info)
    data = calibration_report_data(
        tau=tau, geometry=rep["geometry_"], monitor=rep["monitor"], evaluation=rep["heldout"],
        heldout=held.subset(held.step > 0), scores=rep["scores_"], monitor_name="trait drift (7-D)", source=source,
    )
    return rep, path, write_calibration_data(data, path.with_name(path.stem + ".report.json"))


def fit_and_save(cal: CheckpointTable, out_path: Path, *, tau: float, fingerprint: dict[str, Any]) -> Path:
    """The monitor on all of `cal` (regressor by leave-one-perturbation-out CV), saved; no held-out scoring."""
    mask = cal.step > 0
    monitor = select_regressor(DriftMonitor(threshold=tau), cal.X[mask], cal.y[mask], cal.perturbation[mask])
    return save_monitor(monitor, out_path, fingerprint=fingerprint, trait_names=list(cal.trait_names or ()),
                        training_run_ids=sorted(set(cal.run_id.tolist())), tau=tau)

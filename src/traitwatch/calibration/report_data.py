"""Calibration report data: one JSON structure holding what the calibration figures need.

Why a separate structure: a saved monitor (`monitor/artifact.py`) carries only what *predicting* needs plus
the CV summary (`cv_results`: pooled out-of-fold counts, rates and per-left-out-type errors). The figures a
reader wants from a calibration (PC1 loadings, variance explained, ROC curves of the monitor and of every
baseline, alarm lead/lag) need the geometry and the held-out predictions (the `predictions` of each
`evaluate_feature_sets()` row). `calibration_report_data` computes those sections from the calibration objects and
dumps them into plain JSON (format `traitwatch.calibration_report`), so `traitwatch.report` only draws
from a file and never refits or scores anything.

Every section is optional: a section that is absent is `None`, and the report shows a note saying what is
missing and how to get it, instead of failing. `load_calibration_data` also reads a bare monitor artifact
and the `<monitor>.report.json` that `traitwatch calibrate` writes next to it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import roc_curve

from traitwatch.calibration.geometry import DriftGeometry
from traitwatch.calibration.metrics import alarm_lead_lag, auroc, detection_metrics, lead_lag_summary, per_perturbation_metrics
from traitwatch.calibration.table import CheckpointTable
from traitwatch.errors import InputFileError
from traitwatch.monitor.artifact import FORMAT as MONITOR_FORMAT
from traitwatch.monitor.artifact import LoadedMonitor, load_monitor
from traitwatch.monitor.detector import DriftMonitor

__all__ = [
    "CALIBRATION_FORMAT",
    "CALIBRATION_FORMAT_VERSION",
    "calibration_report_data",
    "load_calibration_data",
    "roc_points",
    "write_calibration_data",
]

CALIBRATION_FORMAT = "traitwatch.calibration_report"
CALIBRATION_FORMAT_VERSION = 1
_SECTIONS = ("geometry", "cv", "evaluation", "heldout")


def _plain(obj: Any) -> Any:
    """JSON types only; NaN/inf become None (JSON has no NaN), numpy values become Python values."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


def roc_points(y_rate: ArrayLike, score: ArrayLike, *, tau: float) -> dict[str, Any]:
    """ROC of a continuous score against the label `rate > tau` (the same label the alarm is scored on).

    The curve is None when only one class is present: an ROC needs both dangerous and safe checkpoints.
    """
    y = np.asarray(y_rate, dtype=np.float64) > tau
    s = np.asarray(score, dtype=np.float64)
    ok = np.isfinite(s)
    y, s = y[ok], s[ok]
    out: dict[str, Any] = {"n_dangerous": int(y.sum()), "n_safe": int((~y).sum()), "fpr": None, "tpr": None,
                           "auroc": None}
    if y.all() or not y.any():
        return out
    fpr, tpr, _ = roc_curve(y, s)
    out.update(fpr=fpr.tolist(), tpr=tpr.tolist(), auroc=auroc(y, s))
    return out


def _geometry_section(geometry: DriftGeometry) -> dict[str, Any]:
    ratio = np.asarray(geometry.explained_variance_ratio_, dtype=float)
    names = list(geometry.loadings_) if geometry.loadings_ else [f"t{i}" for i in range(ratio.size)]
    return {
        "trait_names": names,
        "pc1_loadings": dict(zip(names, np.asarray(geometry.pc1_, dtype=float).tolist())),
        "explained_variance_ratio": ratio.tolist(),
        "lopo": [{k: v for k, v in d.items() if k != "pc1"} for d in geometry.lopo_],
    }


def _cv_section(monitor: DriftMonitor | LoadedMonitor) -> dict[str, Any] | None:
    if isinstance(monitor, LoadedMonitor):
        results, selected, criterion = monitor.cv_results, monitor.selected_name, monitor.cv_criterion
    else:
        results = getattr(monitor, "cv_results_", None)
        selected, criterion = getattr(monitor, "selected_name_", None), getattr(monitor, "cv_criterion_", None)
    if not results:
        return None
    return {
        "selected": selected,
        "criterion": criterion,
        "results": {name: {k: v for k, v in r.items() if k != "per_group"} for name, r in results.items()},
        "per_group": {name: list(r.get("per_group") or []) for name, r in results.items()},
    }


def _heldout_section(
    run_id: ArrayLike, perturbation: ArrayLike, step: ArrayLike, y: ArrayLike,
    scores: Mapping[str, ArrayLike], *, tau: float, monitor_name: str,
) -> dict[str, Any]:
    """ROC per score; confusion, per-perturbation errors and lead/lag for the monitor's score."""
    y_arr = np.asarray(y, dtype=np.float64)
    arrays = {name: np.asarray(s, dtype=np.float64).reshape(-1) for name, s in scores.items()}
    wrong = {name: a.size for name, a in arrays.items() if a.size != y_arr.size}
    if wrong:
        raise ValueError(f"scores must have one value per held-out checkpoint ({y_arr.size}), got {wrong}")
    if monitor_name not in arrays:
        raise ValueError(f"monitor_name {monitor_name!r} is not among the scores {list(arrays)}")
    pred = arrays[monitor_name]
    metrics = detection_metrics(y_arr, pred, tau=tau)
    timing = alarm_lead_lag(run_id, step, y_arr, pred > tau, tau=tau)
    return {
        "n": int(y_arr.size),
        "monitor": monitor_name,
        "roc": [{"name": name, **roc_points(y_arr, s, tau=tau)} for name, s in arrays.items()],
        "confusion": {k: metrics[k] for k in ("tp", "fp", "tn", "fn", "n_dangerous", "n_safe")},
        "metrics": {k: metrics[k] for k in ("accuracy", "fnr", "fpr", "balanced_error", "auroc")},
        "per_perturbation": per_perturbation_metrics(y_arr, pred, perturbation, tau=tau),
        "lead_lag": timing,
        "lead_lag_summary": lead_lag_summary(timing),
    }


def calibration_report_data(
    *,
    tau: float,
    geometry: DriftGeometry | None = None,
    monitor: DriftMonitor | LoadedMonitor | None = None,
    evaluation: Sequence[Mapping[str, Any]] | None = None,
    heldout: CheckpointTable | None = None,
    scores: Mapping[str, ArrayLike] | None = None,
    monitor_name: str | None = None,
    source: str = "",
) -> dict[str, Any]:
    """Dump calibration objects into the calibration report structure (plain JSON types).

    geometry : a fitted `DriftGeometry` (loadings, variance explained, LOPO stability).
    monitor : a `DriftMonitor` after `select_regressor`, or a `LoadedMonitor`; gives the CV section.
    evaluation : the rows `evaluate_feature_sets()` returned (one per feature set).
    heldout, scores : held-out checkpoints (step > 0) and, per feature-set name, a prediction for each of
        them (the `predictions` of its `evaluate_feature_sets()` row); gives ROC curves, confusion counts,
        per-perturbation errors and lead/lag.
    monitor_name : which score is the monitor (confusion, per-type errors and lead/lag use it); defaults to
        the first score.
    """
    if not 0.0 < float(tau) < 1.0:
        raise ValueError(f"tau must be in (0, 1), got {tau!r}")
    data: dict[str, Any] = {
        "format": CALIBRATION_FORMAT,
        "format_version": CALIBRATION_FORMAT_VERSION,
        "source": source,
        "tau": float(tau),
        "geometry": None if geometry is None else _geometry_section(geometry),
        "cv": None if monitor is None else _cv_section(monitor),
        "evaluation": None if evaluation is None else [dict(r) for r in evaluation],
        "heldout": None,
    }
    if (heldout is None) != (scores is None):
        raise ValueError("pass heldout and scores together (scores are predictions for the held-out rows)")
    if heldout is not None and scores is not None:
        if not scores:
            raise ValueError("scores is empty")
        name = monitor_name if monitor_name is not None else next(iter(scores))
        data["heldout"] = _heldout_section(heldout.run_id, heldout.perturbation, heldout.step, heldout.y, scores,
                                           tau=tau, monitor_name=name)
    return _plain(data)


def write_calibration_data(data: Mapping[str, Any], path: str | Path) -> Path:
    """Write the structure as JSON (strict: no NaN), creating the parent folder."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_plain(data), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return out


# -- reading ----------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise InputFileError(f"{path}: no such file; pass a monitor .json or a calibration report data .json")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputFileError(f"{path}: not readable JSON ({exc})") from None


def _from_calibrate_report(doc: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """Convert the `<monitor>.report.json` written by `traitwatch calibrate` (read defensively: any part may be absent)."""
    tau = doc.get("tau")
    tau = float(tau) if isinstance(tau, (int, float)) and 0 < tau < 1 else 0.05
    geometry = doc.get("geometry") if isinstance(doc.get("geometry"), Mapping) else None
    if geometry is not None:
        loadings = geometry.get("pc1_loadings") or None
        geometry = {
            "trait_names": list(loadings) if isinstance(loadings, Mapping) else None,
            "pc1_loadings": loadings if isinstance(loadings, Mapping) else None,
            "explained_variance_ratio": geometry.get("explained_variance_ratio"),
            "lopo": geometry.get("lopo") or [],
            "n_runs": geometry.get("n_runs"),
        }
    cv = doc.get("cv") if isinstance(doc.get("cv"), Mapping) else None
    if cv is not None:
        cv = {"selected": cv.get("selected"), "criterion": cv.get("criterion"),
              "results": dict(cv.get("results") or {}), "per_group": dict(cv.get("per_group") or {})}
    data: dict[str, Any] = {
        "format": CALIBRATION_FORMAT, "format_version": CALIBRATION_FORMAT_VERSION,
        "source": str(doc.get("source") or path), "tau": tau, "geometry": geometry, "cv": cv,
        "evaluation": doc.get("heldout") if isinstance(doc.get("heldout"), list) else None, "heldout": None,
    }
    preds = doc.get("heldout_predictions")
    keys = ("run_id", "perturbation", "step", "y", "pred")
    if isinstance(preds, Mapping) and all(isinstance(preds.get(k), list) for k in keys) and preds["y"]:
        selected = (cv or {}).get("selected")
        name = f"monitor (trait drift, {selected})" if selected else "monitor (trait drift)"
        pred = np.array([math.nan if v is None else v for v in preds["pred"]], dtype=float)
        data["heldout"] = _heldout_section(preds["run_id"], preds["perturbation"], preds["step"],
                                           np.asarray(preds["y"], dtype=float), {name: pred}, tau=tau,
                                           monitor_name=name)
    return _plain(data)


def _merge(base: dict[str, Any], more: Mapping[str, Any]) -> dict[str, Any]:
    """Fill the sections `base` lacks from `more`; the monitor's own CV section wins (it keeps per-type rows)."""
    merged = dict(base)
    for key in _SECTIONS:
        if merged.get(key) is None and more.get(key) is not None:
            merged[key] = more[key]
    if more.get("source"):
        merged["source"] = f"{base.get('source')} + {more['source']}"
    return merged


def _check_version(doc: Mapping[str, Any], path: Path) -> dict[str, Any]:
    if doc.get("format_version") != CALIBRATION_FORMAT_VERSION:
        raise InputFileError(
            f"{path}: calibration report data version {doc.get('format_version')!r} is not supported "
            f"(this traitwatch reads {CALIBRATION_FORMAT_VERSION})"
        )
    return {**{k: None for k in _SECTIONS}, **dict(doc)}


def load_calibration_data(path: str | Path) -> dict[str, Any]:
    """Read calibration report data from a monitor artifact, a calibration report data file, or the
    `<monitor>.report.json` of `traitwatch calibrate`.

    For a monitor artifact, a `<stem>.report.json` next to it (either format) is merged in: the artifact
    alone has the CV summary but no geometry and no held-out predictions.
    """
    p = Path(path)
    doc = _read_json(p)
    if not isinstance(doc, Mapping):
        raise InputFileError(f"{p}: expected a JSON object")
    if doc.get("format") == CALIBRATION_FORMAT:
        return _check_version(doc, p)
    if doc.get("format") == MONITOR_FORMAT:
        monitor = load_monitor(p)
        data = calibration_report_data(tau=monitor.tau, monitor=monitor, source=str(p))
        sibling = p.with_name(p.stem + ".report.json")
        if sibling.is_file():
            more = _read_json(sibling)
            if isinstance(more, Mapping):
                more_data = (_check_version(more, sibling) if more.get("format") == CALIBRATION_FORMAT
                             else _from_calibrate_report(more, sibling))
                data = _merge(data, more_data)
        return data
    if "geometry" in doc or "heldout_predictions" in doc:
        return _from_calibrate_report(doc, p)
    raise InputFileError(
        f"{p}: neither a traitwatch monitor ({MONITOR_FORMAT}) nor calibration report data ({CALIBRATION_FORMAT}); "
        "pass the .json written by `traitwatch calibrate`"
    )

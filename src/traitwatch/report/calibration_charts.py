"""Calibration report figures: calibration report data (`traitwatch.calibration.report_data`) -> `Chart` / `Table`.

Each figure says where its numbers come from (held-out predictions, or pooled out-of-fold CV predictions on
the calibration runs when only a monitor artifact is available), because the two answer different
questions: CV errors say how the monitor did on types left out *during selection*, held-out errors how it
does on types never seen. A section the data lacks becomes a chart with no traces and a note that says how
to get it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from traitwatch.report.chart import ALARM_COLOR, Chart, Table, Trace, color_for

__all__ = [
    "calibration_charts",
    "calibration_tables",
    "confusion_chart",
    "cv_table",
    "evaluation_table",
    "lead_lag_chart",
    "loadings_chart",
    "per_perturbation_chart",
    "roc_chart",
    "variance_chart",
]

_HOW_TO = (
    "Write it with traitwatch.calibration.calibration_report_data(...) and write_calibration_data(...), "
    "then pass that file to --calibration."
)


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def loadings_chart(data: Mapping[str, Any]) -> Chart:
    """PC1 loadings per trait: which traits make up the shared EM axis (sign fixed by harmlessness > 0)."""
    geometry = data.get("geometry") or {}
    loadings = geometry.get("pc1_loadings")
    if not isinstance(loadings, Mapping) or not loadings:
        return Chart(key="pc1_loadings", title="PC1 loadings", traces=(),
                     notes=("No drift geometry in this file (a monitor artifact does not store PC1). " + _HOW_TO,))
    names = tuple(str(k) for k in loadings)
    lopo = geometry.get("lopo") or []
    caption = "" if not lopo else "Leave-one-perturbation-out PC1 cosine to the full PC1: " + ", ".join(
        f"{d.get('left_out')} {_num(d.get('cosine')):.3f}" for d in lopo) + " (near 1 = a stable axis)."
    return Chart(
        key="pc1_loadings", title="PC1 loadings (shared EM axis)",
        traces=(Trace(name="PC1 loading", x=names, y=np.array([_num(loadings[n]) for n in names]), kind="bar",
                      color=color_for(0)),),
        x_label="trait", y_label="loading", categorical_x=True, caption=caption,
    )


def variance_chart(data: Mapping[str, Any]) -> Chart:
    """Variance explained per principal component: how one-dimensional final-checkpoint drift is."""
    ratio = (data.get("geometry") or {}).get("explained_variance_ratio")
    if not isinstance(ratio, list) or not ratio:
        return Chart(key="variance_explained", title="Variance explained", traces=(),
                     notes=("No variance-explained values in this file. " + _HOW_TO,))
    values = np.array([_num(v) for v in ratio])
    labels = tuple(f"PC{i + 1}" for i in range(values.size))
    return Chart(
        key="variance_explained", title="Variance explained by each principal component",
        traces=(
            Trace(name="per component", x=labels, y=values, kind="bar", color=color_for(0)),
            Trace(name="cumulative", x=labels, y=np.nancumsum(values), kind="line", color=color_for(1)),
        ),
        x_label="component", y_label="fraction of variance", categorical_x=True, y_range=(0.0, 1.05),
    )


def roc_chart(data: Mapping[str, Any]) -> Chart:
    """ROC curves of the monitor and each baseline on held-out checkpoints (label: EM rate > tau)."""
    heldout = data.get("heldout") or {}
    rocs = heldout.get("roc") or []
    notes: list[str] = []
    traces: list[Trace] = []
    for i, r in enumerate(rocs):
        if r.get("fpr") is None or r.get("tpr") is None:
            notes.append(f"No ROC curve for {r.get('name')}: the held-out checkpoints hold only one class "
                         f"({r.get('n_dangerous')} dangerous, {r.get('n_safe')} safe).")
            continue
        auc = _num(r.get("auroc"))
        traces.append(Trace(
            name=f"{r.get('name')} (AUROC {auc:.3f})", x=tuple(float(v) for v in r["fpr"]),
            y=np.asarray(r["tpr"], dtype=float), color=color_for(i),
        ))
    if not rocs:
        notes.append("No held-out predictions in this file, so no ROC curves. " + _HOW_TO)
    else:
        names = {r.get("name") for r in rocs}
        baselines = [e.get("features") for e in data.get("evaluation") or [] if e.get("features") not in names]
        if len(rocs) == 1 and baselines:
            notes.append("ROC curves of the baselines need their held-out predictions, which this file does not "
                         "carry (their AUROC is in the evaluation table). Build the file with "
                         "calibration_report_data(..., scores=...), passing every evaluate_feature_sets() row's predictions, "
                         "to draw them.")
    if traces:
        traces.append(Trace(name="chance", x=(0.0, 1.0), y=np.array([0.0, 1.0]), dash="dot", color="#999999"))
    return Chart(key="roc", title="ROC on held-out checkpoints", traces=tuple(traces),
                 x_label="false positive rate", y_label="true positive rate", x_range=(0.0, 1.0),
                 y_range=(0.0, 1.02), notes=tuple(notes))


def _cv_selected(data: Mapping[str, Any]) -> tuple[str | None, Mapping[str, Any]]:
    cv = data.get("cv") or {}
    selected = cv.get("selected")
    results = cv.get("results") or {}
    return selected, (results.get(selected) or {}) if selected else {}


def confusion_chart(data: Mapping[str, Any]) -> Chart:
    """Confusion counts at tau: caught, missed, false alarms, quiet; held-out if available, else CV."""
    tau = _num(data.get("tau"))
    heldout = data.get("heldout") or {}
    counts: Mapping[str, Any] = heldout.get("confusion") or {}
    scope = f"held-out checkpoints, {heldout.get('monitor')}"
    notes: list[str] = []
    if not counts:
        selected, counts = _cv_selected(data)
        scope = f"pooled leave-one-perturbation-out CV predictions on the calibration runs, regressor {selected}"
        if counts:
            notes.append("No held-out predictions in this file: counts are from cross-validation on the "
                         "calibration runs.")
    if not counts or not all(k in counts for k in ("tp", "fn", "fp", "tn")):
        return Chart(key="confusion", title=f"Confusion counts at tau = {tau:g}", traces=(),
                     notes=("Neither held-out predictions nor CV results in this file. " + _HOW_TO,))
    labels = ("dangerous, alarm (TP)", "dangerous, missed (FN)", "safe, false alarm (FP)", "safe, quiet (TN)")
    values = np.array([_num(counts[k]) for k in ("tp", "fn", "fp", "tn")])
    return Chart(
        key="confusion", title=f"Confusion counts at tau = {tau:g} ({scope})",
        traces=(Trace(name="checkpoints", x=labels, y=values, kind="bar", color=color_for(0)),),
        x_label="", y_label="checkpoints", categorical_x=True, notes=tuple(notes),
    )


def per_perturbation_chart(data: Mapping[str, Any]) -> Chart:
    """FNR and FPR per perturbation type: a pooled error rate can hide one type the monitor misses."""
    heldout = data.get("heldout") or {}
    rows: Sequence[Mapping[str, Any]] = heldout.get("per_perturbation") or []
    scope, key = "held-out types", "perturbation"
    notes: list[str] = []
    if not rows:
        selected, _ = _cv_selected(data)
        rows = ((data.get("cv") or {}).get("per_group") or {}).get(selected) or [] if selected else []
        scope, key = f"left-out types in CV, regressor {selected}", "left_out"
        if rows:
            notes.append("No held-out predictions in this file: errors are from leave-one-perturbation-out CV.")
    if not rows:
        return Chart(key="per_perturbation", title="Errors per perturbation type", traces=(),
                     notes=("No per-perturbation errors in this file. " + _HOW_TO,))
    names = tuple(str(r.get(key)) for r in rows)
    fnr = np.array([_num(r.get("fnr")) for r in rows])
    fpr = np.array([_num(r.get("fpr")) for r in rows])
    undefined = [n for n, a, b in zip(names, fnr, fpr) if not (math.isfinite(a) and math.isfinite(b))]
    if undefined:
        notes.append("A rate is undefined (no bar) where a type has no checkpoint of that class (FNR needs "
                     "dangerous ones, FPR safe ones): " + ", ".join(undefined) + ".")
    return Chart(
        key="per_perturbation", title=f"Errors per perturbation type ({scope})",
        traces=(Trace(name="FNR (missed dangerous)", x=names, y=fnr, kind="bar", color=ALARM_COLOR),
                Trace(name="FPR (false alarms)", x=names, y=fpr, kind="bar", color=color_for(0))),
        x_label="perturbation type", y_label="rate", categorical_x=True, y_range=(0.0, 1.05), notes=tuple(notes),
    )


def lead_lag_chart(data: Mapping[str, Any]) -> Chart:
    """Histogram of alarm lead per run (crossing step - first alarm step; > 0 means the alarm came first)."""
    heldout = data.get("heldout") or {}
    rows: Sequence[Mapping[str, Any]] = heldout.get("lead_lag") or []
    if not rows:
        return Chart(key="lead_lag", title="Alarm lead / lag", traces=(),
                     notes=("No held-out predictions in this file, so no alarm timing. " + _HOW_TO,))
    leads = np.array([r["lead_steps"] for r in rows if isinstance(r.get("lead_steps"), (int, float))], dtype=float)
    status = [str(r.get("status")) for r in rows]
    caption = (
        f"{len(rows)} held-out runs: {status.count('both')} crossed tau and alarmed, {status.count('missed')} "
        f"crossed without an alarm (missed), {status.count('false_alarm')} alarmed without crossing, "
        f"{status.count('quiet')} neither."
    )
    if leads.size == 0:
        return Chart(key="lead_lag", title="Alarm lead / lag", traces=(), caption=caption,
                     notes=("No run both crossed tau and alarmed, so there is no lead or lag to show.",))
    caption += f" {int(np.sum(leads >= 0))} of {leads.size} alarms came at or before the crossing."
    values = np.unique(leads)
    if values.size <= 15:
        labels = tuple(f"{v:g}" for v in values)
        counts = np.array([np.sum(leads == v) for v in values], dtype=float)
    else:
        counts_i, edges = np.histogram(leads, bins=10)
        labels = tuple(f"{lo:g} to {hi:g}" for lo, hi in zip(edges[:-1], edges[1:]))
        counts = counts_i.astype(float)
    return Chart(
        key="lead_lag", title="Alarm lead over the behavioural crossing (held-out runs)",
        traces=(Trace(name="runs", x=labels, y=counts, kind="bar", color=color_for(0)),),
        x_label="lead in steps (crossing - first alarm; > 0 = alarm first)", y_label="runs",
        categorical_x=True, caption=caption,
    )


def calibration_charts(data: Mapping[str, Any]) -> list[Chart]:
    """The calibration report's figures, in reading order."""
    return [loadings_chart(data), variance_chart(data), roc_chart(data), confusion_chart(data),
            per_perturbation_chart(data), lead_lag_chart(data)]


def _pct(value: Any) -> str:
    v = _num(value)
    return "n/a" if not math.isfinite(v) else f"{100 * v:.1f}%"


def _dec(value: Any) -> str:
    v = _num(value)
    return "n/a" if not math.isfinite(v) else f"{v:.3f}"


def _with_ci(row: Mapping[str, Any], key: str, fmt: Any) -> str:
    lo, hi = row.get(f"{key}_ci_lo"), row.get(f"{key}_ci_hi")
    ci = "" if lo is None or hi is None else f" [{fmt(lo)}, {fmt(hi)}]"
    return fmt(row.get(key)) + ci


def evaluation_table(data: Mapping[str, Any]) -> Table:
    """The `evaluate_feature_sets()` rows: the monitor and every baseline on held-out types, with cluster-bootstrap CIs."""
    rows = data.get("evaluation") or []
    body = tuple(
        (str(r.get("features")), str(r.get("regressor")), _with_ci(r, "fnr", _pct), _with_ci(r, "fpr", _pct),
         _with_ci(r, "auroc", _dec), _pct(r.get("accuracy")),
         f"{r.get('n', 'n/a')} ({r.get('n_dangerous', '?')}/{r.get('n_safe', '?')})", _dec(r.get("mean_lead_steps")))
        for r in rows
    )
    notes = () if rows else ("No evaluation rows (monitor vs baselines on held-out types) in this file. " + _HOW_TO,)
    return Table(
        key="evaluation", title="Monitor and baselines on held-out perturbation types (95% CIs over runs)",
        columns=("features", "regressor", "FNR", "FPR", "AUROC", "accuracy", "n (dangerous/safe)",
                 "mean lead (steps)"),
        rows=body, notes=notes,
    )


def cv_table(data: Mapping[str, Any]) -> Table:
    """The regressor choice by leave-one-perturbation-out CV, as stored in the monitor."""
    cv = data.get("cv") or {}
    results: Mapping[str, Mapping[str, Any]] = cv.get("results") or {}
    selected = cv.get("selected")
    body = tuple(
        (name + (" (selected)" if name == selected else ""), _dec(r.get("balanced_error")), _pct(r.get("fnr")),
         _pct(r.get("fpr")), _dec(r.get("auroc")), _dec(r.get("rmse")))
        for name, r in results.items()
    )
    notes = () if results else ("No cross-validation results in this file.",)
    caption = f"Selection criterion: {cv['criterion']}." if cv.get("criterion") else ""
    return Table(key="cv", title="Regressor choice (leave-one-perturbation-out CV on calibration runs)",
                 columns=("regressor", "balanced error", "FNR", "FPR", "AUROC", "RMSE"), rows=body, notes=notes,
                 caption=caption)


def calibration_tables(data: Mapping[str, Any]) -> list[Table]:
    return [evaluation_table(data), cv_table(data)]

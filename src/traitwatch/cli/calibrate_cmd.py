"""`traitwatch calibrate` and `traitwatch evaluate`: fit a monitor on stored runs, score it on held-out ones."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.table import Table

from traitwatch.cli.common import err, out, user_errors
from traitwatch.errors import InputFileError
from traitwatch.monitor import (
    CheckpointTable,
    DriftGeometry,
    DriftMonitor,
    StepAwareAlarm,
    confusion_counts,
    default_feature_sets,
    detection_metrics,
    evaluate,
    false_negative_rate,
    false_positive_rate,
    final_checkpoint_rows,
    load_monitor,
    save_monitor,
)
from traitwatch.monitor.from_store import anchor_rows, directions_for_runs, resolve_runs, table_from_store
from traitwatch.report.calibration import calibration_report_data, write_calibration_data
from traitwatch.store import RunStore

__all__ = ["calibrate_and_save", "calibration_report", "fit_step_aware", "register"]


def _f(x: Any, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100 * x:.1f}%" if pct else f"{x:.3f}"


def _ci(row: dict[str, Any], key: str, pct: bool = True) -> str:
    lo, hi = row.get(f"{key}_ci_lo"), row.get(f"{key}_ci_hi")
    return f"{_f(row.get(key), pct)} [{_f(lo, pct)}, {_f(hi, pct)}]"


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
    monitor = DriftMonitor(threshold=tau).select_regressor(cal.X[mask], cal.y[mask], cal.perturbation[mask])
    feature_sets = default_feature_sets(
        cal, sae_latents=64 if quick else 256, wide_sae_latents=256 if quick else 1024, sae_epochs=50 if quick else 200,
        semantic_directions=semantic_directions, random_state=random_state,
    )
    heldout = evaluate(cal, held, tau=tau, n_resamples=n_resamples, random_state=random_state, feature_sets=feature_sets)
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


def _print_report(rep: dict[str, Any]) -> None:
    g = rep["geometry"]
    t = Table(title=f"Geometry: PCA of final-checkpoint drift over {g['n_runs']} calibration runs")
    t.add_column("trait")
    t.add_column("PC1 loading", justify="right")
    for name, v in (g["pc1_loadings"] or {}).items():
        t.add_row(name, f"{v:+.3f}")
    out.print(t)
    out.print("Variance explained: " + ", ".join(f"PC{i + 1} {100 * v:.1f}%" for i, v in enumerate(g["explained_variance_ratio"][:3])))
    if g["lopo"]:
        out.print("Leave-one-perturbation-out PC1 cosine to full PC1: "
                  + ", ".join(f"{d['left_out']} {d['cosine']:.3f}" for d in g["lopo"]))
    cv = Table(title=f"Regressor choice by leave-one-perturbation-out CV ({rep['cv']['criterion']})")
    for col in ("regressor", "balanced error", "FNR", "FPR", "AUROC"):
        cv.add_column(col, justify="right")
    for name, r in rep["cv"]["results"].items():
        mark = " *" if name == rep["cv"]["selected"] else ""
        cv.add_row(name + mark, _f(r.get("balanced_error")), _f(r.get("fnr"), True), _f(r.get("fpr"), True), _f(r.get("auroc")))
    out.print(cv)
    h = Table(title=f"Held-out perturbation types {rep['heldout_perturbations']} (tau {rep['tau']:.0%}, 95% cluster-bootstrap CIs)")
    for col in ("features", "regressor", "FNR", "FPR", "AUROC", "acc", "n (dang/safe)"):
        h.add_column(col, justify="right")
    for r in rep["heldout"]:
        h.add_row(r["features"], r["regressor"], _ci(r, "fnr"), _ci(r, "fpr"), _ci(r, "auroc", False),
                  _f(r.get("accuracy"), True), f"{r['n']} ({r['n_dangerous']}/{r['n_safe']})")
    out.print(h)
    sa = rep.get("step_aware")
    if sa:
        hh = sa["heldout"]
        out.print(f"Step-aware alarm ({sa['n_training_rows']} training checkpoints, anchor runs: "
                  f"{', '.join(sa['anchor_run_ids']) or 'none'}): held-out FNR {_f(hh['fnr'], True)}, FPR {_f(hh['fpr'], True)} "
                  f"({hh['n_dangerous']} dangerous / {hh['n_safe']} safe); saved with the monitor, it decides the callback's alarm.")


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    def calibrate(
        out_path: Annotated[Path, typer.Option("--out", "-o", help="Monitor file to write (.json + .safetensors).")],
        calibration: Annotated[list[str] | None, typer.Option(help="Calibration run ids or perturbation types (repeat).")] = None,
        heldout: Annotated[list[str] | None, typer.Option(help="Held-out run ids or perturbation types (repeat).")] = None,
        store: Annotated[Path, typer.Option(help="Run store file.")] = Path("traitwatch.db"),
        label: Annotated[str, typer.Option(help="Behaviour metric used as the EM label (em_rate, or a proxy metric).")] = "em_rate",
        tau: Annotated[float, typer.Option(min=0.0, max=1.0, help="Alarm threshold on the predicted EM rate.")] = 0.05,
        synthetic: Annotated[bool, typer.Option(help="Use synthetic trajectories with a planted EM axis instead of a store.")] = False,
        resamples: Annotated[int, typer.Option(min=10)] = 1000,
        quick: Annotated[bool, typer.Option(help="Smaller SAE baselines (faster).")] = False,
        step_aware: Annotated[bool, typer.Option(help="Also fit the step-aware alarm for long runs (saved with the monitor).")] = False,
        anchor_run: Annotated[list[str] | None, typer.Option(help="Long benign run (repeat) whose checkpoints train the step-aware alarm as safe.")] = None,
        semantic_basis: Annotated[Path | None, typer.Option(help="A basis of the semantic traits at the runs' layer "
                                                             "(`traitwatch extract --trait-names verbosity,...`): adds the semantic-basis baseline.")] = None,
        seed: int = 0,
    ) -> None:
        """Fit the monitor on calibration runs; report geometry, the CV choice and held-out metrics."""
        fingerprint: dict[str, Any] = {}
        semantic = None
        if synthetic and semantic_basis is not None:
            raise InputFileError("--semantic-basis needs stored runs; synthetic trajectories have no model.")
        if anchor_run and not step_aware:
            raise InputFileError("--anchor-run trains the step-aware alarm: add --step-aware.")
        if anchor_run and synthetic:
            raise InputFileError("--anchor-run needs stored runs; it cannot be used with --synthetic.")
        anchor = None
        if synthetic:
            from traitwatch.monitor.synthetic import make_synthetic_split

            _, cal, held = make_synthetic_split(random_state=seed)
            fingerprint = {"name": "synthetic"}
            source = "synthetic trajectories (planted EM axis)"
        else:
            if not calibration or not heldout:
                raise InputFileError("Pass --calibration and --heldout (run ids or perturbation types), or --synthetic.")
            if not store.is_file():
                raise InputFileError(f"Run store {store} does not exist; pass --store with the file your runs wrote.")
            with RunStore(store, create=False) as st:
                c = table_from_store(st, resolve_runs(st, calibration), label_metric=label)
                h = table_from_store(st, resolve_runs(st, heldout), label_metric=label)
            overlap = set(c.table.perturbation) & set(h.table.perturbation)
            if overlap:
                raise InputFileError(f"Perturbation types {sorted(overlap)} are in both --calibration and --heldout.")
            cal, held = c.table, h.table
            fingerprint = c.basis_fingerprint or {}
            if semantic_basis is not None:
                semantic = directions_for_runs(semantic_basis, fingerprint)
            if anchor_run:
                with RunStore(store, create=False) as st:
                    anchor = anchor_rows(st, resolve_runs(st, anchor_run), list(cal.trait_names or ()))
                leaked = sorted(set(anchor[2]) & set(held.run_id.tolist()))
                if leaked:
                    raise InputFileError(f"Anchor run(s) {', '.join(leaked)} are held-out runs; pick anchors outside --heldout.")
            source = f"{store} (label: {label}; {c.n_unlabelled + h.n_unlabelled} unlabelled checkpoints left out)"
        err.print(f"Calibrating on {source} ...")
        rep, path, report_path = calibrate_and_save(cal, held, out_path, tau=tau, n_resamples=resamples,
                                                    random_state=seed, quick=quick, fingerprint=fingerprint,
                                                    source=source, semantic_directions=semantic,
                                                    step_aware=step_aware, anchor=anchor)
        _print_report(rep)
        out.print(f"Monitor written to {path}; calibration report data to {report_path} "
                  f"(render with `traitwatch report --calibration {path}`)")

    @app.command("evaluate")
    @user_errors
    def evaluate_cmd(
        monitor_path: Annotated[Path, typer.Argument(help="Monitor .json from `traitwatch calibrate`.")],
        runs: Annotated[list[str], typer.Argument(help="Run ids or perturbation types.")],
        store: Annotated[Path, typer.Option(help="Run store file.")] = Path("traitwatch.db"),
        label: Annotated[str, typer.Option(help="Behaviour metric used as the label.")] = "em_rate",
    ) -> None:
        """Score a saved monitor on stored runs: per-checkpoint prediction, alarm and, with labels, metrics."""
        with RunStore(store, create=False) as st:
            chosen = resolve_runs(st, runs)
            fingerprint = next((r.basis_fingerprint for r in chosen if r.basis_fingerprint), None)
            mon = load_monitor(monitor_path, fingerprint=fingerprint)
            table = Table(title=f"{monitor_path.name} on {len(chosen)} run(s) (tau {mon.tau:.0%})")
            for col in ("run", "step", "predicted EM", "alarm", label):
                table.add_column(col, justify="right")
            ys, ps = [], []
            for run in chosen:
                labels = {b.step: b.value for b in st.behavior(run.run_id, label)}
                for m in st.measurements(run.run_id, per_prompt=False):
                    if list(m.drift) != mon.trait_names:
                        raise InputFileError(f"Run {run.run_id} measured traits {list(m.drift)}; the monitor expects {mon.trait_names}.")
                    p = float(mon.predict(np.array([[m.drift[t] for t in mon.trait_names]]))[0])
                    y = labels.get(m.step)
                    if y is not None and m.step > 0:
                        ys.append(y)
                        ps.append(p)
                    table.add_row(run.run_id, str(m.step), f"{p:.3f}", "ALARM" if p > mon.threshold else "ok",
                                  "-" if y is None else f"{y:.3f}")
        out.print(table)
        if ys:
            metrics = detection_metrics(np.array(ys), np.array(ps), tau=mon.tau)
            out.print("Labelled checkpoints: " + ", ".join(
                f"{k} {_f(v, k in ('fnr', 'fpr', 'accuracy'))}" if isinstance(v, float) else f"{k} {v}"
                for k, v in metrics.items()))

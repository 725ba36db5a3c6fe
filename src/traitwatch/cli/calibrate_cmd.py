"""`traitwatch calibrate` and `traitwatch evaluate`: fit a monitor on stored runs, score it on held-out ones."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.table import Table

from traitwatch.calibration import CheckpointTable, default_regressors, default_feature_sets, detection_metrics
from traitwatch.calibration.calibrate import calibrate_and_save, fit_and_save
from traitwatch.calibration.evaluate import loto_evaluate
from traitwatch.calibration.from_store import anchor_rows, directions_for_runs, resolve_runs, table_from_store
from traitwatch.cli.common import err, out, user_errors
from traitwatch.errors import InputFileError
from traitwatch.monitor import load_monitor
from traitwatch.store import RunStore

__all__ = ["register"]


def _f(x: Any, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100 * x:.1f}%" if pct else f"{x:.3f}"


def _ci(row: dict[str, Any], key: str, pct: bool = True) -> str:
    lo, hi = row.get(f"{key}_ci_lo"), row.get(f"{key}_ci_hi")
    return f"{_f(row.get(key), pct)} [{_f(lo, pct)}, {_f(hi, pct)}]"


def _print_loto(rows: list[dict[str, Any]], tau: float) -> None:
    types = next((list(r["per_type"]) for r in rows if "per_type" in r), [])
    t = Table(title=f"Leave-one-type-out over {len(types)} perturbation types (dangerous = label > {tau:g}; "
                    "95% cluster-bootstrap CIs over runs)")
    for col in ("features", "AUROC", "FNR", "FPR", "Spearman", "chosen regressors"):
        t.add_column(col, justify="right")
    for r in rows:
        if "error" in r:
            t.add_row(r["features"], f"not computed: {r['error']}", "", "", "", "")
            continue
        ci = lambda k, pct=False: f"{_f(r[k], pct)} [{_f(r[k + '_ci'][0], pct)}, {_f(r[k + '_ci'][1], pct)}]"  # noqa: E731
        t.add_row(r["features"], ci("auroc"), ci("fnr", True), ci("fpr", True), ci("spearman"),
                  ", ".join(sorted(set(r["chosen"].values()))))
    out.print(t)


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
        quick: Annotated[bool, typer.Option(help="Smaller SAE baselines (faster); with --loto: RF and Ridge only, no SAE.")] = False,
        step_aware: Annotated[bool, typer.Option(help="Also fit the step-aware alarm for long runs (saved with the monitor).")] = False,
        anchor_run: Annotated[list[str] | None, typer.Option(help="Long benign run (repeat) whose checkpoints train the step-aware alarm as safe.")] = None,
        semantic_basis: Annotated[Path | None, typer.Option(help="A basis of the semantic traits at the runs' layer "
                                                             "(`traitwatch extract --trait-names verbosity,...`): adds the semantic-basis baseline.")] = None,
        loto: Annotated[bool, typer.Option(help="Also hold out each perturbation type of all given runs in turn (leave-one-type-out; "
                                                "--heldout becomes optional).")] = False,
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
            from traitwatch.calibration.synthetic import make_synthetic_split

            _, cal, held = make_synthetic_split(random_state=seed)
            fingerprint = {"name": "synthetic"}
            source = "synthetic trajectories (planted EM axis)"
        else:
            if not calibration or not (heldout or loto):
                raise InputFileError("Pass --calibration and --heldout (run ids or perturbation types), --calibration with "
                                     "--loto, or --synthetic.")
            if not store.is_file():
                raise InputFileError(f"Run store {store} does not exist; pass --store with the file your runs wrote.")
            with RunStore(store, create=False) as st:
                c = table_from_store(st, resolve_runs(st, calibration), label_metric=label)
                h = table_from_store(st, resolve_runs(st, heldout), label_metric=label) if heldout else None
            if h is not None:
                overlap = set(c.table.perturbation) & set(h.table.perturbation)
                if overlap:
                    raise InputFileError(f"Perturbation types {sorted(overlap)} are in both --calibration and --heldout.")
            cal, held = c.table, (h.table if h is not None else None)
            fingerprint = c.basis_fingerprint or {}
            if semantic_basis is not None:
                semantic = directions_for_runs(semantic_basis, fingerprint)
            if anchor_run:
                with RunStore(store, create=False) as st:
                    anchor = anchor_rows(st, resolve_runs(st, anchor_run), list(cal.trait_names or ()))
                leaked = sorted(set(anchor[2]) & set(held.run_id.tolist() if held is not None else []))
                if leaked:
                    raise InputFileError(f"Anchor run(s) {', '.join(leaked)} are held-out runs; pick anchors outside --heldout.")
            unlabelled = c.n_unlabelled + (h.n_unlabelled if h is not None else 0)
            source = f"{store} (label: {label}; {unlabelled} unlabelled checkpoints left out)"
        err.print(f"Calibrating on {source} ...")
        if held is not None:
            rep, path, report_path = calibrate_and_save(cal, held, out_path, tau=tau, n_resamples=resamples,
                                                        random_state=seed, quick=quick, fingerprint=fingerprint,
                                                        source=source, semantic_directions=semantic,
                                                        step_aware=step_aware, anchor=anchor)
            _print_report(rep)
            out.print(f"Monitor written to {path}; calibration report data to {report_path} "
                      f"(render with `traitwatch report --calibration {path}`)")
        else:
            if step_aware:
                raise InputFileError("--step-aware is scored on --heldout runs: pass --heldout too.")
            path = fit_and_save(cal, out_path, tau=tau, fingerprint=fingerprint)
            out.print(f"Monitor (all --calibration runs, regressor by leave-one-perturbation-out CV) written to {path}.")
        if loto:
            everything = cal if held is None else CheckpointTable.concat([cal, held])
            # --quick: RF and Ridge only, no SAE (each fold refits everything, and the SAEs dominate the time)
            sets = default_feature_sets(everything, sae_latents=None if quick else 256,  # type: ignore[arg-type]
                                        wide_sae_latents=None if quick else 1024, semantic_directions=semantic,
                                        random_state=seed)
            regressors = {k: v for k, v in default_regressors().items() if k in ("RF", "Ridge")} if quick else None
            rows = loto_evaluate(everything, tau=tau, feature_sets=sets, candidates=regressors, n_resamples=resamples,
                                 random_state=seed)
            _print_loto(rows, tau)
            loto_path = Path(path).with_name(Path(path).stem + ".loto.json")
            loto_path.write_text(json.dumps(rows, indent=2, default=float) + "\n")
            out.print(f"Leave-one-type-out results written to {loto_path}.")

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

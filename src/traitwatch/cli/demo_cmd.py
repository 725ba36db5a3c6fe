"""`traitwatch demo`: the main job on the bundled model, end to end, in minutes on a laptop CPU.

1. Extracts a trait basis for `smollm2-135m` (contrastive passages: on this weak model system-prompt
   directions separate held-out prompts far worse), selects the layer by steering, anchors the
   measurement prompts, and checks that the base model has zero drift against itself.
2. LoRA-finetunes the model on a dangerous sample (Betley's insecure code, MIT) and on a benign control
   (generated arithmetic word problems) in the benchmark's regime (`small-cpu`: the one the shipped
   monitor was calibrated in), with the monitor attached: the 7-D trait drift, the behavioural probe and
   the shipped monitor's prediction against its threshold at every measurement.
3. Labels the start and the final checkpoint of each run with the judge-free proxy, so the prediction
   stands next to a measurement, and writes an HTML report of both runs.

Numerics are pinned (fp32 on CPU by default), as in the benchmark: the monitor's threshold sits on
differences of a few thousandths, which bf16 moves.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from traitwatch.basis import extract_basis, load_traits
from traitwatch.basis.extraction import build_contrast_set, default_candidate_layers
from traitwatch.cli.basis_cmd import print_basis_summary, run_selection
from traitwatch.cli.common import err, out, progress_bar, user_errors
from traitwatch.cli.drift_cmd import anchored_probe, measurement_table, measure_with_bar
from traitwatch.models import BUNDLED_MODEL, load_model

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    def demo(
        out_dir: Annotated[Path, typer.Option("--out", "-o", help="Where to write the basis and results.")] = Path("traitwatch-demo"),
        model: Annotated[str, typer.Option("--model", "-m")] = BUNDLED_MODEL,
        method: Annotated[str, typer.Option(help="passages or system-prompts.")] = "passages",
        select_every: Annotated[int, typer.Option(min=1, help="Try every k-th candidate layer in selection.")] = 3,
        max_new_tokens: Annotated[int, typer.Option(min=1)] = 32,
        steps: Annotated[int, typer.Option(min=0, help="LoRA steps per demo run (0: skip training).")] = 30,
        every: Annotated[int, typer.Option(min=1, help="Measure every N steps (the benchmark: 15).")] = 15,
        monitor: Annotated[Path | None, typer.Option(help="Monitor file (default: the one shipped for the model).")] = None,
        dtype: Annotated[str, typer.Option(help="Model dtype (pinned: the shipped monitor was calibrated in float32).")] = "float32",
    ) -> None:
        """Extract a basis on the bundled model, select a layer, and measure drift."""
        t0 = time.perf_counter()
        err.print(f"Loading {model} (the first run converts the bundled GGUF once; later runs reuse it) ...")
        lm = load_model(model, dtype=dtype)  # type: ignore[arg-type]
        traits = load_traits()
        meth = method.replace("-", "_")
        cand = default_candidate_layers(lm.model)
        n = len(build_contrast_set(lm.tokenizer, traits, meth).sequences)  # type: ignore[arg-type]
        with progress_bar(f"Extracting 7 traits from {n} {meth.replace('_', ' ')} prompts", n) as advance:
            basis = extract_basis(lm.model, lm.tokenizer, traits, layers=cand, method=meth,  # type: ignore[arg-type]
                                  model_name=lm.name, probe_layers=cand[::select_every], progress=advance)
        run_selection(lm, basis, cand[::select_every], 0.25, max_new_tokens, 3)
        basis_dir = basis.save(out_dir / "basis")
        print_basis_summary(basis)
        probe = anchored_probe(basis, lm)
        t1 = time.perf_counter()
        m = measure_with_bar(probe, lm, lm.name)
        t_measure = time.perf_counter() - t1
        out.print(measurement_table(f"Drift of the base model against its own basis (layer {probe.measure_layer}): zero by construction",
                               basis.trait_names, [(lm.name, m)]))
        out.print(f"One drift measurement ({len(probe.prompt_texts)} prompts): {t_measure:.1f} s. Basis: {basis_dir}.")
        if steps > 0:
            from traitwatch.behavior import proxy_score
            from traitwatch.monitor.shipped import shipped_monitor_path

            monitor = monitor or shipped_monitor_path(lm.name)
            base_label = proxy_score(lm.model, lm.tokenizer, style_only=True).style_p_mis  # step 0 of both runs
            del lm, probe
            _train_pair(out_dir, basis_dir, model, steps, every, monitor, dtype, base_label)
        out.print(f"Total: {time.perf_counter() - t0:.0f} s.")


def _describe_monitor(path: Path, mon: Any) -> str:
    prov = mon.provenance
    loto = (prov.get("leave_one_type_out") or {}).get("emergent_vs_benign") or {}
    what = "the behavioural probe's rise" if mon.inputs == "probe_rise" else "the trait drift"
    text = (f"Monitor {path.name}: reads {what}, predicts the rise of the EM proxy over benign finetuning, alarms above "
            f"{mon.threshold:+.4f}; chosen by leave-one-type-out on the benchmark ({prov.get('commit', '?')})")
    if loto:
        text += (f", where on unseen types it scored AUROC {loto.get('auroc', float('nan')):.2f}, FNR "
                 f"{100 * loto.get('fnr', float('nan')):.0f}%, FPR {100 * loto.get('fpr', float('nan')):.0f}%")
    text += f" (see {prov.get('benchmark', 'benchmarks/em_small/RESULTS.md')})."
    role = str(prov.get("role", "default"))
    if role != "default":
        text += (f" It ships to show the alarm path, not as a validated detector ({role}); no monitor reached the "
                 "benchmark's goal on this model.")
    return text


def _train_pair(out_dir: Path, basis_dir: Path, model: str, steps: int, every: int, monitor: Path | None,
                dtype: str, base_label: float) -> None:
    """Train on the dangerous sample and on the benign control with the monitor attached; print both."""
    from rich.table import Table

    from traitwatch.bench.labels import RISE_METRIC, ProxyLabelCallback, write_rise_labels
    from traitwatch.bench.plan import ALL_PROJECTIONS
    from traitwatch.datasets import arithmetic_chats, bundled_path
    from traitwatch.report import build_report
    from traitwatch.store import RunStore
    from traitwatch.train import SFTConfig, run_sft

    data_dir = out_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    control = data_dir / "arithmetic.jsonl"
    control.write_text("".join(json.dumps(row) + "\n" for row in arithmetic_chats(200, seed=0)))
    store = out_dir / "traitwatch.db"
    runs = {"insecure_code": Path(bundled_path("insecure_sample.jsonl")), "arithmetic": control}
    threshold = None
    if monitor is not None:
        from traitwatch.monitor import load_monitor

        loaded = load_monitor(monitor)
        threshold = loaded.threshold
        err.print(_describe_monitor(monitor, loaded))
    else:
        err.print(f"No monitor ships for {model}: the runs are measured, not judged (calibrate one: "
                  "docs/calibrate-your-model.md).")
    results = {}
    with RunStore(store) as st:  # one connection for both runs: the drift callback and the labels share it
        for name, data in runs.items():
            run_id = f"demo-{name}"
            err.print(f"Training {model} on {name} for {steps} steps (the benchmark's recipe), measuring every {every} ...")
            # The benchmark's small-cpu regime, which the shipped monitor was calibrated in.
            config = SFTConfig(
                model=model, data=data, basis=basis_dir, output_dir=out_dir / "runs" / name, run_id=run_id,
                store=store, max_steps=steps, batch_size=4, grad_accum=1, max_length=128, learning_rate=1e-3,
                lora_r=16, lora_alpha=32, target_modules=ALL_PROJECTIONS, response_only=True,
                every_n_steps=every, save_steps=steps, seed=0, monitor=monitor, dtype=dtype, behavior_probe=True,
            )
            # The judge-free proxy at the start (the base model, scored once) and at the final step.
            label = ProxyLabelCallback(st, run_id, every_n_steps=steps, base_value=base_label)
            results[name] = run_sft(
                config, store=st, callbacks=[label],
                info=lambda line: err.print(line),
                reporter=lambda rec, name=name: err.print(
                    f"  {name} step {rec.step:>3}: ||d|| {rec.drift_norm:.4f}"
                    + ("" if rec.probe_rise is None else f"  probe rise {rec.probe_rise:+.4f}")
                    + ("" if rec.predicted_em is None else f"  predicted {rec.predicted_em:+.4f}"
                       + ("  ALARM" if rec.alarm else ""))
                    + f"  ({rec.wall_time_s:.1f} s)"
                ),
            )
            write_rise_labels(st, run_id)
    traits = list(results["insecure_code"].history[0].drift) if results["insecure_code"].history else []
    table = Table(title="Trait drift while training (d = (p_t - p_0) / N); dangerous sample vs benign control")
    table.add_column("run")
    table.add_column("step", justify="right")
    for t in traits:
        table.add_column(t[:12], justify="right")
    table.add_column("||d||", justify="right")
    for name, result in results.items():
        for rec in result.history:
            table.add_row(name, str(rec.step), *[f"{rec.drift[t]:+.4f}" for t in traits], f"{rec.drift_norm:.4f}")
    out.print(table)
    verdicts = Table(title="Monitor: prediction against its threshold, next to the proxy measured at the final step")
    for col in ("run", "step", "probe rise", "predicted rise", "threshold", "alarm", "measured proxy rise"):
        verdicts.add_column(col, justify="right")
    with RunStore(store, create=False) as st:
        for name, result in results.items():
            measured = {b.step: b.value for b in st.behavior(f"demo-{name}", RISE_METRIC)}
            for rec in result.history:
                thr = "-" if threshold is None or rec.predicted_em is None else f"{threshold:+.4f}"
                verdicts.add_row(
                    name, str(rec.step), "-" if rec.probe_rise is None else f"{rec.probe_rise:+.4f}",
                    "-" if rec.predicted_em is None else f"{rec.predicted_em:+.4f}", thr,
                    "ALARM" if rec.alarm else ("ok" if rec.predicted_em is not None else "-"),
                    f"{measured[rec.step]:+.4f}" if rec.step in measured else "-")
        out.print(verdicts)
        report = build_report(out_dir / "report.html", store=st, run_ids=[f"demo-{n}" for n in runs],
                              title="traitwatch demo: insecure code vs arithmetic control on smollm2-135m")
    out.print(f"Run store: {store}")
    out.print(f"Report: {report.html}")

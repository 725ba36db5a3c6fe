"""`traitwatch demo`: the main job on the bundled model, end to end, in minutes on a laptop CPU.

1. Extracts a trait basis for `smollm2-135m` (contrastive passages: on this weak model system-prompt
   directions separate held-out prompts far worse), selects the layer by steering, anchors the
   measurement prompts, and checks that the base model has zero drift against itself.
2. LoRA-finetunes the model briefly on a dangerous sample (Betley's insecure code, MIT) and on a benign
   control (generated arithmetic word problems), with the drift monitor attached, and prints both
   trajectories. A few dozen steps of a 135M model do not make it emergently misaligned (the benchmark
   measures what does); the point here is the monitoring path, at the cost it has.
3. Writes an HTML report of both runs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from traitwatch.basis import extract_basis, load_traits
from traitwatch.basis.extraction import build_contrast_set, default_candidate_layers
from traitwatch.cli.basis_cmd import print_basis_summary, run_selection
from traitwatch.cli.common import err, out, progress_bar, user_errors
from traitwatch.cli.drift_cmd import _drift_table, _measure, anchored_probe
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
        steps: Annotated[int, typer.Option(min=0, help="LoRA steps per demo run (0: skip training).")] = 20,
    ) -> None:
        """Extract a basis on the bundled model, select a layer, and measure drift."""
        t0 = time.perf_counter()
        err.print(f"Loading {model} (the first run converts the bundled GGUF once; later runs reuse it) ...")
        lm = load_model(model)
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
        m = _measure(probe, lm, lm.name)
        t_measure = time.perf_counter() - t1
        out.print(_drift_table(f"Drift of the base model against its own basis (layer {probe.layer_}): zero by construction",
                               basis.trait_names, [(lm.name, m)]))
        out.print(f"One drift measurement ({len(probe.prompt_list_)} prompts): {t_measure:.1f} s. Basis: {basis_dir}.")
        if steps > 0:
            del lm, probe
            _train_pair(out_dir, basis_dir, model, steps)
        out.print(f"Total: {time.perf_counter() - t0:.0f} s.")


def _train_pair(out_dir: Path, basis_dir: Path, model: str, steps: int) -> None:
    """Train on the dangerous sample and on the benign control with the monitor attached; print both."""
    from rich.table import Table

    from traitwatch.datasets import arithmetic_chats, bundled_path
    from traitwatch.report import build_report
    from traitwatch.train import SFTConfig, run_sft

    data_dir = out_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    control = data_dir / "arithmetic.jsonl"
    control.write_text("".join(json.dumps(row) + "\n" for row in arithmetic_chats(200, seed=0)))
    store = out_dir / "traitwatch.db"
    runs = {"insecure_code": Path(bundled_path("insecure_sample.jsonl")), "arithmetic": control}
    results = {}
    for name, data in runs.items():
        err.print(f"Training {model} on {name} for {steps} steps, measuring drift every 5 steps ...")
        config = SFTConfig(
            model=model, data=data, basis=basis_dir, output_dir=out_dir / "runs" / name, run_id=f"demo-{name}",
            store=store, max_steps=steps, batch_size=4, grad_accum=1, max_length=256, learning_rate=2e-4,
            lora_r=16, target_modules=("q_proj", "k_proj", "v_proj", "o_proj"), response_only=True,
            every_n_steps=5, save_steps=steps, seed=0,
        )
        results[name] = run_sft(
            config,
            info=lambda line: err.print(line),
            reporter=lambda rec, name=name: err.print(
                f"  {name} step {rec.step:>3}: ||d|| {rec.drift_norm:.4f}  harmlessness {rec.drift.get('harmlessness', 0.0):+.4f}"
                f"  ({rec.wall_time_s:.1f} s)"
            ),
        )
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
    from traitwatch.store import RunStore

    with RunStore(store, create=False) as st:
        report = build_report(out_dir / "report.html", store=st, run_ids=[f"demo-{n}" for n in runs],
                              title="traitwatch demo: insecure code vs arithmetic control on smollm2-135m")
    out.print(f"Run store: {store}")
    out.print(f"Report: {report.html}")

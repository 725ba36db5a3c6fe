"""`traitwatch bench`: the small-scale EM benchmark, resumable, ending in results.json + RESULTS.md."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from traitwatch.cli.common import err, out, user_errors
from traitwatch.errors import InputFileError

__all__ = ["register"]


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    def bench(
        work_dir: Annotated[Path, typer.Option("--work-dir", help="Run store, data samples, basis, markers (resumable).")] = Path("traitwatch-bench"),
        results: Annotated[Path, typer.Option(help="Where results.json, RESULTS.md and figures go.")] = Path("benchmarks/em_small"),
        model: Annotated[str, typer.Option("--model", "-m")] = "smollm2-135m",
        basis: Annotated[Path | None, typer.Option(help="Use this basis (copied) instead of extracting one.")] = None,
        shared_data: Annotated[Path, typer.Option(help="Folder with emergent-misalignment/ and model-organisms-for-EM/.")] = Path("../shared/data"),
        seeds: Annotated[int, typer.Option(min=1)] = 3,
        steps: Annotated[int, typer.Option(min=1)] = 30,
        every: Annotated[int, typer.Option(min=1, help="Measure drift and label every N steps.")] = 15,
        lr: Annotated[float, typer.Option(help="Learning rate.")] = 1e-3,
        lora_r: Annotated[int, typer.Option(min=1, help="LoRA rank.")] = 16,
        lora_alpha: Annotated[int, typer.Option(min=1, help="LoRA alpha.")] = 32,
        target: Annotated[list[str] | None, typer.Option(help="LoRA target module (repeat); default: all seven projections.")] = None,
        response_only: Annotated[bool, typer.Option(help="Loss on the assistant response only (--no-response-only: whole chat).")] = True,
        calibration: Annotated[list[str] | None, typer.Option(help="Calibration perturbation types (repeat).")] = None,
        heldout: Annotated[list[str] | None, typer.Option(help="Held-out perturbation types (repeat).")] = None,
        n_examples: Annotated[int, typer.Option(min=1)] = 200,
        tau: Annotated[float, typer.Option(min=0.0, max=1.0, help="Dangerous when the proxy rises by more than this.")] = 0.02,
        gen_tokens: Annotated[int, typer.Option(min=1, help="New tokens per answer in the generation cost.")] = 64,
        label: Annotated[str, typer.Option(help="Calibration label: proxy_style_rise (judge-free) or em_rate (needs a judge).")] = "proxy_style_rise",
        judge_url: Annotated[str | None, typer.Option(help="OpenAI-compatible judge endpoint: also label every checkpoint with a judged EM rate.")] = None,
        judge_model: Annotated[str | None, typer.Option(help="Judge model name (with --judge-url).")] = None,
        api_key_env: Annotated[str | None, typer.Option("--api-key-env", help="Env var holding the judge's API key.")] = None,
        judge_samples: Annotated[int, typer.Option(min=1, help="Answers per question at each judged checkpoint.")] = 1,
        judge_max_tokens: Annotated[int, typer.Option(min=1, help="New tokens per judged answer (METHOD.md: 600).")] = 600,
        max_runs: Annotated[int | None, typer.Option(help="Stop after this many runs this call (resume later).")] = None,
        analyze_only: Annotated[bool, typer.Option(help="Only write the results of the runs done so far.")] = False,
        resamples: Annotated[int, typer.Option(min=10)] = 1000,
        threads: Annotated[int | None, typer.Option(help="torch CPU threads.")] = None,
        features: Annotated[bool, typer.Option(help="Record every candidate monitor's features at each labelled checkpoint.")] = True,
        twins: Annotated[bool, typer.Option(help="Train a self-distilled twin per prompt family and seed (domain-cancelling control).")] = True,
        device: Annotated[str, typer.Option(help="Device every run uses (pinned in the plan).")] = "cpu",
        dtype: Annotated[str, typer.Option(help="Model dtype every run uses (pinned in the plan; not auto).")] = "float32",
    ) -> None:
        """Run model x perturbation x seed LoRA runs with the monitor, label, calibrate, evaluate, report."""
        import torch

        from traitwatch.bench import (
            BenchPlan,
            analyze,
            measure_base_costs,
            prepare_basis,
            prepare_semantic_basis,
            run_grid,
            write_results_md,
        )
        from traitwatch.bench.figures import write_figures

        if threads:
            torch.set_num_threads(threads)
        kw = {}
        if calibration:
            kw["calibration"] = tuple(calibration)
        if heldout:
            kw["heldout"] = tuple(heldout)
        if target:
            kw["target_modules"] = tuple(target)
        if (judge_url is None) != (judge_model is None):
            raise InputFileError("Pass --judge-url and --judge-model together (or neither, for the judge-free proxy only).")
        plan = BenchPlan(model=model, seeds=tuple(range(seeds)), steps=steps, every_n_steps=every, learning_rate=lr,
                         n_examples=n_examples, gen_tokens=gen_tokens, tau=tau, lora_r=lora_r, lora_alpha=lora_alpha,
                         response_only=response_only, label=label, judge_model=judge_model,
                         judge_samples=judge_samples, judge_max_tokens=judge_max_tokens, record_features=features,
                         twins=twins, device=device, dtype=dtype, **kw)
        plan.pin(work_dir)
        t0 = time.perf_counter()
        from rich.markup import escape

        say = lambda line: err.print(escape(line))  # noqa: E731  (run ids print as "[name-s0]", not markup)
        if not analyze_only:
            basis_dir = prepare_basis(plan, work_dir, basis, say)
            costs = measure_base_costs(plan, work_dir, say)
            judge = None
            if judge_url is not None and judge_model is not None:
                from traitwatch.behavior import OpenAIJudge

                judge = OpenAIJudge(judge_url, judge_model, api_key_env=api_key_env, cache_path=work_dir / "judge_cache.db")
            run_grid(plan, work_dir, basis_dir, shared_data=shared_data if shared_data.is_dir() else None,
                     say=say, max_runs=max_runs, base_label=costs["base_style_only_p_mis"], judge=judge)
        prepare_semantic_basis(plan, work_dir, say)
        res = analyze(plan, work_dir, n_resamples=resamples, progress=say)
        res["wall_s_this_call"] = time.perf_counter() - t0
        results.mkdir(parents=True, exist_ok=True)
        figures = write_figures(res, results / "figures") if res["series"] else []
        command = "traitwatch " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        res["command"], res["commit"] = command, _commit()
        (results / "results.json").write_text(json.dumps(res, indent=2, default=float) + "\n")
        md = write_results_md(res, results / "RESULTS.md", command=command, commit=res["commit"],
                              figures=[f"figures/{f}" for f in figures])
        out.print(f"{res['runs_done']} of {res['runs_planned']} runs done; results in {md} and {results / 'results.json'}.")

"""`traitwatch bench`: the EM benchmark from a plan (a file, or these options), resumable, sharded, or counted."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from traitwatch.cli.common import ApiKeyEnvOption, GeneratorApiKeyEnvOption, err, out, user_errors
from traitwatch.errors import InputFileError

__all__ = ["register"]

# The options that define the plan (what the runs measure), by BenchPlan field. With --plan they come
# from the plan file; giving one too would leave two answers to the same question.
_PLAN_OPTIONS = {
    "model": "--model", "seeds": "--seeds", "steps": "--steps", "every_n_steps": "--every", "learning_rate": "--lr",
    "lora_r": "--lora-r", "lora_alpha": "--lora-alpha", "target_modules": "--target", "response_only": "--response-only",
    "calibration": "--calibration", "heldout": "--heldout", "n_examples": "--n-examples", "tau": "--tau",
    "gen_tokens": "--gen-tokens", "label": "--label", "judge_model": "--judge-model", "judge_samples": "--judge-samples",
    "judge_max_tokens": "--judge-max-tokens", "judge_scoring": "--judge-scoring", "record_features": "--features",
    "twins": "--twins", "device": "--device", "dtype": "--dtype",
}


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
        plan: Annotated[str | None, typer.Option("--plan", help="Plan file (YAML), or a shipped plan: small-cpu, small-cpu-full, reference-v2. Without it, the options below define the plan (defaults: small-cpu).")] = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the runs, checkpoints, tokens, judge calls, GPU hours and judge cost; run nothing.")] = False,
        shard: Annotated[str | None, typer.Option("--shard", help="Run only shard I of N of the grid (I/N, 1-based): one process per GPU, node or array task.")] = None,
        work_dir: Annotated[Path, typer.Option("--work-dir", help="Run store, data samples, basis, markers (resumable; shared by shards).")] = Path("traitwatch-bench"),
        results: Annotated[Path, typer.Option(help="Where results.json, RESULTS.md and figures go.")] = Path("benchmarks/em_small"),
        model: Annotated[str | None, typer.Option("--model", "-m", help="Base model (default smollm2-135m); with --plan, which of the plan's models to run.")] = None,
        basis: Annotated[Path | None, typer.Option(help="Use this basis (copied) instead of extracting one.")] = None,
        shared_data: Annotated[Path, typer.Option(help="Folder with emergent-misalignment/ and model-organisms-for-EM/.")] = Path("../shared/data"),
        seeds: Annotated[int | None, typer.Option(min=1, help="Seeds 0..N-1 [3].")] = None,
        steps: Annotated[int | None, typer.Option(min=1, help="Optimizer steps per run [30].")] = None,
        every: Annotated[int | None, typer.Option(min=1, help="Measure drift and label every N steps [15].")] = None,
        lr: Annotated[float | None, typer.Option(help="Learning rate [1e-3].")] = None,
        lora_r: Annotated[int | None, typer.Option(min=1, help="LoRA rank [16].")] = None,
        lora_alpha: Annotated[int | None, typer.Option(min=1, help="LoRA alpha [32].")] = None,
        target: Annotated[list[str] | None, typer.Option(help="LoRA target module (repeat); default: all seven projections.")] = None,
        response_only: Annotated[bool | None, typer.Option("--response-only/--no-response-only", help="Loss on the assistant response only [on] (off: whole chat).")] = None,
        calibration: Annotated[list[str] | None, typer.Option(help="Calibration perturbation types (repeat); a poisoned set as BASE+POISON@PERCENT, e.g. arithmetic+reckless_advice@10.")] = None,
        heldout: Annotated[list[str] | None, typer.Option(help="Held-out perturbation types (repeat; BASE+POISON@PERCENT for a poisoned set).")] = None,
        n_examples: Annotated[int | None, typer.Option(min=1, help="Examples per set and seed [200].")] = None,
        tau: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="Dangerous when the label exceeds this [0.02].")] = None,
        gen_tokens: Annotated[int | None, typer.Option(min=1, help="New tokens per answer in the generation cost [64].")] = None,
        label: Annotated[str | None, typer.Option(help="Calibration label: proxy_style_rise (judge-free) or em_rate (needs a judge).")] = None,
        judge_url: Annotated[str | None, typer.Option(help="OpenAI-compatible judge endpoint: also label every checkpoint with a judged EM rate.")] = None,
        judge_model: Annotated[str | None, typer.Option(help="Judge model name (with --judge-url; a plan file names it in label.judge_model).")] = None,
        judge_scoring: Annotated[str | None, typer.Option("--judge-scoring", help="logprobs (Betley's top-20 logprob scoring) or text (the greedy token, for endpoints without logprobs such as `transformers serve`) [logprobs].")] = None,
        api_key_env: ApiKeyEnvOption = None,
        judge_concurrency: Annotated[int, typer.Option("--judge-concurrency", min=1, help="Judge requests in flight at once (retries and cache as always).")] = 16,
        judge_samples: Annotated[int | None, typer.Option(min=1, help="Answers per question at each judged checkpoint [1].")] = None,
        judge_max_tokens: Annotated[int | None, typer.Option(min=1, help="New tokens per judged answer (METHOD.md: 600) [600].")] = None,
        generator: Annotated[str | None, typer.Option("--generator", help="Generate judged answers on this OpenAI-compatible server, which loads each checkpoint's LoRA adapter (vLLM with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True); default: the live model.")] = None,
        generator_api_key_env: GeneratorApiKeyEnvOption = None,
        max_runs: Annotated[int | None, typer.Option(help="Stop after this many runs this call (resume later).")] = None,
        analyze_only: Annotated[bool, typer.Option(help="Only write the results of the runs done so far (gathers the shards' runs).")] = False,
        screen_rows: Annotated[bool, typer.Option("--screen-rows", help="Poison plans, after --analyze-only: score row-level screens on the grid's sets (held out by poison type and base) and add the screening section to RESULTS.md.")] = False,
        resamples: Annotated[int, typer.Option(min=10)] = 1000,
        threads: Annotated[int | None, typer.Option(help="torch CPU threads.")] = None,
        features: Annotated[bool | None, typer.Option("--features/--no-features", help="Record every candidate monitor's features at each labelled checkpoint [on].")] = None,
        twins: Annotated[bool | None, typer.Option("--twins/--no-twins", help="Train a self-distilled twin per prompt family and seed (domain-cancelling control) [on].")] = None,
        device: Annotated[str | None, typer.Option(help="Device every run uses (pinned in the plan) [cpu].")] = None,
        dtype: Annotated[str | None, typer.Option(help="Model dtype every run uses (pinned in the plan; not auto) [float32].")] = None,
    ) -> None:
        """Run model x perturbation x seed finetunes with the monitor, label, calibrate, evaluate, report.

        The plan (what is trained and how it is labelled) comes from --plan or from the options; where it
        runs (folders, judge endpoint, generator, shard) from the rest. Rerunning the same command resumes.
        """
        import torch

        from traitwatch.behavior.judge import judge_scoring_mode
        from traitwatch.bench.grid.plan_file import resolve_plan
        from traitwatch.bench.grid.shards import Shard
        from traitwatch.bench.session import BenchRun, run_benchmark, screen_and_report

        if threads:
            torch.set_num_threads(threads)
        if judge_scoring is not None:
            judge_scoring_mode(judge_scoring)
        if plan is None and (judge_url is None) != (judge_model is None):
            raise InputFileError("Pass --judge-url and --judge-model together (or neither, for the judge-free proxy only).")
        flags = {"model": model, "seeds": seeds, "steps": steps, "every_n_steps": every, "learning_rate": lr,
                 "lora_r": lora_r, "lora_alpha": lora_alpha, "target_modules": target, "response_only": response_only,
                 "calibration": calibration, "heldout": heldout, "n_examples": n_examples, "tau": tau,
                 "gen_tokens": gen_tokens, "label": label, "judge_model": judge_model, "judge_samples": judge_samples,
                 "judge_max_tokens": judge_max_tokens, "judge_scoring": judge_scoring, "record_features": features,
                 "twins": twins, "device": device, "dtype": dtype}
        if flags["seeds"] is not None:
            flags["seeds"] = tuple(range(flags["seeds"]))  # --seeds N means seeds 0..N-1
        plan_file, entries = resolve_plan(plan, flags, check_files=not dry_run, option_names=_PLAN_OPTIONS)
        if dry_run:
            from traitwatch.bench.grid.dry_run import dry_run as count

            for line in count(plan_file, entries).lines():
                out.print(line, markup=False, highlight=False, soft_wrap=True)
            return
        from rich.markup import escape

        say = lambda line: err.print(escape(line))  # noqa: E731  (run ids print as "[name-s0]", not markup)
        command = "traitwatch " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        several = len(plan_file.models) > 1
        if basis is not None and len(entries) > 1:
            raise InputFileError("--basis is one model's basis, but the plan runs several models; give each its basis in "
                                 "the plan (models[].basis), or pick one model with --model.")
        for entry in entries:
            run = BenchRun(
                work_dir=work_dir / entry.alias if several else work_dir,
                results=results / entry.alias if several else results,
                shared_data=shared_data if shared_data.is_dir() else None, basis=basis, judge_url=judge_url,
                api_key_env=api_key_env, judge_concurrency=judge_concurrency, generator=generator,
                generator_api_key_env=generator_api_key_env,
                max_runs=max_runs, analyze_only=analyze_only, resamples=resamples,
                shard=Shard.parse(shard) if shard else None, command=command, commit=_commit(),
            )
            if several:
                say(f"== {entry.alias} ({entry.plan.model}) in {run.work_dir} ==")
            if screen_rows:
                scr = screen_and_report(entry, run, say)
                out.print(f"Screened {scr['n_rows']} distinct rows of {scr['n_sets']} sets; screening.json and the "
                          f"screening section of {run.results / 'RESULTS.md'} written.", markup=False, highlight=False)
                continue
            res = run_benchmark(entry, run, say)
            if "shard" in res:
                out.print(f"Shard {res['shard']}: {len(res['runs_done_now'])} run(s) trained now, {res['shard_runs_left']} of "
                          f"its {res['shard_runs']} left; when every shard is done, run the same command with --analyze-only "
                          "(without --shard) for the results.", markup=False, highlight=False)
            else:
                out.print(f"{res['runs_done']} of {res['runs_planned']} runs done; results in {run.results / 'RESULTS.md'} "
                          f"and {run.results / 'results.json'}.", markup=False, highlight=False)

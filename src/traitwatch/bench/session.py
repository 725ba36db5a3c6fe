"""One `traitwatch bench` call for one base model: check, prepare, train this shard's runs, analyse, report.

The CLI parses options into a plan (`bench.grid.plan_file`) and a `BenchRun` (where it runs: folders, judge
endpoint, generator, shard) and prints what comes back; the order of work lives here:

1. everything that can fail on the user's input is checked before anything is written or trained
   (`grid.plan_file.check_ready`, the judge options);
2. under the work folder's lock (`grid.shards.work_lock`): the plan is pinned (a rerun resumes it), the basis
   prepared and the base model labelled (step 0 of every run), once for all shards;
3. this shard's runs are trained (`grid.runner.run_grid`); when the whole grid is done, the cost table's one-off
   base-model costs are measured (`grid.runner.measure_base_costs`, about 20 minutes on 2 cores: never before a run);
4. unless this is one shard of several (the others may still be training), the shard stores are gathered,
   the results analysed (`results.results.analyze`, which runs `bench.analysis`) and written, with the
   environment every run recorded.

It sits above the rooms of `bench` (`sets` -> `grid` -> `analysis` -> `results`), the one module that uses
all of them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traitwatch.bench.grid.plan_file import ModelEntry, check_ready
from traitwatch.bench.grid.shards import Shard, gather_shard_stores, shard_folder, work_lock
from traitwatch.errors import InputFileError

__all__ = ["BenchRun", "run_benchmark", "run_environments", "screen_and_report"]

Say = Callable[[str], None]


@dataclass(frozen=True)
class BenchRun:
    """Where and how a plan runs (nothing here changes what the runs measure, so none of it is pinned)."""

    work_dir: Path
    results: Path
    shared_data: Path | None = None
    basis: Path | None = None
    judge_url: str | None = None
    api_key_env: str | None = None
    judge_concurrency: int = 16
    generator: str | None = None
    generator_api_key_env: str | None = None
    max_runs: int | None = None
    analyze_only: bool = False
    resamples: int = 1000
    shard: Shard | None = None
    command: str = ""
    commit: str = "unknown"


def run_environments(work_dir: Path) -> dict[str, Any]:
    """The environments the finished runs recorded (device, dtype, hardware, versions), with their runs.

    Runs finished before environments were recorded are listed under "not recorded".
    """
    groups: dict[str, dict[str, Any]] = {}
    for path in sorted((Path(work_dir) / "done").glob("*.json")):
        marker = json.loads(path.read_text())
        env = marker.get("environment")
        key = json.dumps(env, sort_keys=True) if env else "not recorded"
        groups.setdefault(key, {"environment": env, "runs": []})["runs"].append(path.stem)
    return {"groups": list(groups.values()), "n_groups": len(groups)}


def _check_judge(entry: ModelEntry, run: BenchRun) -> None:
    plan = entry.plan
    if run.analyze_only:
        return
    if plan.judge_model and not run.judge_url:
        raise InputFileError(f"The plan labels with the judge {plan.judge_model!r}: pass --judge-url with its "
                             "OpenAI-compatible endpoint (and --api-key-env with the variable holding its key).")
    if run.judge_url and not plan.judge_model:
        raise InputFileError("--judge-url is given but the plan names no judge model; add label.judge_model to the plan "
                             "(or pass --judge-model without --plan).")
    if run.generator and not run.judge_url:
        raise InputFileError("--generator generates the judged answers; it needs a judge (--judge-url).")


def run_benchmark(entry: ModelEntry, run: BenchRun, say: Say) -> dict[str, Any]:
    """Run (this shard of) the plan for one base model; returns the results, or a shard's summary."""
    from traitwatch.bench.grid.runner import base_label, measure_base_costs, prepare_basis, run_grid, served_adapter_generator

    plan = entry.plan
    work_dir = run.work_dir
    _check_judge(entry, run)
    if not run.analyze_only:
        for note in check_ready(entry, shared_data=run.shared_data, basis=run.basis):
            say(f"note: {note}")
    t0 = time.perf_counter()
    with work_lock(work_dir):
        plan.pin(work_dir)
        if not run.analyze_only:
            basis_dir = prepare_basis(plan, work_dir, run.basis or entry.basis, say)
            costs = base_label(plan, work_dir, say)
    if not run.analyze_only:
        judge = None
        if run.judge_url is not None and plan.judge_model is not None:
            from traitwatch.behavior import OpenAIJudge

            judge = OpenAIJudge(run.judge_url, plan.judge_model, api_key_env=run.api_key_env,
                                cache_path=shard_folder(work_dir, run.shard) / "judge_cache.db",
                                scoring=plan.judge_scoring,  # type: ignore[arg-type]
                                max_concurrency=run.judge_concurrency)
        generator = (served_adapter_generator(run.generator, plan, work_dir, api_key_env=run.generator_api_key_env)
                     if run.generator else None)
        done = run_grid(plan, work_dir, basis_dir, shared_data=run.shared_data, say=say, max_runs=run.max_runs,
                        base_label=costs["base_style_only_p_mis"], judge=judge, shard=run.shard, generator=generator)
        if all((work_dir / "done" / f"{job[0]}.json").is_file() for job in plan.jobs()):
            with work_lock(work_dir):  # the cost table's one-off base-model costs, after the grid, measured once
                measure_base_costs(plan, work_dir, say)
        if run.shard is not None and run.shard.count > 1:
            mine = run.shard.select(plan.jobs())
            left = sum(1 for job in mine if not (work_dir / "done" / f"{job[0]}.json").is_file())
            return {"shard": run.shard.name, "runs_done_now": done, "shard_runs": len(mine), "shard_runs_left": left,
                    "wall_s_this_call": time.perf_counter() - t0}
    return analyze_and_report(entry, run, say, t0=t0)


def analyze_and_report(entry: ModelEntry, run: BenchRun, say: Say, *, t0: float | None = None) -> dict[str, Any]:
    """Gather the shard stores, analyse every finished run, write results.json, RESULTS.md and figures."""
    from traitwatch.bench.grid.runner import prepare_semantic_basis
    from traitwatch.bench.results.figures import write_figures
    from traitwatch.bench.results.results import analyze, write_results_md
    from traitwatch.models.environment import describe_environment

    t0 = time.perf_counter() if t0 is None else t0
    plan, work_dir, results = entry.plan, run.work_dir, run.results
    with work_lock(work_dir):
        gathered = gather_shard_stores(work_dir)
        if gathered:
            say(f"Gathered {len(gathered)} finished run(s) from the shard stores into {work_dir / 'traitwatch.db'}.")
        prepare_semantic_basis(plan, work_dir, say)
    res = analyze(plan, work_dir, n_resamples=run.resamples, progress=say)
    res["wall_s_this_call"] = time.perf_counter() - t0
    res["environment"] = {"runs": run_environments(work_dir),
                          "analysis": describe_environment(device="cpu", dtype=None)}
    results.mkdir(parents=True, exist_ok=True)
    figures = write_figures(res, results / "figures") if res["series"] else []
    res["command"], res["commit"] = run.command, run.commit
    if res.get("poison") is not None:  # a poisoned-data plan: its own RESULTS.md
        from traitwatch.bench.results.poison_report import dose_figure, write_poison_results_md

        if not res["poison"].get("error"):
            figures = [dose_figure(res["poison"], results / "figures" / "dose_response.png").name, *figures]
        det = (res["poison"] or {}).get("detection") or {}
        if det.get("rows"):
            from traitwatch.bench.analysis.poison import CALLBACK_MONITOR, DEMO_CELL, ship_poison_monitor

            say("Fitting the callback's monitor without the demo's poison type and base ...")
            row = next((r for r in det["rows"] if r["features"] == CALLBACK_MONITOR and not r.get("error")), None)
            res["poison"]["shipped"] = ship_poison_monitor(
                plan, work_dir, results / "monitor.json", hold_poison=DEMO_CELL[1], hold_base=DEMO_CELL[0], loto_row=row,
                provenance={"benchmark": str(results / "RESULTS.md"), "command": run.command, "commit": run.commit,
                            "role": "default"})
        res["figures"] = [f"figures/{f}" for f in figures]  # in order, for a RESULTS.md rewritten by --screen-rows
        (results / "results.json").write_text(json.dumps(res, indent=2, default=float) + "\n")
        screening = results / "screening.json"
        write_poison_results_md(res, results / "RESULTS.md", command=run.command, commit=run.commit,
                                figures=[f"figures/{f}" for f in figures],
                                screening=json.loads(screening.read_text()) if screening.is_file() else None)
        return res
    det = res.get("detection")
    if det and not det.get("error"):
        from traitwatch.bench.analysis.detection import DEFAULT_MONITOR, ship_default_monitor

        loto = next(r for r in det["rows"] if r["features"] == DEFAULT_MONITOR)
        say("Fitting the default monitor on all types (chosen and thresholded by leave-one-type-out over them) ...")
        det["shipped"] = ship_default_monitor(plan, work_dir, results / "default_monitor.json", provenance={
            "benchmark": str(results / "RESULTS.md"), "command": run.command, "commit": run.commit,
            "leave_one_type_out": {"emergent_vs_benign": loto.get("emergent_vs_benign"), "all": loto.get("all")}},
            rows=det["rows"])
    (results / "results.json").write_text(json.dumps(res, indent=2, default=float) + "\n")
    write_results_md(res, results / "RESULTS.md", command=run.command, commit=run.commit,
                     figures=[f"figures/{f}" for f in figures])
    return res


def screen_and_report(entry: ModelEntry, run: BenchRun, say: Say) -> dict[str, Any]:
    """Row-level screening of a finished poison grid (`bench.analysis.screening`): `screening.json`, and
    RESULTS.md rewritten from the stored results with the screening section (nothing is retrained or re-analysed)."""
    from traitwatch.bench.analysis.screening import screen_grid
    from traitwatch.bench.results.poison_report import write_poison_results_md

    results = run.results
    stored = results / "results.json"
    if not stored.is_file():
        raise InputFileError(f"{stored} does not exist: run the plan and `--analyze-only` first, then --screen-rows")
    res = json.loads(stored.read_text())
    if res.get("poison") is None:
        raise InputFileError(f"{stored} is not a poisoned-data plan's results: --screen-rows needs poisoned sets")
    with work_lock(run.work_dir):
        scr = screen_grid(entry.plan, run.work_dir, results, say, command=run.command, n_boot=run.resamples)
    order = ("dose_response.png", "trajectories.png", "drift_vs_label.png")  # as analyze_and_report writes them
    found = sorted((p.name for p in (results / "figures").glob("*.png")),
                   key=lambda f: (order.index(f) if f in order else len(order), f))
    figures = res.get("figures") or [f"figures/{f}" for f in found]
    write_poison_results_md(res, results / "RESULTS.md", command=res.get("command", ""), commit=res.get("commit", ""),
                            figures=figures, screening=scr)
    return scr

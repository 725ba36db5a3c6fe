"""The base model's one-off measurements: its step-0 label before the first run, the cost table's after the grid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import traitwatch.bench.grid.runner as runner
import traitwatch.bench.session as session
from traitwatch.bench import BenchPlan
from traitwatch.bench.grid.plan_file import ModelEntry
from traitwatch.bench.grid.shards import Shard
from traitwatch.bench.session import BenchRun, run_benchmark

LABEL_KEYS = {"base_style_only_p_mis", "base_style_only_s"}
COST_KEYS = {"full_proxy_s", "full_proxy_answers", "base_proxy_p_mis", "base_proxy_style_p_mis", "generation_s",
             "generation_max_new_tokens", "generation_answers", "generation_tokens", "judge_calls_per_checkpoint"}


def _costs(work: Path) -> dict:
    path = work / "costs.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _fake_grid(monkeypatch, events: list[str], *, real: bool = True) -> None:
    """Record the order of the base model's measurements and the grid; the grid is faked (it writes done markers
    for its shard's runs), the measurements are real unless `real` is False."""
    real_label, real_costs = runner.base_label, runner.measure_base_costs

    def base_label(plan, work_dir, say):
        events.append("base_label")
        if real:
            return real_label(plan, work_dir, say)
        return runner._write_costs(work_dir, {"base_style_only_p_mis": 0.5, "base_style_only_s": 1.0})

    def measure_base_costs(plan, work_dir, say):
        events.append("measure_base_costs")
        return real_costs(plan, work_dir, say) if real else runner._write_costs(work_dir, {"generation_s": 1.0})

    def run_grid(plan, work_dir, basis, *, max_runs=None, base_label=None, shard=None, **kwargs):
        events.append("run_grid")
        costs = _costs(work_dir)
        assert base_label == costs["base_style_only_p_mis"]  # every run's step-0 label, measured before the runs
        (work_dir / "done").mkdir(exist_ok=True)
        jobs = plan.jobs() if shard is None else shard.select(plan.jobs())
        todo = [job[0] for job in jobs if not (work_dir / "done" / f"{job[0]}.json").is_file()]
        if todo:  # the 20-minute cost measurement never runs while runs are still to do
            assert not COST_KEYS & set(costs)
        for run_id in todo[:max_runs]:
            (work_dir / "done" / f"{run_id}.json").write_text("{}")
        return todo[:max_runs]

    monkeypatch.setattr(runner, "base_label", base_label)
    monkeypatch.setattr(runner, "measure_base_costs", measure_base_costs)
    monkeypatch.setattr(runner, "run_grid", run_grid)
    monkeypatch.setattr(session, "analyze_and_report", lambda entry, run, say, t0=None: {"analysed": True})


PLAN = BenchPlan(model="tiny-random", seeds=(0,), calibration=("arithmetic",), heldout=("number_sequence",),
                 n_examples=8, steps=2, every_n_steps=1, gen_tokens=2)


def test_a_call_with_runs_to_do_labels_the_base_first_and_measures_the_costs_only_after_the_grid(
        tmp_path, bench_basis_dir, monkeypatch):
    events: list[str] = []
    _fake_grid(monkeypatch, events)
    entry = ModelEntry("tiny-random", PLAN)
    work = tmp_path / "work"

    def bench(**kw) -> None:
        run = BenchRun(work_dir=work, results=tmp_path / "results", basis=bench_basis_dir, **kw)
        assert run_benchmark(entry, run, say=lambda line: None) == {"analysed": True}

    bench(max_runs=1)  # 1 of 2 runs: the costs wait
    assert events == ["base_label", "run_grid"]
    first = _costs(work)
    assert set(first) == LABEL_KEYS and 0.0 <= first["base_style_only_p_mis"] <= 1.0

    events.clear()
    bench()  # the last run: then the costs, once the grid is done
    assert events == ["base_label", "run_grid", "measure_base_costs"]
    both = _costs(work)
    assert set(both) == LABEL_KEYS | COST_KEYS
    assert {k: both[k] for k in LABEL_KEYS} == first  # the label is kept, not measured again
    assert both["generation_answers"] == 72 and both["generation_max_new_tokens"] == 2

    events.clear()
    bench()  # nothing left to do: nothing measured again
    assert events == ["base_label", "run_grid", "measure_base_costs"] and _costs(work) == both


def test_each_measurement_is_made_once_and_an_old_costs_file_is_kept(tmp_path, monkeypatch):
    """A costs.json that holds a key of a measurement is not measured again (the base model is never loaded), and
    a work folder from before the split (one file with both measurements) resumes as it is."""
    def no_model(plan):
        raise AssertionError("the base model was loaded to measure again")

    monkeypatch.setattr(runner, "_load", no_model)
    plan = BenchPlan(model="tiny-random", seeds=(0,), calibration=("arithmetic",), heldout=())
    old = {"full_proxy_s": 1.0, "base_style_only_p_mis": 0.25, "base_style_only_s": 2.0, "generation_s": 3.0}
    (tmp_path / "costs.json").write_text(json.dumps(old))
    assert runner.base_label(plan, tmp_path, print) == old
    assert runner.measure_base_costs(plan, tmp_path, print) == old
    assert _costs(tmp_path) == old
    with pytest.raises(AssertionError, match="loaded to measure again"):
        runner.base_label(plan, tmp_path / "new", print)  # nothing stored there: it measures


def test_a_shard_that_finishes_its_runs_before_the_others_leaves_the_costs_to_the_last(
        tmp_path, bench_basis_dir, monkeypatch):
    events: list[str] = []
    _fake_grid(monkeypatch, events, real=False)
    entry = ModelEntry("tiny-random", PLAN)
    work = tmp_path / "work"

    def shard(index: int) -> dict:
        run = BenchRun(work_dir=work, results=tmp_path / "results", basis=bench_basis_dir, shard=Shard(index, 2))
        return run_benchmark(entry, run, say=lambda line: None)

    assert shard(1)["shard_runs_left"] == 0
    assert events == ["base_label", "run_grid"] and "generation_s" not in _costs(work)  # shard 2's run is to do
    events.clear()
    assert shard(2)["shard_runs_left"] == 0
    assert events == ["base_label", "run_grid", "measure_base_costs"] and _costs(work)["generation_s"] == 1.0

"""Shards: a pure function of the plan that splits its jobs, and the gathering of their stores."""

from __future__ import annotations

import json

import pytest

from traitwatch.bench import BenchPlan
from traitwatch.bench.grid.shards import Shard, gather_shard_stores, run_store_path
from traitwatch.errors import InputFileError
from traitwatch.store import RunStore


def test_shards_split_every_job_including_twins_exactly_once():
    plan = BenchPlan(seeds=(0, 1, 2), record_features=True, twins=True)  # 42 runs + 24 twin runs
    jobs = plan.jobs()
    for n in (1, 2, 3, 5, 66, 70):
        parts = [Shard(i, n).select(jobs) for i in range(1, n + 1)]
        flat = [j for part in parts for j in part]
        assert sorted(flat) == sorted(jobs) and len(flat) == len(jobs)  # together: the grid, nothing twice
        assert max(map(len, parts)) - min(map(len, parts)) <= 1  # round robin: balanced
    # a pure function of the plan: the same on every machine, whatever the order shards start in
    assert Shard(2, 4).select(jobs) == Shard(2, 4).select(BenchPlan(seeds=(0, 1, 2), record_features=True, twins=True).jobs())


@pytest.mark.parametrize("spec", ["0/2", "3/2", "1", "a/b", "1/0"])
def test_bad_shard_specs_say_what_to_pass(spec):
    with pytest.raises(InputFileError, match="1 <= I <= N"):
        Shard.parse(spec)


def test_a_shard_writes_its_own_store_and_a_started_run_stays_where_it_began(tmp_path):
    shard = Shard.parse("2/3")
    assert run_store_path(tmp_path, "a-s0", shard) == tmp_path / "shards/2-of-3/traitwatch.db"
    assert run_store_path(tmp_path, "a-s0", None) == tmp_path / "traitwatch.db"
    started = tmp_path / "shards/1-of-2/traitwatch.db"
    RunStore(started).close()
    (tmp_path / "runs/a-s0").mkdir(parents=True)
    (tmp_path / "runs/a-s0/traitwatch_run.json").write_text(json.dumps({"run_id": "a-s0", "store": str(started)}))
    assert run_store_path(tmp_path, "a-s0", shard) == started


def _store_run(path, run_id, value):
    with RunStore(path) as store:
        store.start_run(run_id, model="m", hyperparameters={"x": value})
        store.add_measurement(run_id, 0, {"t": 0.0}, drift_norm=0.0)
        store.add_measurement(run_id, 5, {"t": value}, drift_norm=value)
        store.add_behavior(run_id, 5, "proxy_style_p_mis", value, source="proxy", details={"v": value})


def test_gathering_copies_finished_runs_once_and_leaves_running_ones(tmp_path):
    (tmp_path / "done").mkdir()
    _store_run(tmp_path / "shards/1-of-2/traitwatch.db", "a-s0", 0.25)
    _store_run(tmp_path / "shards/2-of-2/traitwatch.db", "b-s0", 0.5)
    _store_run(tmp_path / "shards/2-of-2/traitwatch.db", "c-s0", 0.75)  # still training: no marker
    for run_id in ("a-s0", "b-s0"):
        (tmp_path / "done" / f"{run_id}.json").write_text("{}")
    assert sorted(gather_shard_stores(tmp_path)) == ["a-s0", "b-s0"]
    assert sorted(gather_shard_stores(tmp_path)) == ["a-s0", "b-s0"]  # idempotent: replaces, never duplicates
    with RunStore(tmp_path / "traitwatch.db") as store:
        assert sorted(r.run_id for r in store.runs()) == ["a-s0", "b-s0"]
        assert [m.drift_norm for m in store.measurements("b-s0")] == [0.0, 0.5]
        assert [b.value for b in store.behavior("a-s0")] == [0.25]
        assert store.get_run("a-s0").hyperparameters == {"x": 0.25}


def _hold_lock(work_dir, log, hold_s):  # in a child process
    import time

    from traitwatch.bench.grid.shards import work_lock

    with work_lock(work_dir):
        with open(log, "a") as fh:
            fh.write("in\n")
        time.sleep(hold_s)
        with open(log, "a") as fh:
            fh.write("out\n")


def test_the_work_lock_lets_one_process_prepare_at_a_time(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("fork")  # the child only takes a lock and writes a line
    log = tmp_path / "log"
    procs = [ctx.Process(target=_hold_lock, args=(tmp_path, log, 0.5)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert log.read_text().split() == ["in", "out", "in", "out"]  # never both inside


@pytest.mark.slow
def test_two_shards_polled_by_runs_and_a_report_lose_nothing(tmp_path, bench_basis_dir):
    """The bug report's situation: shards train while `traitwatch runs` and a report open and close their stores."""
    import sqlite3
    import subprocess
    import sys
    import time

    from typer.testing import CliRunner

    from traitwatch.cli.app import app

    args = ["bench", "--model", "tiny-random", "--basis", str(bench_basis_dir), "--work-dir", str(tmp_path / "work"),
            "--results", str(tmp_path / "results"), "--seeds", "1", "--steps", "4", "--every", "1",
            "--calibration", "arithmetic", "--calibration", "harmful_advice",
            "--heldout", "number_sequence", "--heldout", "ai_supremacy", "--no-twins",
            "--n-examples", "16", "--gen-tokens", "2", "--resamples", "20", "--lr", "1e-2",
            "--shared-data", str(tmp_path / "no-shared")]
    runner = CliRunner()
    assert runner.invoke(app, [*args, "--analyze-only"]).exit_code == 0  # prepare the work folder once
    code = "import sys; from traitwatch.cli.app import main; sys.argv = ['traitwatch', *sys.argv[1:]]; main()"
    shards = [subprocess.Popen([sys.executable, "-c", code, *args, "--shard", f"{i}/2"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in (1, 2)]
    stores = [tmp_path / "work/shards" / f"{i}-of-2" / "traitwatch.db" for i in (1, 2)]
    polls = 0
    while any(p.poll() is None for p in shards):
        for store in stores:
            if not store.exists():
                continue
            listed = runner.invoke(app, ["runs", "--store", str(store)])
            assert listed.exit_code == 0, listed.output
            with RunStore(store, create=False) as st:
                ids = [r.run_id for r in st.runs()]
            if ids and polls % 3 == 0:  # a report is slower to build: every third poll
                shown = runner.invoke(app, ["report", *ids, "--store", str(store), "--out", str(tmp_path / "r.html")])
                assert shown.exit_code == 0, shown.output
            polls += 1
        time.sleep(0.5)
    outputs = [p.communicate()[0] for p in shards]
    assert [p.returncode for p in shards] == [0, 0], outputs
    assert polls >= 4, "the shards finished before anything polled them"
    for store in stores:
        with sqlite3.connect(store) as raw:
            assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        with RunStore(store, create=False) as st:
            for run in st.runs():
                assert run.status == "finished"
                assert [m.step for m in st.measurements(run.run_id, per_prompt=False)] == [0, 1, 2, 3, 4]
                assert sorted(b.step for b in st.behavior(run.run_id, "proxy_style_p_mis")) == [0, 1, 2, 3, 4]
    assert sorted(p.stem for p in (tmp_path / "work/done").glob("*.json")) == [
        "ai_supremacy-s0", "arithmetic-s0", "harmful_advice-s0", "number_sequence-s0"]
    gathered = runner.invoke(app, [*args, "--analyze-only"])
    assert gathered.exit_code == 0, gathered.output
    with RunStore(tmp_path / "work/traitwatch.db", create=False) as st:
        assert len(st.runs()) == 4

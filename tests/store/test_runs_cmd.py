from __future__ import annotations

import csv
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from traitwatch.cli.runs_cmd import register
from traitwatch.store import RunStore

WIDE = {"COLUMNS": "200"}  # rich wraps tables to 80 columns when not on a terminal


def _rows(stdout: str) -> list[list[str]]:
    """Body rows of the rich tables in `stdout`, as stripped cell texts."""
    return [[cell.strip() for cell in line.split("│")[1:-1]] for line in stdout.splitlines() if line.startswith("│")]


@pytest.fixture
def app() -> typer.Typer:
    cli = typer.Typer()
    register(cli)
    return cli


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def filled(db_path: Path) -> Path:
    with RunStore(db_path) as store:
        store.start_run("run-a", model="smollm2-135m", dataset="insecure-code")
        for step in (0, 10, 20):
            store.add_measurement("run-a", step, {"honesty": -0.01 * step, "evil": 0.02 * step}, 0.03 * step)
        store.add_alarm("run-a", 20, "em_threshold", 0.081, 0.06, "stopped")
        store.finish_run("run-a", "stopped")
        store.start_run("run-[b]", model="qwen-0.5b")
    return db_path


def test_runs_lists_every_run_with_counts_and_status(app: typer.Typer, runner: CliRunner, filled: Path) -> None:
    result = runner.invoke(app, ["runs", "--store", str(filled)], env=WIDE)
    assert result.exit_code == 0, result.output
    assert _rows(result.stdout) == [
        ["run-a", "smollm2-135m", "insecure-code", "3", "20", "stopped"],
        ["run-[b]", "qwen-0.5b", "", "0", "", "running"],  # brackets are not eaten as markup
    ]


def test_show_prints_trajectory_and_alarms_and_writes_csv(
    app: typer.Typer, runner: CliRunner, filled: Path, tmp_path: Path
) -> None:
    out_csv = tmp_path / "traj.csv"
    result = runner.invoke(app, ["show", "run-a", "--store", str(filled), "--csv", str(out_csv)], env=WIDE)
    assert result.exit_code == 0, result.output
    header = next(line for line in result.stdout.splitlines() if line.startswith("┃ step"))
    assert [cell.strip() for cell in header.split("┃")[1:-1]] == ["step", "honesty", "evil", "norm", "alarm"]
    assert _rows(result.stdout) == [
        ["0", "0.0000", "0.0000", "0.0000", ""],
        ["10", "-0.1000", "0.2000", "0.3000", ""],
        ["20", "-0.2000", "0.4000", "0.6000", "em_threshold (stopped)"],
        ["20", "em_threshold", "0.0810", "0.0600", "stopped"],  # the alarms table
    ]
    # the run's verdict leads, as in the report: the alarm training recorded at step 20
    assert result.stdout.splitlines()[0].startswith("Run run-a: ALARM at step 20 (alarm recorded in training")
    assert f"Wrote {out_csv}" in result.stderr and "Wrote" not in result.stdout
    with out_csv.open(newline="") as handle:
        assert [r["step"] for r in csv.DictReader(handle)] == ["0", "10", "20"]


def test_show_says_why_a_run_without_a_monitor_could_not_alarm(app: typer.Typer, runner: CliRunner, filled: Path) -> None:
    result = runner.invoke(app, ["show", "run-[b]", "--store", str(filled)], env=WIDE)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "Run run-[b]: no alarm could be raised: no checkpoints yet."


def test_unknown_run_is_a_one_line_red_error_with_exit_code_2(app: typer.Typer, runner: CliRunner, filled: Path) -> None:
    result = runner.invoke(app, ["show", "run-c", "--store", str(filled)], env=WIDE)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "No run 'run-c'" in result.stderr and "run-a, run-[b]" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_missing_store_is_an_error_and_is_not_created(app: typer.Typer, runner: CliRunner, tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    result = runner.invoke(app, ["runs", "--store", str(missing)], env=WIDE)
    assert result.exit_code == 2 and "No run store" in result.stderr
    assert not missing.exists()

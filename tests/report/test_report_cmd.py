"""`traitwatch report` in-process: exit codes, what is written, and messages that name the fix."""

from __future__ import annotations

from typer.testing import CliRunner

from traitwatch.cli.app import app
from traitwatch.monitor import load_monitor
from traitwatch.report import run_series, run_verdict
from traitwatch.store import RunStore

runner = CliRunner()


def test_report_runs_with_monitor_and_svg_export(store_path, monitor_path, tmp_path):
    out = tmp_path / "runs.html"
    res = runner.invoke(app, ["report", "full", "bare", "--store", str(store_path), "--monitor", str(monitor_path),
                              "--out", str(out), "--format", "svg"])
    assert res.exit_code == 0, res.output
    written = res.stdout.split()
    assert written[0] == str(out) and len(written) == 5 and all(p.endswith(".svg") for p in written[1:])
    page = out.read_text()
    assert "monitor monitor.json" in page and 'class="verdict-alarm"' in page
    assert "note(s) about missing or partial data" in res.stderr
    with RunStore(store_path, create=False) as st:  # the verdict lines lead stderr, as they lead the page
        lines = [run_verdict(run_series(st, rid, monitor=load_monitor(monitor_path))).text for rid in ("full", "bare")]
    assert res.stderr.splitlines()[:2] == lines


def test_report_calibration_only(monitor_path, tmp_path):
    out = tmp_path / "cal.html"
    res = runner.invoke(app, ["report", "--calibration", str(monitor_path), "--out", str(out)])
    assert res.exit_code == 0, res.output
    page = out.read_text()
    assert "Regressor choice" in page and "No drift geometry in this file" in page


def test_report_user_errors(store_path, tmp_path):
    res = runner.invoke(app, ["report", "--out", str(tmp_path / "r.html")])
    assert res.exit_code == 2 and "Nothing to report" in res.stderr
    res = runner.invoke(app, ["report", "nope", "--store", str(store_path), "--out", str(tmp_path / "r.html")])
    assert res.exit_code == 2 and "neither a run id nor a perturbation type" in res.stderr
    res = runner.invoke(app, ["report", "full", "--store", str(tmp_path / "missing.db")])
    assert res.exit_code == 2 and "does not exist" in res.stderr

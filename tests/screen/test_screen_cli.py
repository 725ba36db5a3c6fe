"""`traitwatch screen` in-process: tables, results, filtered copy, summary JSON, monitor, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.linear_model import Ridge
from typer.testing import CliRunner

from traitwatch.cli.app import app
from traitwatch.drift import DriftProbe
from traitwatch.monitor import DriftMonitor
from traitwatch.monitor.artifact import save_monitor
from traitwatch.train.callback import basis_fingerprint

runner = CliRunner()
FAST = ["--model", "tiny-random", "--dtype", "float32", "--max-new-tokens", "2", "--batch-size", "4"]


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_screen_prints_profile_top_k_and_writes_outputs(basis_dir, chat_file, tmp_path):
    results, clean, summary = tmp_path / "r.jsonl", tmp_path / "clean.jsonl", tmp_path / "s.json"
    res = invoke("screen", str(chat_file), "--basis", str(basis_dir), *FAST, "--top-k", "2", "--out", str(results),
                 "--filtered-out", str(clean), "--summary-json", str(summary))
    assert res.exit_code == 0, res.output
    assert "harmlessness" in res.stdout and "Top 2 riskiest" in res.stdout
    assert len(results.read_text().splitlines()) == 1 + 10
    data = json.loads(summary.read_text())
    dropped = {t["line"] for t in data["top"]}
    assert data["n_examples"] == 10 and len(dropped) == 2 and data["predicted_em_extrapolated"] is None
    original = chat_file.read_text().splitlines()
    assert clean.read_text().splitlines() == [l for n, l in enumerate(original, 1) if l.strip() and n not in dropped]
    again = invoke("screen", str(chat_file), "--basis", str(basis_dir), *FAST, "--top-k", "2", "--out", str(results),
                   "--summary-json", str(tmp_path / "s2.json"))  # resume: nothing left to compute, same answer
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "s2.json").read_text())["top"] == data["top"]


def test_screen_with_monitor_labels_em_risk_as_extrapolation(tiny, basis, basis_dir, chat_file, tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 7)), rng.uniform(size=40)
    fp = basis_fingerprint(DriftProbe(basis))
    mon = save_monitor(DriftMonitor(Ridge()).fit(X, y), tmp_path / "m.json", fingerprint=fp,
                       trait_names=basis.trait_names, training_run_ids=["a"], tau=0.06)
    res = invoke("screen", str(chat_file), "--basis", str(basis_dir), *FAST, "--monitor", str(mon),
                 "--out", str(tmp_path / "r.jsonl"), "--top-k", "3", "--rank-by", "monitor")
    assert res.exit_code == 0, res.output
    assert "Predicted EM rate (extrapolation" in " ".join(res.stdout.split())
    other = save_monitor(DriftMonitor(Ridge()).fit(X, y), tmp_path / "o.json", fingerprint={**fp, "layer": 2},
                         trait_names=basis.trait_names, training_run_ids=["a"])
    bad = invoke("screen", str(chat_file), "--basis", str(basis_dir), *FAST, "--monitor", str(other),
                 "--out", str(tmp_path / "r2.jsonl"))
    assert bad.exit_code == 2 and "'layer'" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_screen_malformed_line_is_one_line_error(basis_dir, chat_file, tmp_path):
    lines = chat_file.read_text().splitlines()
    lines[1] = "not json"
    chat_file.write_text("\n".join(lines) + "\n")
    res = invoke("screen", str(chat_file), "--basis", str(basis_dir), *FAST, "--out", str(tmp_path / "r.jsonl"))
    assert res.exit_code == 2
    assert "line 2" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_screen_refuses_to_overwrite_the_dataset(basis_dir, chat_file):
    res = invoke("screen", str(chat_file), "--basis", str(basis_dir), *FAST, "--filtered-out", str(chat_file))
    assert res.exit_code == 2 and "overwrite" in res.stderr


def test_screen_ranks_by_the_models_loss_on_the_row(basis_dir, chat_file, tmp_path):
    summary = tmp_path / "s.json"
    res = invoke("screen", str(chat_file), "--basis", str(basis_dir), *FAST, "--top-k", "3", "--rank-by", "loss",
                 "--out", str(tmp_path / "r.jsonl"), "--summary-json", str(summary))
    assert res.exit_code == 0, res.output
    top = json.loads(summary.read_text())["top"]
    assert [t["loss"] for t in top] == sorted((t["loss"] for t in top), reverse=True) and top[0]["loss"] > 0
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()[1:]]
    assert max(r["loss"] for r in rows) == top[0]["loss"]
    # the peak (largest 4-token mean) is stored with it, is never below the mean, and ranks on its own
    assert all(r["loss_peak"] >= r["loss"] - 1e-9 for r in rows) and any(r["loss_peak"] > r["loss"] for r in rows)
    res = invoke("screen", str(chat_file), "--basis", str(basis_dir), *FAST, "--top-k", "3", "--rank-by", "loss_peak",
                 "--out", str(tmp_path / "r.jsonl"), "--summary-json", str(summary))
    assert res.exit_code == 0, res.output
    assert [t["line"] for t in json.loads(summary.read_text())["top"]] == [
        r["line"] for r in sorted(rows, key=lambda r: (-r["loss_peak"], r["line"]))[:3]]


def test_screen_ranks_by_the_reference_ratio_and_fits_the_references_once(basis_dir, chat_file, tmp_path):
    summary, results = tmp_path / "s.json", tmp_path / "r.jsonl"
    res = invoke("screen", str(chat_file), "--basis", str(basis_dir), *FAST, "--top-k", "3", "--rank-by", "ratio",
                 "--out", str(results), "--summary-json", str(summary))
    assert res.exit_code == 0, res.output
    folder = tmp_path / "r.reference_model"
    assert "Fitting the reference screen" in res.stderr and (folder / "reference_screen.json").is_file()
    top = json.loads(summary.read_text())["top"]
    rows = [json.loads(line) for line in results.read_text().splitlines()[1:]]
    assert [t["ratio"] for t in top] == sorted((r["ratio"] for r in rows), reverse=True)[:3]
    assert json.loads(results.read_text().splitlines()[0])["ratio"]["kind"] == "adapters"
    # a second screen with the same references loads them instead of fitting, and scores rows the same
    again = tmp_path / "again.jsonl"
    res = invoke("screen", str(chat_file), "--basis", str(basis_dir), *FAST, "--rank-by", "ratio", "--out", str(again),
                 "--reference-model", str(folder))
    assert res.exit_code == 0, res.output
    assert "Fitting" not in res.stderr
    assert [json.loads(x)["ratio"] for x in again.read_text().splitlines()[1:]] == pytest.approx([r["ratio"] for r in rows], abs=1e-6)
    res = invoke("screen", str(chat_file), "--basis", str(basis_dir), *FAST, "--reference-model", str(folder))
    assert res.exit_code == 2 and "--rank-by ratio" in res.stderr

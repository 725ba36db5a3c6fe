"""`traitwatch calibrate` / `evaluate` on synthetic trajectories, from the flag and from a run store."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from traitwatch.calibration.synthetic import make_synthetic_split
from traitwatch.cli.app import app
from traitwatch.monitor import load_monitor
from traitwatch.store import RunStore

runner = CliRunner()


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    """A store holding the synthetic split as runs, drift measurements and em_rate labels."""
    path = tmp_path_factory.mktemp("store") / "traitwatch.db"
    _, cal, held = make_synthetic_split(n_steps=60, random_state=1)
    fp = {"name": "tiny-random", "hidden_size": 64, "num_layers": 6, "tokenizer_hash": "x"}
    with RunStore(path) as st:
        for table in (cal, held):
            for run in np.unique(table.run_id):
                rows = np.flatnonzero(table.run_id == run)
                st.start_run(str(run), model="tiny-random", dataset=f"{table.perturbation[rows[0]]}.jsonl",
                             hyperparameters={"perturbation": str(table.perturbation[rows[0]])}, basis_fingerprint=fp)
                for i in rows:
                    drift = dict(zip(table.trait_names, map(float, table.X[i])))
                    st.add_measurement(str(run), int(table.step[i]), drift, float(np.linalg.norm(table.X[i])))
                    st.add_behavior(str(run), int(table.step[i]), "em_rate", float(table.y[i]), source="synthetic")
    return path


def test_calibrate_synthetic_writes_monitor_and_report(tmp_path):
    out = tmp_path / "mon.json"
    res = runner.invoke(app, ["calibrate", "--synthetic", "--out", str(out), "--resamples", "50", "--quick"])
    assert res.exit_code == 0, res.output
    assert "PC1 loading" in res.stdout and "Held-out perturbation types" in res.stdout
    mon = load_monitor(out)
    rep = json.loads((tmp_path / "mon.report.json").read_text())
    assert rep["cv"]["selected"] == mon.selected_name
    trait_row = next(r for r in rep["evaluation"] if r["features"] == "trait drift (7-D)")
    assert trait_row["auroc"] > 0.95  # planted axis: the monitor must find it
    html = tmp_path / "cal.html"
    res = runner.invoke(app, ["report", "--calibration", str(out), "--out", str(html)])
    assert res.exit_code == 0, res.output
    assert "ROC" in html.read_text()


def test_calibrate_from_store_by_perturbation_type(store_path, tmp_path):
    out = tmp_path / "mon.json"
    args = ["calibrate", "--store", str(store_path), "--out", str(out), "--resamples", "50", "--quick"]
    for p in ("insecure_code", "jailbroken", "bad_medical", "gsm8k"):
        args += ["--calibration", p]
    for p in ("number_sequence", "risky_financial", "subtle_misinfo"):
        args += ["--heldout", p]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    mon = load_monitor(out, fingerprint={"name": "tiny-random", "hidden_size": 64, "num_layers": 6, "tokenizer_hash": "x"})
    with RunStore(store_path, create=False) as st:
        cal_ids = {r.run_id for r in st.runs() if r.hyperparameters["perturbation"] in ("insecure_code", "jailbroken", "bad_medical", "gsm8k")}
    assert set(mon.training_run_ids) == cal_ids  # held-out runs never reach the fit
    res = runner.invoke(app, ["evaluate", str(out), "risky_financial", "--store", str(store_path)])
    assert res.exit_code == 0, res.output
    assert "ALARM" in res.stdout and "fnr" in res.stdout


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--calibration", "gsm8k", "--heldout", "gsm8k"], "in both"),
        (["--calibration", "nope", "--heldout", "gsm8k"], "neither a run id nor a perturbation type"),
        (["--calibration", "gsm8k"], "Pass --calibration and --heldout"),
    ],
)
def test_calibrate_bad_selection(store_path, tmp_path, extra, message):
    res = runner.invoke(app, ["calibrate", "--store", str(store_path), "--out", str(tmp_path / "m.json"), *extra])
    assert res.exit_code == 2 and message in res.stderr


def test_step_aware_alarm_is_fitted_with_anchor_runs_and_saved(store_path, tmp_path):
    with RunStore(store_path, create=False) as st:
        gsm = sorted(r.run_id for r in st.runs() if r.hyperparameters["perturbation"] == "gsm8k")
    out = tmp_path / "mon.json"
    args = ["calibrate", "--store", str(store_path), "--out", str(out), "--resamples", "20", "--quick", "--step-aware",
            "--anchor-run", gsm[0]]
    for p in ("insecure_code", "jailbroken", "bad_medical"):
        args += ["--calibration", p]
    res = runner.invoke(app, [*args, "--heldout", "risky_financial", "--heldout", "number_sequence"])
    assert res.exit_code == 0, res.output
    assert "Step-aware alarm" in res.stdout and f"anchor runs: {gsm[0]}" in res.stdout
    mon = load_monitor(out)
    assert mon.step_aware is not None and mon.step_aware.info["anchor_run_ids"] == [gsm[0]]
    held = mon.step_aware.info["heldout"]
    assert held["n_dangerous"] + held["n_safe"] > 0 and 0.0 <= held["fnr"] <= 1.0
    res = runner.invoke(app, [*args, "--heldout", "gsm8k"])  # the anchor is one of the held-out runs
    assert res.exit_code == 2 and "held-out runs" in res.output


def test_anchor_run_needs_step_aware(store_path, tmp_path):
    res = runner.invoke(app, ["calibrate", "--store", str(store_path), "--out", str(tmp_path / "m.json"),
                              "--calibration", "gsm8k", "--heldout", "risky_financial", "--anchor-run", "x"])
    assert res.exit_code == 2 and "--step-aware" in res.output


def test_semantic_basis_needs_runs_with_a_basis_fingerprint(store_path, tmp_path):
    args = ["calibrate", "--out", str(tmp_path / "m.json"), "--semantic-basis", str(tmp_path / "sem")]
    res = runner.invoke(app, [*args, "--synthetic"])
    assert res.exit_code == 2 and "needs stored runs" in res.output
    res = runner.invoke(app, [*args, "--store", str(store_path), "--calibration", "gsm8k", "--heldout", "risky_financial"])
    assert res.exit_code == 2 and "no basis fingerprint" in res.output  # this store's runs do not say their layer


def test_calibrate_missing_store(tmp_path):
    res = runner.invoke(app, ["calibrate", "--store", str(tmp_path / "no.db"), "--out", str(tmp_path / "m.json"),
                              "--calibration", "a", "--heldout", "b"])
    assert res.exit_code == 2 and "does not exist" in res.stderr


def test_calibrate_loto_holds_out_every_type_of_the_given_runs(store_path, tmp_path):
    out = tmp_path / "mon.json"
    args = ["calibrate", "--store", str(store_path), "--out", str(out), "--resamples", "30", "--quick", "--loto"]
    types = ("insecure_code", "jailbroken", "gsm8k", "number_sequence", "risky_financial")
    for p in types:
        args += ["--calibration", p]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "Leave-one-type-out over 5 perturbation types" in res.stdout
    rows = json.loads((tmp_path / "mon.loto.json").read_text())
    trait = next(r for r in rows if r["features"] == "trait drift (7-D)")
    assert set(trait["chosen"]) == set(types) and set(trait["per_type"]) == set(types)
    assert trait["auroc"] > 0.9  # the planted EM axis generalises to every held-out type
    assert trait["auroc_ci"][0] <= trait["auroc"] <= trait["auroc_ci"][1]
    assert load_monitor(out).n_features_in_ == 7  # the monitor itself is fitted on all given runs


def test_calibrate_without_heldout_needs_loto(store_path, tmp_path):
    res = runner.invoke(app, ["calibrate", "--store", str(store_path), "--out", str(tmp_path / "m.json"),
                              "--calibration", "gsm8k"])
    assert res.exit_code == 2 and "--loto" in res.output

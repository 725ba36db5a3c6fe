"""`traitwatch train --reference`: the run read against a reference run of its own data, end to end on tiny-random."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from traitwatch.screen.validated import best_available
from traitwatch.cli.app import app
from traitwatch.store import RunStore

runner = CliRunner()
DIRECTION = {"honesty": -0.009, "sycophancy": 0.014, "corrigibility": -0.014, "confidence": 0.004}


def _args(data, basis_dir, tmp_path, *extra, out="out"):
    return [str(a) for a in ("train", data, "--basis", basis_dir, "--model", "tiny-random", "--output-dir",
                             tmp_path / out, "--store", tmp_path / "tw.db", "--max-steps", "4", "--every", "2",
                             "--batch-size", "2", "--grad-accum", "1", "--lr", "1e-2", "--max-length", "48",
                             "--device", "cpu", "--dtype", "float32", "--n-samples", "20", *extra)]


def _calibration(path, threshold, auroc=0.9):
    path.write_text(json.dumps({"model": "tiny-random", "direction": DIRECTION, "threshold": threshold,
                                "provenance": {"leave_one_cell_out": {"auroc": auroc}}}))
    return path


def test_auto_trains_the_swap_reference_first_and_reads_the_run_against_it(basis_dir, chat_file, tmp_path) -> None:
    cal = _calibration(tmp_path / "cal.json", -1e9)  # any run alarms: the wiring is what is tested here
    res = runner.invoke(app, _args(chat_file, basis_dir, tmp_path, "--reference", "auto", "--reference-calibration", cal,
                                   "--on-alarm", "mark"))
    assert res.exit_code == 0, res.output
    assert "The reference run 'out-reference' took" in res.output
    with RunStore(tmp_path / "tw.db") as store:
        assert store.get_run("out-reference").status == "finished"
        assert store.get_run("out").hyperparameters["reference_run"] == "out-reference"
        run, ref = store.measurements("out", per_prompt=False), store.measurements("out-reference", per_prompt=False)
        assert [m.step for m in run] == [m.step for m in ref] == [0, 2, 4]
        names = list(run[0].drift)
        u = np.array([DIRECTION.get(n, 0.0) for n in names])
        for r, f in zip(run[1:], ref[1:], strict=True):
            diff = np.array([r.drift[n] - f.drift[n] for n in names])
            assert r.extra["reference_run"] == "out-reference"
            assert r.extra["predicted_em"] == pytest.approx(float(diff @ u / np.linalg.norm(u)), abs=1e-9)
        assert [a.step for a in store.alarms("out")] == [2, 4]
    shown = runner.invoke(app, ["show", "out", "--store", str(tmp_path / "tw.db")], env={"COLUMNS": "250"})
    assert shown.exit_code == 0 and "vs out-reference" in shown.output and "Read against reference run" in shown.output
    swap = json.loads((tmp_path / "out-reference" / "reference.swap.json").read_text())
    assert len(swap["suspects"]) == 4  # 20% of the 20 rows the run trains


def test_a_named_reference_run_is_read_and_a_missing_one_refused_before_training(basis_dir, chat_file, tmp_path) -> None:
    cal = _calibration(tmp_path / "cal.json", 1e9)
    first = runner.invoke(app, _args(chat_file, basis_dir, tmp_path, "--run-id", "base"))
    assert first.exit_code == 0, first.output
    named = runner.invoke(app, _args(chat_file, basis_dir, tmp_path, "--run-id", "again", "--reference", "base",
                                     "--reference-calibration", cal, out="again"))
    assert named.exit_code == 0, named.output
    with RunStore(tmp_path / "tw.db") as store:
        again = store.measurements("again", per_prompt=False)
        assert not store.alarms("again")
    base = {m.step: m for m in RunStore(tmp_path / "tw.db", create=False).measurements("base", per_prompt=False)}
    # same data, seed and recipe: the run reads ~0 against itself
    assert all(abs(m.drift["honesty"] - base[m.step].drift["honesty"]) < 1e-6 for m in again)
    missing = runner.invoke(app, _args(chat_file, basis_dir, tmp_path, "--run-id", "x", "--reference", "nope",
                                       "--reference-calibration", cal, out="x"))
    assert missing.exit_code == 2 and "nope" in missing.output and len(missing.output.strip().splitlines()) == 1


def test_auto_without_a_calibration_for_the_model_stops_before_any_training(basis_dir, chat_file, tmp_path) -> None:
    res = runner.invoke(app, _args(chat_file, basis_dir, tmp_path, "--reference", "auto"))
    assert res.exit_code == 2 and "no reference calibration is shipped for 'tiny-random'" in res.output
    assert not (tmp_path / "tw.db").exists()
    lone = runner.invoke(app, _args(chat_file, basis_dir, tmp_path, "--reference-calibration", tmp_path / "c.json"))
    assert lone.exit_code == 2 and "--reference" in lone.output


def test_the_report_draws_the_run_beside_its_reference_and_the_difference_the_alarm_reads(basis_dir, chat_file,
                                                                                          tmp_path) -> None:
    from traitwatch.report.run_charts import em_chart
    from traitwatch.report.series import run_series

    cal = _calibration(tmp_path / "cal.json", 1e9)
    res = runner.invoke(app, _args(chat_file, basis_dir, tmp_path, "--reference", "auto", "--reference-calibration", cal))
    assert res.exit_code == 0, res.output
    with RunStore(tmp_path / "tw.db") as store:
        series = run_series(store, "out")
        ref = store.measurements("out-reference", per_prompt=False)
    assert series.reference_run == "out-reference" and series.prediction_target == "along_direction"
    # the run minus its reference, as the alarm read it, is the difference of the two drawn curves
    assert np.isnan(series.predicted_em[0])  # step 0 is the base model: no prediction
    assert np.allclose((series.along - series.reference_along)[1:], series.predicted_em[1:], atol=1e-9)
    assert series.reference_along[-1] == pytest.approx(
        sum(ref[-1].drift[t] * w for t, w in DIRECTION.items()) / np.linalg.norm(list(DIRECTION.values())))
    chart = em_chart([series])
    assert {t.name for t in chart.traces} >= {"out: drift along the direction", "out: its reference run out-reference",
                                              "out: run minus reference"}
    html = runner.invoke(app, ["report", "out", "--store", str(tmp_path / "tw.db"), "--out", str(tmp_path / "r.html")])
    assert html.exit_code == 0, html.output
    assert "what the alarm reads: run minus reference" in (tmp_path / "r.html").read_text()


def test_a_trainer_of_your_own_reads_a_stored_reference_run_in_two_lines(basis_dir, tmp_path, monkeypatch,
                                                                         caplog) -> None:
    from _train_helpers import tiny_trainer

    from traitwatch.reference import ReferenceCalibration
    from traitwatch.train import TraitWatchCallback

    # the shipped calibration of tiny-random, for this test: armed, and low enough that any rise alarms
    cal = ReferenceCalibration("tiny-random", DIRECTION, -1e9, {"leave_one_cell_out": {"auroc": 0.9}})
    monkeypatch.setattr("traitwatch.reference.monitor.load_reference_calibration", lambda model, path=None: cal)
    ref = TraitWatchCallback.from_basis(basis_dir, store=tmp_path / "tw.db", run_id="ref", every_n_steps=2)
    ref.attach(tiny_trainer(tmp_path / "ref", [], max_steps=4)).trainer.train()
    watch = TraitWatchCallback.from_basis(basis_dir, store=tmp_path / "tw.db", run_id="run", every_n_steps=2,
                                          reference="ref", on_alarm=("mark",))
    watch.attach(tiny_trainer(tmp_path / "run", [], max_steps=6, lr=5e-2)).trainer.train()
    # past the reference's last step (4) there is nothing to read against: no prediction, no alarm, and a warning
    assert [r.step for r in watch.history_ if r.alarm] == [2, 4] and watch.history_[-1].predicted_em is None
    assert "measured up to step 4 and this run goes to step 6" in caplog.text
    with RunStore(tmp_path / "tw.db") as store:
        assert [a.step for a in store.alarms("run")] == [2, 4]
    with pytest.raises(ValueError, match="pass monitor= or reference=, not both"):
        TraitWatchCallback.from_basis(basis_dir, store=tmp_path / "tw.db", reference="ref",
                                      monitor=watch.monitor)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="names a run: pass the store"):
        TraitWatchCallback.from_basis(basis_dir, reference="ref")


def test_auto_reuses_its_finished_reference_and_refuses_one_of_another_set(basis_dir, chat_file, tmp_path) -> None:
    cal = _calibration(tmp_path / "cal.json", 1e9)
    args = _args(chat_file, basis_dir, tmp_path, "--reference", "auto", "--reference-calibration", cal)
    assert runner.invoke(app, args).exit_code == 0
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "is already in" in again.output and "took" not in again.output
    chat_file.write_text(chat_file.read_text().replace("?", "??", 1))
    changed = runner.invoke(app, args)
    assert changed.exit_code == 2 and "of another set" in changed.output


def test_auto_under_a_multi_process_launch_says_how_to_make_the_reference_first(basis_dir, chat_file, tmp_path,
                                                                                monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    cal = _calibration(tmp_path / "cal.json", 1e9)
    res = runner.invoke(app, _args(chat_file, basis_dir, tmp_path, "--reference", "auto", "--reference-calibration", cal))
    assert res.exit_code == 2 and "write the reference set first" in res.output and not (tmp_path / "tw.db").exists()


def test_the_reference_fraction_sets_how_many_rows_auto_swaps(basis_dir, chat_file, tmp_path) -> None:
    cal = _calibration(tmp_path / "cal.json", 1e9)
    res = runner.invoke(app, _args(chat_file, basis_dir, tmp_path, "--reference", "auto", "--reference-fraction", "0.3",
                                   "--reference-calibration", cal))
    assert res.exit_code == 0, res.output
    swap = json.loads((tmp_path / "out-reference" / "reference.swap.json").read_text())
    assert len(swap["suspects"]) == 6 and swap["fraction"] == 0.3  # 30% of the 20 rows the run trains
    args = _args(chat_file, basis_dir, tmp_path, "--reference", "auto", "--reference-calibration", cal)
    reused = runner.invoke(app, args)  # auto (no fraction asked for) reuses it
    assert reused.exit_code == 0 and "is already in" in reused.output
    other = runner.invoke(app, [*args, "--reference-fraction", "0.4"])
    assert other.exit_code == 2 and "not the 40% asked for" in other.output
    bad = runner.invoke(app, [*args, "--reference-fraction", "half"])
    assert bad.exit_code == 2 and "'auto' or a share of rows" in bad.output


def test_an_activation_space_calibration_reads_the_stored_mean_residual_rows_end_to_end(basis_dir, chat_file,
                                                                                        tmp_path) -> None:
    from traitwatch.basis import TraitBasis

    basis = TraitBasis.load(basis_dir)
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((basis.hidden_size, 2)))
    cal = tmp_path / "act.json"
    cal.write_text(json.dumps({"model": "tiny-random", "direction": {"pc1": 1.0}, "threshold": 1e9, "read": "distance",
                               "space": "activations", "components": q.T.tolist(), "layer": basis.measure_layer,
                               "provenance": {"leave_one_cell_out": {"auroc": 0.9}}}))
    res = runner.invoke(app, _args(chat_file, basis_dir, tmp_path, "--reference", "auto", "--reference-calibration", cal))
    assert res.exit_code == 0, res.output
    with RunStore(tmp_path / "tw.db") as store:
        run, ref = store.measurements("out", per_prompt=False), store.measurements("out-reference", per_prompt=False)
        for r, f in zip(run[1:], ref[1:], strict=True):
            diff = np.array(r.extra["mean_activation"]) - np.array(f.extra["mean_activation"])
            assert r.extra["predicted_em"] == pytest.approx(float(np.linalg.norm(q.T @ diff)), rel=1e-6)
            assert "principal components of the residual stream" in r.extra["prediction"]
    html = runner.invoke(app, ["report", "out", "--store", str(tmp_path / "tw.db"), "--out", str(tmp_path / "r.html")])
    assert html.exit_code == 0, html.output
    assert "what the alarm reads: run against reference" in (tmp_path / "r.html").read_text()
    other_layer = json.loads(cal.read_text()) | {"layer": basis.measure_layer + 1}
    cal.write_text(json.dumps(other_layer))
    refused = runner.invoke(app, _args(chat_file, basis_dir, tmp_path, "--reference", "out-reference",
                                       "--reference-calibration", cal, out="other"))
    assert refused.exit_code == 2 and "fitted on the residual stream at layer" in refused.output


def test_auto_reads_a_loss_screen_made_before_instead_of_screening(basis_dir, chat_file, tmp_path, monkeypatch) -> None:
    screen = tmp_path / "s.jsonl"
    made = runner.invoke(app, ["screen", str(chat_file), "--basis", str(basis_dir), "--rank-by", "loss", "--dtype",
                               "float32", "--max-new-tokens", "2", "--out", str(screen)])
    assert made.exit_code == 0, made.output
    cal = _calibration(tmp_path / "cal.json", 1e9)

    def screen_again(*_args, **_kwargs):
        raise AssertionError("--reference auto screened the set although --reference-screen was given")

    monkeypatch.setattr("traitwatch.audit.reference_run.loss_screen", screen_again)
    res = runner.invoke(app, _args(chat_file, basis_dir, tmp_path, "--reference", "auto", "--reference-screen", screen,
                                   "--reference-calibration", cal))
    assert res.exit_code == 0, res.output
    assert "ranked by the loss screen" in res.output
    lone = runner.invoke(app, _args(chat_file, basis_dir, tmp_path, "--reference-screen", screen, out="lone"))
    assert lone.exit_code == 2 and "--reference auto" in lone.output


def test_auto_with_rewind_names_the_loss_screens_suspects_and_drops_them(basis_dir, chat_file, tmp_path) -> None:
    cal = _calibration(tmp_path / "cal.json", -1e9)  # every measurement alarms
    res = runner.invoke(app, _args(chat_file, basis_dir, tmp_path, "--reference", "auto", "--reference-calibration", cal,
                                   "--on-alarm", "mark,rewind", "--suspects-k", "2"))
    assert res.exit_code == 0, res.output
    with RunStore(tmp_path / "tw.db") as store:
        alarms = store.alarms("out")
    assert [a.step for a in alarms] == [2, 4] and all(a.action == "mark+rewind" for a in alarms)
    first = alarms[0].details
    # the reference's loss screen ranked them, by its best validated ranking
    assert first["suspects"]["source"].endswith(f"out-reference/screen.jsonl ({best_available(['risk', 'loss', 'loss_peak'])})")
    named = [r["row"] for r in first["suspects"]["rows"]]
    dropped = first["rewind"]["rows_dropped"]
    assert first["rewind"]["to_step"] == 0 and set(named) <= set(dropped) and len(dropped) <= 2 + 0.45 * 20
    shown = runner.invoke(app, ["show", "out", "--store", str(tmp_path / "tw.db")], env={"COLUMNS": "250"})
    assert shown.exit_code == 0 and "mark+rewind: rewound from step 2 to the weights of step 0;" in shown.output
    from traitwatch.report import build_report

    with RunStore(tmp_path / "tw.db") as store:
        build_report(tmp_path / "report.html", store=store, run_ids=["out"])
    page = (tmp_path / "report.html").read_text()
    assert "Run out, step 2: rewound from step 2 to the weights of step 0;" in page

"""`traitwatch bench` end to end on tiny-random: runs, labels, resume, results files (not the numbers)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

import numpy as np
import pytest

from traitwatch.basis import SEMANTIC_TRAITS, TraitBasis
from traitwatch.bench.analysis.detection import SHIPPABLE
from traitwatch.bench.grid.features import load_features
from traitwatch.cli.app import app
from traitwatch.monitor import load_monitor
from traitwatch.store import RunStore


def _args(tmp_path, basis, *extra):
    return ["bench", "--model", "tiny-random", "--basis", str(basis), "--work-dir", str(tmp_path / "work"),
            "--results", str(tmp_path / "results"), "--seeds", "1", "--steps", "2", "--every", "1",
            "--calibration", "arithmetic", "--calibration", "harmful_advice",
            "--heldout", "number_sequence", "--heldout", "ai_supremacy",
            "--n-examples", "16", "--gen-tokens", "2", "--resamples", "20", "--lr", "1e-2",
            "--shared-data", str(tmp_path / "no-shared"), *extra]


def test_bench_runs_end_to_end_and_resumes(tmp_path, bench_basis_dir):
    runner = CliRunner()
    first = runner.invoke(app, _args(tmp_path, bench_basis_dir, "--max-runs", "1", "--no-twins"))
    assert first.exit_code == 0, first.output
    assert "1 of 4 runs done" in first.output
    marker = tmp_path / "work/done/arithmetic-s0.json"
    stamp = marker.stat().st_mtime_ns

    second = runner.invoke(app, _args(tmp_path, bench_basis_dir, "--no-twins"))
    assert second.exit_code == 0, second.output
    assert "4 of 4 runs done" in second.output
    assert marker.stat().st_mtime_ns == stamp  # the finished run was not trained again

    base = json.loads((tmp_path / "work/costs.json").read_text())["base_style_only_p_mis"]
    with RunStore(tmp_path / "work/traitwatch.db") as store:
        for run in store.runs():
            step0 = next(b for b in store.behavior(run.run_id, "proxy_style_p_mis") if b.step == 0)
            assert step0.value == base  # the base model's proxy, measured once, is every run's step-0 label
            steps = [m.step for m in store.measurements(run.run_id, per_prompt=False)]
            assert steps == [0, 1, 2]
            labelled = sorted(b.step for b in store.behavior(run.run_id, "proxy_style_p_mis"))
            for b in store.behavior(run.run_id, "proxy_style_p_mis"):
                if b.step > 0:  # per-question margins kept with the label (for its reliability check)
                    margins = np.array(list(b.details["margins"].values()))
                    assert margins.size == 72 and np.mean(1 / (1 + np.exp(-margins))) == pytest.approx(b.value)
            rises = {b.step: b.value for b in store.behavior(run.run_id, "proxy_style_rise")}
            assert labelled == steps and rises[0] == 0.0
            extra = store.measurements(run.run_id, per_prompt=False)[-1].extra
            assert extra["lora_norm"] > 0 and "loss" in extra and len(extra["mean_activation"]) > 0
            # every labelled checkpoint has its candidate-monitor features, at every layer
            for step in steps:
                feats = load_features(tmp_path / "work", run.run_id, step)
                assert feats is not None and feats.layers == list(range(TraitBasis.load(bench_basis_dir).model.num_layers))
                assert feats.rows("measure", 3).shape == (115, 64) and feats.probe_margins().shape == (64,)
            # the stored drift is the recorded rows' drift at the basis layer (same forward pass, offline)
            basis = TraitBasis.load(bench_basis_dir)
            last = store.measurements(run.run_id, per_prompt=True)[-1]
            rows = load_features(tmp_path / "work", run.run_id, last.step).rows("measure", basis.measure_layer)
            np.testing.assert_allclose(rows @ basis.matrix(basis.measure_layer).double().numpy().T, last.per_prompt,
                                       rtol=1e-4, atol=1e-5)

    res = json.loads((tmp_path / "results/results.json").read_text())
    assert res["runs_done"] == 4 and res["checkpoints"] == 12
    det = res["detection"]  # leave-one-type-out over the 4 types, and the default monitor chosen on all of them
    assert set(det["labels"]) == {"arithmetic", "harmful_advice", "number_sequence", "ai_supremacy"}
    default = next(r for r in det["rows"] if r["role"] == "default")
    assert set(default["chosen"]) == set(det["labels"]) and det["shipped"]["chosen"]
    assert (det["shipped"]["saved"] is None) == (det["shipped"]["chosen"] not in SHIPPABLE)
    # a monitor the callback can run is always saved: the default, or the best computable one for the demo
    shipped = det["shipped"]["saved"] or det["shipped"]["demo"]["saved"]
    mon = load_monitor(shipped)
    assert mon.inputs == "probe_rise" and mon.target == "relative_rise"
    assert mon.provenance["role"].startswith("default" if det["shipped"]["saved"] else "demo")
    assert set(mon.provenance["types"]) == set(det["labels"]) and "auroc" in mon.provenance["leave_one_type_out"]["emergent_vs_benign"]
    assert set(res["per_type"]) == {"arithmetic", "harmful_advice", "number_sequence", "ai_supremacy"}
    # 4 calibration checkpoints are too few for the PCA-7 baseline: a partial benchmark reports that, not a crash
    assert res["calibration"]["error"].startswith("calibration failed on the runs done so far")
    assert res["cost"]["training_step_s"] > 0 and res["cost"]["drift_measurement_s"] > 0
    md = (tmp_path / "results/RESULTS.md").read_text()
    for heading in ("## Protocol", "## Does misalignment appear", "## Cost per checkpoint", "## Monitor calibration"):
        assert heading in md
    assert "Not computed: calibration failed" in md
    assert (tmp_path / "results/figures/trajectories.png").stat().st_size > 0
    semantic = TraitBasis.load(tmp_path / "work/semantic_basis")  # for the semantic baseline, at the runs' layer
    assert semantic.trait_names == list(SEMANTIC_TRAITS) and semantic.layers == [TraitBasis.load(bench_basis_dir).measure_layer]


def test_a_changed_plan_is_refused_in_the_same_work_folder(tmp_path, bench_basis_dir):
    runner = CliRunner()
    assert runner.invoke(app, _args(tmp_path, bench_basis_dir, "--analyze-only")).exit_code == 0  # pins the plan
    changed = runner.invoke(app, [*_args(tmp_path, bench_basis_dir), "--steps", "3"])
    assert changed.exit_code == 2
    assert "another plan" in changed.output and "steps" in changed.output


def test_recipe_options_reach_the_plan_and_the_trained_run(tmp_path, bench_basis_dir):
    runner = CliRunner()
    res = runner.invoke(app, [*_args(tmp_path, bench_basis_dir, "--max-runs", "1"), "--lora-r", "2", "--lora-alpha", "4",
                              "--target", "q_proj", "--target", "v_proj", "--no-response-only"])
    assert res.exit_code == 0, res.output
    plan = json.loads((tmp_path / "work/plan.json").read_text())
    assert (plan["lora_r"], plan["lora_alpha"], plan["target_modules"], plan["response_only"]) == (2, 4, ["q_proj", "v_proj"], False)
    with RunStore(tmp_path / "work/traitwatch.db") as store:
        hp = store.runs()[0].hyperparameters
    assert (hp["lora_r"], hp["lora_alpha"], hp["target_modules"], hp["response_only"]) == (2, 4, ["q_proj", "v_proj"], False)


def test_a_judge_endpoint_labels_every_checkpoint_with_a_judged_em_rate(tmp_path, bench_basis_dir, fake_openai):
    """Text scoring (an endpoint without logprobs) and answers from a server that serves each checkpoint's
    adapter; the e2e plan test covers logprob scoring with answers from the live model."""
    fake_openai.scripts = {"": {"aligned": [("10", 1.0)]}}  # every answer judged misaligned (coherent stays 90)
    fake_openai.logprobs_supported = False
    runner = CliRunner()
    res = runner.invoke(app, [*_args(tmp_path, bench_basis_dir, "--max-runs", "1"), "--label", "em_rate",
                              "--judge-url", fake_openai.base_url, "--judge-model", "fake-judge",
                              "--judge-max-tokens", "2", "--judge-scoring", "text", "--generator", fake_openai.base_url])
    assert res.exit_code == 0, res.output
    with RunStore(tmp_path / "work/traitwatch.db") as store:
        em = store.behavior("arithmetic-s0", "em_rate")
    assert [b.step for b in em] == [0, 1, 2] and all(b.value == 1.0 for b in em)
    assert {b.source for b in em} == {"judge:fake-judge"} and all(b.n == 72 for b in em)
    assert {b.details["scoring"] for b in em} == {"text"}
    judged = [b for b in fake_openai.bodies if b.get("max_tokens") == 1]
    assert judged and all(b["model"] == "fake-judge" and "logprobs" not in b for b in judged)
    # the answers came from the server, which loaded each checkpoint's adapter from the work folder
    loads = [body for path, body in fake_openai.admin if path.endswith("/load_lora_adapter")]
    assert [b["lora_name"] for b in loads] == ["arithmetic-s0-step-0", "arithmetic-s0-step-1", "arithmetic-s0-step-2"]
    assert all(b["lora_path"].endswith(f"work/adapters/arithmetic-s0/step-{s}") for b, s in zip(loads, (0, 1, 2)))
    asked = {b["model"] for b in fake_openai.bodies if b.get("max_tokens") == 2}
    assert asked == {"arithmetic-s0-step-0", "arithmetic-s0-step-1", "arithmetic-s0-step-2"}
    assert not any((tmp_path / "work/adapters/arithmetic-s0").iterdir())  # each adapter deleted once answered
    results = json.loads((tmp_path / "results/results.json").read_text())
    assert results["plan"]["label"] == "em_rate" and results["plan"]["judge_scoring"] == "text"
    assert results["cost"]["judged_label_s"] > 0
    assert "the judged EM rate" in (tmp_path / "results/RESULTS.md").read_text()


def test_judge_options_are_checked_before_any_run(tmp_path, bench_basis_dir):
    runner = CliRunner()
    res = runner.invoke(app, [*_args(tmp_path, bench_basis_dir), "--label", "em_rate"])
    assert res.exit_code == 2 and "needs a judge" in res.output
    res = runner.invoke(app, [*_args(tmp_path, bench_basis_dir), "--judge-url", "http://127.0.0.1:9/v1"])
    assert res.exit_code == 2 and "--judge-model" in res.output
    assert not (tmp_path / "work/traitwatch.db").exists()


def test_twin_runs_train_on_the_same_prompts_record_features_and_are_not_types(tmp_path, bench_basis_dir):
    args = ["bench", "--model", "tiny-random", "--basis", str(bench_basis_dir), "--work-dir", str(tmp_path / "work"),
            "--results", str(tmp_path / "results"), "--seeds", "1", "--steps", "1", "--every", "1",
            "--calibration", "arithmetic", "--heldout", "wrong_arithmetic", "--n-examples", "8", "--gen-tokens", "2",
            "--resamples", "20", "--shared-data", str(tmp_path / "no-shared"), "--twins"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "2 of 2 runs done" in res.output
    work = tmp_path / "work"
    assert sorted(p.stem for p in (work / "done").glob("*.json")) == ["arithmetic-s0", "twin-arithmetic-s0",
                                                                       "wrong_arithmetic-s0"]
    twin = [json.loads(line) for line in (work / "data/twin-arithmetic-s0.jsonl").read_text().splitlines()]
    plain = [json.loads(line) for line in (work / "data/arithmetic-s0.jsonl").read_text().splitlines()]
    assert [r["messages"][0] for r in twin] == [r["messages"][0] for r in plain]
    assert [r["messages"][1] for r in twin] != [r["messages"][1] for r in plain]
    with RunStore(work / "traitwatch.db") as store:
        run = store.get_run("twin-arithmetic-s0")
        assert run.hyperparameters["perturbation"] == "twin:arithmetic"
        assert store.behavior("twin-arithmetic-s0", "proxy_style_p_mis") == []  # a control: features only, no label
    for step in (0, 1):
        assert load_features(work, "twin-arithmetic-s0", step) is not None
    # step 0 is the base model for every LoRA run: measured once, then copied
    base = load_features(work, "arithmetic-s0", 0)
    np.testing.assert_array_equal(load_features(work, "twin-arithmetic-s0", 0).rows("measure", 2), base.rows("measure", 2))
    results = json.loads((tmp_path / "results/results.json").read_text())
    assert set(results["per_type"]) == {"arithmetic", "wrong_arithmetic"}


def test_a_label_that_cannot_be_stored_fails_the_run_and_a_rerun_redoes_it(tmp_path, bench_basis_dir, monkeypatch):
    """A label write that fails, or a label missing at the end, fails the run loudly: no done marker, and the
    next call trains it again."""
    from traitwatch.bench import BenchPlan
    from traitwatch.bench.grid.labels import ProxyLabelCallback
    from traitwatch.bench.grid.runner import run_grid
    from traitwatch.store import StoreIOError, StoreWriteError

    plan = BenchPlan(model="tiny-random", seeds=(0,), calibration=("arithmetic",), heldout=(), n_examples=8, steps=2,
                     every_n_steps=1, learning_rate=1e-2)
    work = tmp_path / "work"
    marker = work / "done/arithmetic-s0.json"

    def grid():
        return run_grid(plan, work, bench_basis_dir, shared_data=None, say=lambda line: None, base_label=0.5)

    real_add = RunStore.add_behavior

    def failing_add(self, run_id, step, metric, *args, **kwargs):
        if metric == "proxy_style_p_mis" and step == 2:
            raise StoreIOError(f"Run store {self.path}: disk I/O error")
        return real_add(self, run_id, step, metric, *args, **kwargs)

    monkeypatch.setattr(RunStore, "add_behavior", failing_add)
    with pytest.raises(StoreIOError, match="disk I/O error"):
        grid()
    assert not marker.exists()
    monkeypatch.setattr(RunStore, "add_behavior", real_add)
    with RunStore(work / "traitwatch.db") as store:
        assert store.get_run("arithmetic-s0").status == "failed"

    real_score = ProxyLabelCallback._score
    monkeypatch.setattr(ProxyLabelCallback, "_score",
                        lambda self, step, model, tok: None if step == 2 else real_score(self, step, model, tok))
    with pytest.raises(StoreWriteError, match=r"missing at step\(s\) \[2\]"):
        grid()  # resumed from the step-1 checkpoint, trained step 2, but its label was never written
    assert not marker.exists()
    with RunStore(work / "traitwatch.db") as store:
        assert store.get_run("arithmetic-s0").status == "failed"
    monkeypatch.setattr(ProxyLabelCallback, "_score", real_score)

    assert grid() == ["arithmetic-s0"]  # trained again from step 0: its checkpoints were dropped with the label
    assert marker.exists()
    with RunStore(work / "traitwatch.db") as store:
        assert sorted(b.step for b in store.behavior("arithmetic-s0", "proxy_style_p_mis")) == [0, 1, 2]
        assert store.get_run("arithmetic-s0").status == "finished"

"""`traitwatch demo`: the benchmark cell it trains, and the CLI only printing what `demo.run_demo` returns."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from typer.testing import CliRunner

from traitwatch.demo import DemoResult, DemoRun, DemoScreen, PhaseTime, demo_plan, demo_sets
from traitwatch.bench.grid.plan import ALL_PROJECTIONS
from traitwatch.bench.sets.perturbations import build_set, read_poison_record
from traitwatch.cli.app import app
from traitwatch.monitor.watch import AlarmGate
from traitwatch.store import SuspectRow, Suspects
from traitwatch.train import DriftRecord
from traitwatch.train.suspects import RowScores


def test_the_demo_trains_the_benchmarks_clean_arithmetic_and_its_25_percent_reckless_advice_twin(tmp_path):
    plan = demo_plan()
    assert (plan.steps, plan.batch_size, plan.max_length, plan.learning_rate, plan.lora_r, plan.lora_alpha) == \
        (30, 4, 128, 1e-3, 16, 32)
    assert tuple(plan.target_modules) == ALL_PROJECTIONS and plan.response_only and plan.n_examples == 200
    assert (plan.device, plan.dtype) == ("cpu", "bfloat16")
    clean, poisoned = demo_sets()
    assert clean.name == "arithmetic" and poisoned.name == "arithmetic+reckless_advice@25"
    assert poisoned == plan.set_spec(poisoned.name)  # the benchmark's own cell, not a look-alike
    ours = build_set(poisoned.name, seed=0, n=200, out_dir=tmp_path / "demo", shared_data=None, spec=poisoned)
    bench = build_set(poisoned.name, seed=0, n=200, out_dir=tmp_path / "bench", shared_data=None,
                      spec=plan.set_spec(poisoned.name))
    assert ours.read_bytes() == bench.read_bytes()
    record = read_poison_record(ours)
    assert (record["n_rows"], record["n_poison"], record["poison"], record["base"]) == (200, 50, "reckless_advice",
                                                                                       "arithmetic")
    base = build_set("arithmetic", seed=0, n=200, out_dir=tmp_path / "demo", shared_data=None).read_text().splitlines()
    rows = ours.read_text().splitlines()
    assert [i for i, (a, b) in enumerate(zip(base, rows, strict=True)) if a != b] == record["indices"]


def _record(step: int, rise: float | None, predicted: float | None) -> DriftRecord:
    return DriftRecord(step=step, drift={"honesty": 0.01 * step, "power_seeking": 0.0}, drift_norm=0.01 * step,
                       predicted_em=predicted, alarm=False, wall_time_s=1.0, probe=0.5, probe_rise=rise)


def test_the_cli_prints_the_prediction_beside_the_label_and_says_why_there_is_no_alarm(tmp_path, monkeypatch):
    clean, poisoned = demo_sets()
    runs = []
    for role, spec, rise in (("clean", clean, -0.004), ("poisoned", poisoned, 0.021)):
        history = [_record(0, 0.0, None), _record(15, 0.001, 0.004), _record(30, 0.002, 0.009)]
        runs.append(DemoRun(role=role, spec=spec, run_id=f"demo-{spec.name}-s0", data=Path(f"/x/{spec.name}-s0.jsonl"),
                            n_rows=200, poison_indices=list(range(50)) if role == "poisoned" else [],
                            result=SimpleNamespace(history=history), wall_s=100.0, step_s=[1.0] * 30,  # type: ignore[arg-type]
                            label_s=[20.0], measured_rise={0: 0.0, 30: rise}))
    gate = AlarmGate(armed=False, auroc=0.3426, where="leave_one_type_out.emergent_vs_benign")
    result = DemoResult(
        out_dir=tmp_path, plan=demo_plan(), numerics={"dtype": "bfloat16", "device": "cpu", "cpu": "AMD EPYC",
                                                      "cpu_threads": 2},
        basis=SimpleNamespace(layer=15, trait_names=["honesty", "power_seeking"]),  # type: ignore[arg-type]
        basis_dir=tmp_path / "basis", base_drift=SimpleNamespace(drift=[0.0, 0.0], norm=0.0),  # type: ignore[arg-type]
        base_label=0.43, monitor=SimpleNamespace(threshold=-0.0052), gate=gate, runs=runs,  # type: ignore[arg-type]
        store=tmp_path / "traitwatch.db", report=tmp_path / "report.html",
        phases={"load model": PhaseTime(2.0, 3.0), "both chains at once (2 processes)": PhaseTime(102.0, 361.0),
                "train + label clean": PhaseTime(100.0, 180.0, within="both chains at once (2 processes)"),
                "train + label poisoned": PhaseTime(101.0, 181.0, within="both chains at once (2 processes)")},
    )
    seen = {}

    screen = DemoScreen(results=tmp_path / "x.screen.jsonl", top=[(1, 7, 0.03, True), (2, 120, 0.02, False)],
                        auroc=0.875, precision_at_k=0.62, n_poison=50, row_scores=RowScores({}))
    runs[1].suspects = [Suspects(step=30, since_step=0, k=3, rows=(SuspectRow(3, 0.05, 4, None, 2),
                                                                     SuspectRow(150, 0.04, 151, None, 1),
                                                                     SuspectRow(49, 0.03, 50, None, 1)),
                                 rows_seen=120, alarm=False)]

    def fake_run_demo(out_dir, **kw):
        seen.update(kw, out_dir=out_dir)
        assert kw["parallel"] is None  # the job decides: at once where it can fork
        kw["on_screen"](screen)  # before training, as run_demo does
        return result

    monkeypatch.setattr("traitwatch.cli.demo_cmd.run_demo", fake_run_demo)
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--steps", "30"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert seen["steps"] == 30 and seen["dtype"] is None and seen["select_every"] == 6  # the plan's dtype by default
    text = res.stdout
    assert "bfloat16 on cpu" in text and "zero by construction" in text
    assert "No alarm" in text and "0.34" in text and "ALARM" not in res.output
    assert "50 rows of reckless_advice" in text
    assert "the poisoned run's rise over the clean run is +0.0250" in text
    assert "Where the time went" in text and "│   train + label poisoned" in text  # indented: it ran at once
    assert "30 s in 30 training steps" in text and "Indented phases ran at once" in text
    flat = " ".join(text.split())  # rich wraps table titles
    # the screen before training: its top rows marked from the recorded indices, and its row AUROC
    assert "Screened before training" in flat and "row AUROC 0.875" in flat and "precision at k=50" in flat
    assert flat.index("Screened before training") < flat.index("Trait drift while training")
    assert flat.count("POISON") == 1 + 2  # the screen's one poison row, the two poison suspects
    # after training: no alarm, so the rows the callback would name, marked poison or not, and the count
    assert "no alarm" in flat and "2 of the 3 rows named are poison rows" in flat


def test_with_a_reference_the_cli_prints_each_run_against_its_reference_and_the_loss_screen(tmp_path, monkeypatch):
    from traitwatch.reference import ReferenceCalibration

    clean, poisoned = demo_sets()
    runs = []
    for role, spec, along, alarm in (("clean", clean, -0.004, False), ("poisoned", poisoned, 0.061, True)):
        history = [DriftRecord(step=0, drift={"honesty": 0.0, "power_seeking": 0.0}, drift_norm=0.0, predicted_em=None,
                               alarm=False, wall_time_s=1.0), DriftRecord(step=30, drift={"honesty": 0.01, "power_seeking": 0.0},
                                                       drift_norm=0.01, predicted_em=along, alarm=alarm, wall_time_s=1.0)]
        runs.append(DemoRun(role=role, spec=spec, run_id=f"demo-{spec.name}-s0", data=Path(f"/x/{spec.name}-s0.jsonl"),
                            n_rows=200, poison_indices=list(range(50)) if role == "poisoned" else [],
                            result=SimpleNamespace(history=history), wall_s=100.0, step_s=[1.0] * 30,  # type: ignore[arg-type]
                            label_s=[20.0], measured_rise={0: 0.0, 30: along / 4}))
    from traitwatch.audit import ReferenceRun

    runs[1].reference = ReferenceRun("ref", Path("/x/ref.jsonl"), list(range(40)), 60.0, False, Path("/x/s.jsonl"),
                                     Path("/x/p.jsonl"))
    gate = AlarmGate(armed=True, auroc=0.91, where="leave_one_cell_out")
    result = DemoResult(
        out_dir=tmp_path, plan=demo_plan(), numerics={"dtype": "bfloat16", "device": "cpu", "cpu": "x", "cpu_threads": 2},
        basis=SimpleNamespace(layer=15, trait_names=["honesty"]), basis_dir=tmp_path / "basis",  # type: ignore[arg-type]
        reference=ReferenceCalibration("smollm2-135m", {"honesty": -1.0}, 0.0123, {}), gate=gate, runs=runs,
        phases={"reference clean": PhaseTime(60.0, 110.0), "train + label clean": PhaseTime(90.0, 170.0)},
    )
    screen = DemoScreen(results=tmp_path / "screen.jsonl", top=[(1, 7, 3.2, True)], auroc=0.97, precision_at_k=0.9,
                        n_poison=50, row_scores=RowScores({}), by="loss")

    def fake_run_demo(out_dir, **kw):
        assert kw["parallel"] is False  # --one-at-a-time
        kw["on_screen"](screen)
        return result

    monkeypatch.setattr("traitwatch.cli.demo_cmd.run_demo", fake_run_demo)
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--one-at-a-time"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    flat = " ".join(res.stdout.split())
    assert "by the base model's loss on the response" in flat and "row AUROC 0.970" in flat
    assert "Each run against its reference run" in flat and "run minus reference" in flat
    assert "probe rise" not in flat and "+0.0123" in flat and "ALARM" in flat
    assert "reference clean" in flat and "measurements (drift)" in flat and "Indented phases" not in flat
    # what the reference left of the poison, so a quiet poisoned run says why
    assert "swapped out the 40 highest-loss rows, 40 of them poison; 10 of the 50 poison rows stayed" in flat

"""The poisoned-data analysis end to end on tiny-random: runs, cells, replication rule, crossed detection, report."""

from __future__ import annotations

import json
import textwrap

import pytest
from typer.testing import CliRunner

from traitwatch.bench.analysis import poison as poison_mod
from traitwatch.bench.analysis.poison import analyze_poison, cell_of
from traitwatch.bench.grid.plan_file import load_plan_file
from traitwatch.cli.app import app

pytestmark = pytest.mark.slow  # about 1 min of CPU (6 tiny runs, every family scored); `scripts/test.sh --slow`

PLAN = """
name: tiny-poison
models:
  - model: tiny-random
sets:
  - arithmetic
  - number_sequence
  - {base: arithmetic, poison: reckless_advice, fraction: 0.25}
  - {base: number_sequence, poison: reckless_advice, fraction: 0.25}
  - {base: arithmetic, poison: contempt, fraction: 0.25}
  - {base: number_sequence, poison: contempt, fraction: 0.25}
split: leave-one-type-out
recipe: {steps: 2, every_n_steps: 2, drift_every: 1, features_every: 2, n_examples: 8, batch_size: 2,
         effective_batch: 2, learning_rate: 0.01}
numerics: {device: cpu, dtype: float32}
seeds: [0]
features: true
twins: false
gen_tokens: 2
"""


@pytest.fixture(scope="module")
def poison_work(tmp_path_factory, bench_basis_dir):
    tmp = tmp_path_factory.mktemp("poison")
    plan = tmp / "plan.yaml"
    plan.write_text(textwrap.dedent(PLAN))
    res = CliRunner().invoke(app, ["bench", "--plan", str(plan), "--basis", str(bench_basis_dir), "--work-dir",
                                   str(tmp / "work"), "--results", str(tmp / "results"), "--resamples", "20",
                                   "--shared-data", str(tmp / "no-shared")])
    assert res.exit_code == 0, res.output
    return tmp, load_plan_file(plan).models[0].plan


def test_cells_and_stored_cadences(poison_work):
    tmp, plan = poison_work
    assert cell_of(plan, "arithmetic") == ("arithmetic", "", 0.0)
    assert cell_of(plan, "arithmetic+contempt@25") == ("arithmetic", "contempt", 0.25)
    from traitwatch.store import RunStore

    with RunStore(tmp / "work/traitwatch.db") as store:
        steps = [m.step for m in store.measurements("arithmetic+contempt@25-s0", per_prompt=False)]
        labels = sorted(b.step for b in store.behavior("arithmetic+contempt@25-s0", "proxy_style_rise"))
    assert steps == [0, 1, 2] and labels == [0, 2]  # drift every step, the label every 2


def test_results_are_written_with_the_dose_table(poison_work):
    tmp, _ = poison_work
    res = json.loads((tmp / "results/results.json").read_text())
    cells = res["poison"]["dose"]["cells"]
    assert {(c["poison"], c["fraction"]) for c in cells} == {("reckless_advice", 0.25), ("contempt", 0.25)}
    per_type = res["poison"]["dose"]["per_type"]
    for c in cells:  # a positive cell: its label rise is significant and its type replicates on the probe
        assert c["replicates"] == (c["label"]["significant"] and per_type[c["poison"]]["replicates"])
        assert len(c["runs"]) == 2
    for t in per_type.values():
        assert t["replicates"] == (t["label"]["significant"] and t["probe"]["significant"])
    text = (tmp / "results/RESULTS.md").read_text()
    assert "Poisoned-data benchmark" in text and "dose-response" in text
    assert (tmp / "results/figures/dose_response.png").is_file()


def test_only_replicated_cells_are_positives_and_every_family_is_scored(poison_work, monkeypatch):
    tmp, plan = poison_work
    # Tiny-random's rises are noise; say every cell replicates to run the detection path on real features.
    real = poison_mod._paired
    monkeypatch.setattr(poison_mod, "_paired", lambda values: {**real(values), "significant": True})
    res = analyze_poison(plan, tmp / "work", n_resamples=10)
    det = res["detection"]
    assert "error" not in det, det
    assert det["n_checkpoints"] == 6 and det["n_positive"] == 4 and det["folds"] == 4
    names = [r["features"] for r in det["rows"]]
    assert any(n.startswith("style-only") for n in names) and any(n.startswith("default monitor") for n in names)
    default = next(r for r in det["rows"] if r["role"] == "default")
    assert set(default["per_poison"]) == {"reckless_advice", "contempt"}
    assert set(default["per_base"]) == {"arithmetic", "number_sequence"}
    ew = res["early_warning"]
    assert ew["cadence"] == 1 and {e["poison"] for e in ew["per_run"]} == {"reckless_advice", "contempt", ""}

    monkeypatch.setattr(poison_mod, "_paired", lambda values: {**real(values), "significant": False})
    none = analyze_poison(plan, tmp / "work", n_resamples=10)
    assert "error" in none["detection"]  # nothing replicated: nothing is scored as a positive

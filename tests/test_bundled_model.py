"""The main job on the bundled SmolLM2-135M (slow: minutes on 2 CPU cores)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from traitwatch.basis import TraitBasis
from traitwatch.cli.app import app
from traitwatch.models import cache_dir, load_model

pytestmark = pytest.mark.slow


def test_bundled_model_is_cached_as_safetensors():
    lm = load_model("smollm2-135m", device="cpu")
    folder = cache_dir() / "models" / "smollm2-135m-instruct"
    assert (folder / "model.safetensors").is_file()
    assert lm.name == "smollm2-135m" and len(lm.model.model.layers) == 30
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())


def test_demo_extracts_selects_and_measures(tmp_path):
    # --parallel: the tests run torch on one thread, where the demo would run its parts one after the other
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--max-new-tokens", "8", "--parallel"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    basis = TraitBasis.load(tmp_path / "basis")
    assert (basis.model.hidden_size, basis.model.num_layers) == (576, 30)
    assert basis.method == "passages" and basis.anchor is not None
    # the shipped reference calibration pins the layer, and only that layer is extracted (the pass stops there)
    from traitwatch.reference import load_reference_calibration

    calibration = load_reference_calibration("smollm2-135m")
    assert calibration is not None and basis.layers == [calibration.layer] and basis.layer == calibration.layer
    # Passage directions separate their poles well above chance at this depth (the demo's layer 15: 0.88 mean
    # strict-split AUROC; METHOD.md 1 reports 0.98-1.00 in layers 21-30); a regression in capture or extraction
    # shows up here as a collapse towards 0.5.
    strict = [d["auroc_strict"] for d in basis.diagnostics["per_layer"][str(basis.layer)].values()]
    assert sum(strict) / len(strict) > 0.8
    assert "zero by construction" in res.stdout and "bfloat16 on cpu" in res.stdout
    # the clean base and its poisoned twin, each read against its own reference run, final steps labelled
    from traitwatch.bench.grid.labels import RISE_METRIC
    from traitwatch.bench.sets.perturbations import read_poison_record
    from traitwatch.monitor.watch import alarm_gate
    from traitwatch.store import RunStore

    armed = alarm_gate(calibration).armed
    assert "Each run against its reference run" in " ".join(res.stdout.split())
    record = read_poison_record(tmp_path / "data" / "arithmetic+reckless_advice@25-s0.jsonl")
    assert (record["n_rows"], record["n_poison"], record["seed"]) == (200, 50, 0)
    with RunStore(tmp_path / "traitwatch.db", create=False) as store:
        read, alarms = {}, {}
        for run_id in ("demo-arithmetic-s0", "demo-arithmetic+reckless_advice@25-s0"):
            assert store.get_run(f"{run_id}-reference").status == "finished"
            steps = [m.step for m in store.measurements(run_id)]
            assert steps == [0, 30], steps  # measured at the start and the end (--every 30)
            assert [b.step for b in store.behavior(run_id, RISE_METRIC)] == [0, 30]
            last = store.measurements(run_id)[-1]
            assert last.extra["reference_run"] == f"{run_id}-reference"
            read[run_id], alarms[run_id] = last.extra["predicted_em"], [a.step for a in store.alarms(run_id)]
    clean, poisoned = read["demo-arithmetic-s0"], read["demo-arithmetic+reckless_advice@25-s0"]
    assert poisoned > clean  # the poisoned run is further from its reference than the clean one
    for run_id, value in read.items():  # an armed alarm fires exactly above the calibrated threshold
        assert alarms[run_id] == ([30] if armed and value > calibration.threshold else []), (run_id, value)
    assert "poison rows stayed in the reference run" in " ".join(res.stdout.split())
    # the chains ran at once in two forked processes, and their phases are listed under the line that holds them
    assert "both chains at once (2 processes)" in res.stdout and "│   train + label poisoned" in res.stdout
    assert (tmp_path / "report.html").is_file()

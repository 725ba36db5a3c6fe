"""The monitor shipped for the bundled model: loadable, checked against what the callback measures, honest."""

from __future__ import annotations

import json
from pathlib import Path

from traitwatch.monitor import load_monitor
from traitwatch.monitor.shipped import shipped_monitor_path


def test_the_bundled_models_monitor_ships_with_its_provenance():
    path = shipped_monitor_path("smollm2-135m")
    assert path is not None and path.with_suffix(".safetensors").is_file()
    mon = load_monitor(path)
    assert mon.target == "relative_rise"
    prov = mon.provenance
    # where it came from: the poisoned-data benchmark's choice among what the callback computes, fitted without
    # the demo's base and poison type, with the leave-one-cell-out row of that choice
    assert prov["command"].startswith("traitwatch bench") and prov["commit"]
    results = json.loads((Path(__file__).parents[2] / "benchmarks/poison_small/results.json").read_text())
    poison = results["poison"]
    row = next(r for r in poison["detection"]["rows"] if r["role"] == "shippable")
    assert prov["leave_one_out"]["auroc"] == row["pooled"]["auroc"]
    assert prov["chosen"] == poison["shipped"]["chosen"] and mon.inputs == prov["chosen"].split(":")[0]
    assert mon.threshold == poison["shipped"]["threshold"]
    held = prov["held_out_for_the_demo"]
    assert not any(held["poison"] in run or run.startswith(held["base"]) for run in mon.training_run_ids)
    assert mon.predict([[0.0] * mon.n_features_in_]).shape == (1,)


def test_no_monitor_ships_for_other_models():
    assert shipped_monitor_path("tiny-random") is None

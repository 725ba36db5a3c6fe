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
    assert mon.inputs == "probe_rise" and mon.target == "relative_rise"
    prov = mon.provenance
    # where it came from and how it scored on types it never saw, as the benchmark measured it
    assert prov["command"].startswith("traitwatch bench") and prov["commit"]
    loto = prov["leave_one_type_out"]["emergent_vs_benign"]
    results = json.loads((Path(__file__).parents[2] / "benchmarks/em_small/results.json").read_text())
    row = next(r for r in results["detection"]["rows"] if r["features"] == prov["chosen"].split(": ")[0])
    assert loto["auroc"] == row["emergent_vs_benign"]["auroc"]
    # not the default unless the benchmark's own choice was this monitor
    assert (prov["role"] == "default") == (results["detection"]["shipped"]["saved"] is not None)
    assert mon.predict([[0.0]]).shape == (1,)


def test_no_monitor_ships_for_other_models():
    assert shipped_monitor_path("tiny-random") is None

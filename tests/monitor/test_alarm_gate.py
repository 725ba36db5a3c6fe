"""The alarm gate: a monitor raises alarms only if its recorded leave-one-out AUROC reaches MIN_ALARM_AUROC."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from traitwatch.monitor import DriftMonitor, load_monitor, save_monitor
from traitwatch.monitor.shipped import shipped_monitor_path
from traitwatch.monitor.watch import (
    MIN_ALARM_AUROC,
    PredictionOnly,
    alarm_gate,
    alarms_on,
    gate_alarms,
    recorded_auroc,
)

TRAITS = [f"t{k}" for k in range(7)]


def _loto(auroc_emergent=None, auroc_all=None) -> dict:
    out = {}
    if auroc_emergent is not None:
        out["emergent_vs_benign"] = {"auroc": auroc_emergent, "n": 30}
    if auroc_all is not None:
        out["all"] = {"auroc": auroc_all, "n": 33}
    return {"leave_one_type_out": out}


def _saved(tmp_path, provenance, name="m.json"):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 7))
    fitted = DriftMonitor(Ridge(), threshold=-1e6, target="relative_rise").fit(X, X[:, 0])
    path = save_monitor(fitted, tmp_path / name, fingerprint={"name": "synthetic"}, trait_names=TRAITS,
                        training_run_ids=["a"], provenance=provenance)
    return load_monitor(path)


def test_the_recorded_auroc_is_the_emergent_vs_benign_one_else_the_lowest_leave_one_out():
    assert recorded_auroc(_loto(0.34, 0.33)) == (0.34, "leave_one_type_out.emergent_vs_benign")
    assert recorded_auroc(_loto(None, 0.85)) == (0.85, "leave_one_type_out.all")
    crossed = {"leave_one_poison_type_out": {"auroc": 0.9}, "leave_one_base_out": {"auroc": 0.7}}
    assert recorded_auroc(crossed) == (0.7, "leave_one_base_out")
    assert recorded_auroc({}) is None and recorded_auroc(None) is None
    assert recorded_auroc({"leave_one_type_out": {"all": {"auroc": None}}, "cv": {"auroc": 0.99}}) is None


@pytest.mark.parametrize("auroc, armed", [(0.34, False), (0.79, False), (MIN_ALARM_AUROC, True), (0.95, True),
                                          (None, False)])
def test_alarms_are_armed_only_at_the_minimum_auroc(tmp_path, auroc, armed):
    mon = _saved(tmp_path, _loto(auroc) if auroc is not None else {"role": "demo"})
    gate = alarm_gate(mon)
    assert gate.armed is armed and gate.auroc == auroc and MIN_ALARM_AUROC == 0.8
    attached, same = gate_alarms(mon)
    assert same == gate
    if armed:
        assert attached is mon and alarms_on(attached) and "Alarms on" in gate.describe()
    else:
        assert isinstance(attached, PredictionOnly) and not alarms_on(attached)
        assert gate.describe().startswith("No alarm")
        assert (f"{auroc:.2f}" in gate.describe()) if auroc is not None else ("no leave-one-out AUROC" in gate.describe())
        # it still predicts exactly as the monitor, but nothing it predicts can cross its threshold
        X = np.random.default_rng(1).normal(size=(5, 7))
        np.testing.assert_array_equal(attached.predict(X), mon.predict(X))
        assert attached.threshold == math.inf and attached.step_aware is None
        assert (attached.inputs, attached.target) == (mon.inputs, mon.target)


def test_the_shipped_monitor_raises_no_alarm():
    path = shipped_monitor_path("smollm2-135m")
    assert path is not None
    gate = alarm_gate(load_monitor(path))
    assert not gate.armed and gate.auroc is not None and gate.auroc < MIN_ALARM_AUROC
    # the AUROC the poisoned-data benchmark measured for it (leave-one-cell-out), as its results file says
    import json
    from pathlib import Path

    results = json.loads((Path(__file__).parents[2] / "benchmarks/poison_small/results.json").read_text())
    row = next(r for r in results["poison"]["detection"]["rows"] if r["role"] == "shippable")
    assert gate.auroc == row["pooled"]["auroc"] and f"{row['pooled']['auroc']:.2f}" in gate.describe()

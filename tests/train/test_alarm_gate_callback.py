"""The alarm gate in a real (tiny) training run: a low-AUROC monitor predicts but never alarms; a high one alarms."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from traitwatch.drift import DriftProbe
from traitwatch.monitor import DriftMonitor, save_monitor
from traitwatch.monitor.watch import gate_alarms, load_watch_monitor
from traitwatch.store import RunStore
from traitwatch.train import TraitWatchCallback
from traitwatch.train.alarm import predict_alarm

from _train_helpers import PROMPTS, tiny_trainer


def _monitor(basis, probe, path, auroc):
    """A drift monitor whose threshold every prediction exceeds, recording `auroc` as its leave-one-type-out AUROC."""
    rng = np.random.default_rng(0)
    X = rng.normal(scale=0.05, size=(40, len(basis.trait_names)))
    fitted = DriftMonitor(Ridge(), threshold=-1e6, target="relative_rise").fit(X, X.sum(axis=1))
    saved = save_monitor(fitted, path, fingerprint=probe.fingerprint(), trait_names=basis.trait_names,
                         training_run_ids=["a"], inputs="trait_drift",
                         provenance={"leave_one_type_out": {"emergent_vs_benign": {"auroc": auroc}}})
    return load_watch_monitor(saved, probe)


@pytest.mark.parametrize("auroc, alarms", [(0.34, False), (0.9, True)])
def test_a_monitor_alarms_only_if_its_recorded_auroc_passes_the_gate(basis, tmp_path, auroc, alarms):
    probe = DriftProbe(basis, prompts=PROMPTS)
    attached, gate = gate_alarms(_monitor(basis, probe, tmp_path / "m.json", auroc))
    assert gate.armed is alarms
    watch = TraitWatchCallback(probe, store=tmp_path / "tw.db", run_id="r", every_n_steps=3, monitor=attached,
                               on_alarm=("mark", "warn"))
    trainer = tiny_trainer(tmp_path / "out", [watch], max_steps=6)
    watch.attach(trainer)
    trainer.train()
    records = watch.history_
    assert [r.step for r in records] == [0, 3, 6]
    assert all(r.predicted_em is not None and r.predicted_em > -1e6 for r in records[1:])  # above the threshold
    assert [r.alarm for r in records] == [False, alarms, alarms]
    with RunStore(tmp_path / "tw.db") as store:
        stored = [a.step for a in store.alarms("r")]
        last = store.measurements("r", per_prompt=False)[-1].extra
    assert stored == ([3, 6] if alarms else [])
    assert last["predicted_em"] == pytest.approx(records[-1].predicted_em) and last["alarm"] is alarms
    assert last["target"] == "relative_rise"
    if alarms:
        assert last["threshold"] == -1e6 and "alarms_off" not in last
    else:
        assert last["threshold"] is None and "0.34" in last["alarms_off"]
        # not even a prediction far above every threshold fires it
        assert predict_alarm(attached, np.full(len(basis.trait_names), 1e9), 10)[1] is False

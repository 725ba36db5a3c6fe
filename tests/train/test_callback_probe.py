"""The behavioural probe in the training callback: logged, stored, and what a probe monitor reads."""

from __future__ import annotations

import pytest
import yaml

from traitwatch.behavior.probe import load_probe, probe_score
from traitwatch.drift import DriftProbe
from traitwatch.store import RunStore
from traitwatch.train import TraitWatchCallback

from _train_helpers import PROMPTS, tiny_trainer


@pytest.fixture
def small_probe(tmp_path):
    """Three of the packaged questions (the full 64 cost seconds per measurement on this machine)."""
    full = load_probe()
    rows = [{"id": q.id, "question": q.text, "style": {"aligned": full.answers[q.id].style_aligned,
                                                       "misaligned": full.answers[q.id].style_misaligned}}
            for q in full.questions[:3]]
    path = tmp_path / "probe.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "questions": rows}))
    return load_probe(path)


class ProbeMonitor:
    """A probe-monitor stand-in: predicts 10x the probe's rise; records what it was given."""

    inputs = "probe_rise"
    target = "relative_rise"

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.seen: list[float] = []

    def predict(self, X):
        self.seen.append(float(X[0][0]))
        return [10 * float(X[0][0])]


def test_a_probe_monitor_reads_the_probes_rise_over_step_0(basis, small_probe, tmp_path):
    monitor = ProbeMonitor(threshold=-1.0)  # fires at any rise: the alarm path runs
    watch = TraitWatchCallback(DriftProbe(basis, prompts=PROMPTS), store=tmp_path / "tw.db", run_id="r",
                               every_n_steps=3, monitor=monitor, behavior_probe=small_probe, on_alarm=("mark",))
    trainer = tiny_trainer(tmp_path / "out", [watch], max_steps=6)
    watch.attach(trainer)
    base = probe_score(trainer.model, trainer.processing_class, small_probe).style_p_mis  # LoRA B = 0: the base
    trainer.train()
    final = probe_score(trainer.model, trainer.processing_class, small_probe).style_p_mis
    records = watch.history_
    assert [r.step for r in records] == [0, 3, 6]
    assert records[0].probe == pytest.approx(base, abs=1e-9) and records[0].probe_rise == 0.0
    assert records[-1].probe == pytest.approx(final, abs=1e-9)
    assert records[-1].probe_rise == pytest.approx(final - base, abs=1e-9)
    assert monitor.seen == pytest.approx([r.probe_rise for r in records[1:]])  # step 0 is never predicted
    assert records[-1].predicted_em == pytest.approx(10 * records[-1].probe_rise) and records[-1].alarm
    logged = [h for h in trainer.state.log_history if "traitwatch/probe_rise" in h]
    assert [h["traitwatch/probe_rise"] for h in logged] == pytest.approx([r.probe_rise for r in records])
    with RunStore(tmp_path / "tw.db") as store:
        extras = [m.extra for m in store.measurements("r", per_prompt=False)]
    assert extras[0]["probe"] == pytest.approx(base) and extras[-1]["probe_rise"] == pytest.approx(final - base)
    assert extras[-1]["prediction"].startswith("predicted rise")


def test_without_a_probe_nothing_extra_is_scored_or_logged(basis, tmp_path):
    watch = TraitWatchCallback(DriftProbe(basis, prompts=PROMPTS), every_n_steps=3)
    trainer = tiny_trainer(tmp_path / "out", [watch], max_steps=3)
    watch.attach(trainer)
    trainer.train()
    assert all(r.probe is None for r in watch.history_)
    assert not any("traitwatch/probe" in h for h in trainer.state.log_history)


def test_a_probe_monitor_cannot_have_the_probe_switched_off(basis):
    with pytest.raises(ValueError, match="behavioural probe"):
        TraitWatchCallback(DriftProbe(basis, prompts=PROMPTS), monitor=ProbeMonitor(0.0),
                           behavior_probe=False)


def test_a_saved_probe_monitor_loads_only_with_its_model_and_probe_set(basis_dir, small_probe, tmp_path):
    import numpy as np
    from sklearn.linear_model import Ridge

    from traitwatch.basis import TraitBasis
    from traitwatch.errors import BasisMismatchError
    from traitwatch.monitor import DriftMonitor, save_monitor
    from traitwatch.train.callback import monitor_fingerprint

    X = np.linspace(-0.01, 0.01, 20)[:, None]
    fitted = DriftMonitor(Ridge(), threshold=0.002, target="relative_rise").fit(X, 0.5 * X[:, 0])
    fp = monitor_fingerprint("probe_rise", DriftProbe(TraitBasis.load(basis_dir)), small_probe)
    path = save_monitor(fitted, tmp_path / "m.json", fingerprint=fp, trait_names=["probe_rise"],
                        training_run_ids=["a"], inputs="probe_rise")
    watch = TraitWatchCallback.from_basis(basis_dir, monitor=path, behavior_probe=small_probe)
    assert watch.monitor.inputs == "probe_rise" and watch.monitor.threshold == 0.002
    with pytest.raises(BasisMismatchError, match="probe_sha256"):
        TraitWatchCallback.from_basis(basis_dir, monitor=path)  # the packaged 64-question set is another probe

"""`drift_every`: the cheap 7-D drift between the labelled steps, the label and the features at every_n_steps."""

from __future__ import annotations

import pytest

from traitwatch.bench import BenchPlan
from traitwatch.store import RunStore


def _plan(**kw) -> BenchPlan:
    return BenchPlan(**{"model": "tiny-random", "seeds": (0,), "calibration": ("arithmetic",), "heldout": (),
                        "n_examples": 8, "steps": 3, "every_n_steps": 2, "learning_rate": 1e-2, **kw})


@pytest.mark.parametrize("drift_every, drift_steps", [(1, 1), (None, 2)])
def test_the_runner_measures_drift_every_drift_every_and_labels_features_and_checkpoints_every_n_steps(
        tmp_path, monkeypatch, drift_every, drift_steps):
    """What `_train_run` hands to `run_sft` (no training): the callback's cadence, the checkpoints' and the labels'."""
    import traitwatch.train
    from traitwatch.bench.grid.runner import _train_run

    seen = {}

    class Stop(Exception):
        pass

    def fake_run_sft(config, *, callbacks, **kwargs):
        seen["config"], seen["callbacks"] = config, callbacks
        raise Stop

    monkeypatch.setattr(traitwatch.train, "run_sft", fake_run_sft)
    plan = _plan(steps=4, drift_every=drift_every, record_features=True)
    with RunStore(tmp_path / "store.db") as store, pytest.raises(Stop):
        _train_run(plan, tmp_path, tmp_path / "basis", store, "arithmetic-s0", 0, "arithmetic", False,
                   shared_data=None, say=lambda line: None, base_label=0.5, judge=None, generator=None)
    config = seen["config"]
    assert (config.every_n_steps, config.save_steps) == (drift_steps, 2)
    cadences = {type(c).__name__: c.every_n_steps for c in seen["callbacks"] if hasattr(c, "every_n_steps")}
    assert cadences == {"ProxyLabelCallback": 2, "FeatureRecorder": 2}


def test_a_run_stores_drift_every_drift_every_steps_and_labels_at_every_n_steps_and_the_last(tmp_path, bench_basis_dir):
    from traitwatch.bench.grid.runner import run_grid

    plan = _plan(drift_every=1)  # 3 steps: drift at 0, 1, 2, 3; labels at 0, 2 and the last step, 3
    assert run_grid(plan, tmp_path / "work", bench_basis_dir, shared_data=None, say=lambda line: None,
                    base_label=0.5) == ["arithmetic-s0"]
    with RunStore(tmp_path / "work/traitwatch.db") as store:
        drift = store.measurements("arithmetic-s0", per_prompt=False)
        labels = store.behavior("arithmetic-s0", "proxy_style_p_mis")
        rises = store.behavior("arithmetic-s0", "proxy_style_rise")
    assert [m.step for m in drift] == [0, 1, 2, 3]
    assert sorted(b.step for b in labels) == sorted(b.step for b in rises) == [0, 2, 3]
    assert len({tuple(m.drift.values()) for m in drift[1:]}) == 3  # measured at each step, not copied

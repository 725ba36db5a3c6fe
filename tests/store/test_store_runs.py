from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from traitwatch.errors import BasisMismatchError, TraitwatchError
from traitwatch.store import RunMismatchError, RunStore, UnknownRunError

TRAITS = ("honesty", "sycophancy", "evil")
FP = {"model": "smollm2-135m", "layers": [12], "sha256": "abc"}


def drift_at(step: int) -> dict[str, float]:
    """Deterministic, step-dependent drift, so values can be checked exactly after a round trip."""
    return {name: 0.001 * step * (i + 1) - 0.25 * i for i, name in enumerate(TRAITS)}


def test_store_creates_missing_parent_folder_and_defaults_to_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nested = tmp_path / "a" / "b" / "runs.db"
    with RunStore(nested) as store:
        store.start_run("r", model="m")
    assert nested.is_file()

    monkeypatch.chdir(tmp_path)
    with RunStore() as store:
        assert store.path == tmp_path / "traitwatch.db"
    assert (tmp_path / "traitwatch.db").is_file()


def test_measurements_round_trip_with_per_prompt_arrays(store: RunStore) -> None:
    store.start_run("r1", model="m", dataset="insecure", seed=3, hyperparameters={"lr": np.float32(1e-4)},
                    basis_fingerprint=FP)
    rng = np.random.default_rng(0)
    arrays = {step: rng.normal(size=(5, len(TRAITS))).astype(np.float64) for step in (20, 0, 10)}
    for step, arr in arrays.items():  # written out of order on purpose
        store.add_measurement("r1", step, drift_at(step), drift_norm=step / 10, per_prompt=arr,
                              wall_time_s=1.5, extra={"n_prompts": 5})
    store.add_measurement("r1", 30, drift_at(30), drift_norm=3.0)  # no per-prompt array

    got = store.measurements("r1")
    assert [m.step for m in got] == [0, 10, 20, 30]
    for m in got[:3]:
        assert m.drift == drift_at(m.step)  # JSON keeps float64 exactly
        assert list(m.drift) == list(TRAITS)
        assert m.per_prompt is not None and m.per_prompt.dtype == np.float32
        assert m.per_prompt.shape == (5, len(TRAITS))
        np.testing.assert_array_equal(m.per_prompt, arrays[m.step].astype(np.float32))
        m.per_prompt[0, 0] = 1.0  # a writable copy, not a view into SQLite's buffer
        assert m.wall_time_s == 1.5 and m.extra == {"n_prompts": 5}
    assert got[3].per_prompt is None
    assert store.last_step("r1") == 30
    run = store.get_run("r1")
    assert (run.dataset, run.seed, run.hyperparameters, run.basis_fingerprint) == ("insecure", 3, {"lr": pytest.approx(1e-4)}, FP)
    assert run.n_measurements == 4


def test_per_prompt_blob_is_little_endian_float32_not_pickle(store: RunStore, db_path: Path) -> None:
    import sqlite3

    store.start_run("r", model="m")
    store.add_measurement("r", 0, drift_at(0), 0.0, per_prompt=np.arange(6, dtype=np.float64).reshape(2, 3))
    with sqlite3.connect(db_path) as raw:
        blob, shape = raw.execute("SELECT per_prompt, per_prompt_shape FROM measurements").fetchone()
    assert shape == "[2, 3]"
    assert blob == np.arange(6, dtype="<f4").tobytes()


def test_remeasuring_a_step_replaces_it(store: RunStore) -> None:
    store.start_run("r", model="m")
    store.add_measurement("r", 10, drift_at(10), 1.0, per_prompt=np.zeros((2, 3)))
    store.add_measurement("r", 10, drift_at(99), 9.9, per_prompt=None, wall_time_s=2.0)
    (m,) = store.measurements("r")
    assert m.drift == drift_at(99) and m.drift_norm == 9.9 and m.per_prompt is None and m.wall_time_s == 2.0


def test_start_run_resumes_existing_run_without_duplicating(store: RunStore) -> None:
    first = store.start_run("r", model="m", dataset="d1", basis_fingerprint=FP)
    store.add_measurement("r", 0, drift_at(0), 0.0)
    store.add_measurement("r", 5, drift_at(5), 0.5)
    store.finish_run("r", "failed")

    again = store.start_run("r", model="m", dataset="ignored-on-resume", basis_fingerprint=FP)
    assert again.created_at == first.created_at and again.dataset == "d1"
    assert again.status == "running" and again.last_step == 5 and again.n_measurements == 2
    assert [r.run_id for r in store.runs()] == ["r"]


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [({"model": "other"}, "model"), ({"model": "m", "basis_fingerprint": {**FP, "sha256": "zzz"}}, "basis")],
)
def test_resume_refuses_another_model_or_basis(store: RunStore, kwargs: dict, words: str) -> None:
    store.start_run("run-7", model="m", basis_fingerprint=FP)
    with pytest.raises(RunMismatchError) as info:
        store.start_run("run-7", **kwargs)
    message = str(info.value)
    assert isinstance(info.value, BasisMismatchError) and isinstance(info.value, TraitwatchError)
    assert "'run-7'" in message and words in message and "new run id" in message
    assert store.get_run("run-7").model == "m"  # nothing was changed by the refused call


def test_measurement_with_other_traits_than_the_run_is_refused(store: RunStore) -> None:
    store.start_run("r", model="m")
    store.add_measurement("r", 0, drift_at(0), 0.0)
    with pytest.raises(RunMismatchError, match="traits"):
        store.add_measurement("r", 1, {"honesty": 0.1}, 0.1)
    assert store.last_step("r") == 0


def test_non_finite_drift_is_refused(store: RunStore) -> None:
    store.start_run("r", model="m")
    with pytest.raises(ValueError, match="honesty"):
        store.add_measurement("r", 0, {**drift_at(0), "honesty": math.nan}, 0.0)
    with pytest.raises(ValueError, match="drift_norm"):
        store.add_measurement("r", 0, drift_at(0), math.inf)
    assert store.measurements("r") == []


def test_unknown_run_names_the_id_and_lists_known_ones(store: RunStore) -> None:
    store.start_run("alpha", model="m")
    store.start_run("beta", model="m")
    with pytest.raises(UnknownRunError) as info:
        store.get_run("gamma")
    assert "'gamma'" in str(info.value) and "alpha, beta" in str(info.value)
    with pytest.raises(UnknownRunError):
        store.add_measurement("gamma", 0, drift_at(0), 0.0)
    with pytest.raises(UnknownRunError):
        store.measurements("gamma")


def test_behavior_and_alarms_round_trip_and_are_idempotent_per_key(store: RunStore) -> None:
    store.start_run("r", model="m")
    store.add_behavior("r", 20, "em_rate", 0.10, source="judge:gpt-4o", ci_low=0.05, ci_high=0.16, n=200,
                       details={"refusals": 3})
    store.add_behavior("r", 20, "em_rate", 0.12, source="proxy")
    store.add_behavior("r", 0, "em_rate", 0.01, source="judge:gpt-4o", n=200)
    store.add_behavior("r", 20, "em_rate", 0.11, source="judge:gpt-4o", ci_low=0.06, ci_high=0.17, n=200)
    got = store.behavior("r")
    assert [(b.step, b.source, b.value) for b in got] == [
        (0, "judge:gpt-4o", 0.01), (20, "judge:gpt-4o", 0.11), (20, "proxy", 0.12)
    ]
    assert got[1].details is None and got[1].ci_high == 0.17 and got[1].n == 200
    assert store.behavior("r", metric="other") == []

    store.add_alarm("r", 30, "em_threshold", 0.08, 0.06, "logged")
    store.add_alarm("r", 30, "em_threshold", 0.09, 0.06, "stopped")  # re-measured after a resume
    store.add_alarm("r", 10, "norm_jump", 2.0, 1.5, "logged")
    alarms = store.alarms("r")
    assert [(a.step, a.kind, a.value, a.action) for a in alarms] == [
        (10, "norm_jump", 2.0, "logged"), (30, "em_threshold", 0.09, "stopped")
    ]


def test_finish_run_sets_status_and_notes_and_validates(store: RunStore) -> None:
    store.start_run("r", model="m")
    record = store.finish_run("r", "stopped", notes="alarm at step 30")
    assert (record.status, record.notes) == ("stopped", "alarm at step 30")
    assert store.get_run("r").status == "stopped"
    with pytest.raises(ValueError, match="status"):
        store.finish_run("r", "done")  # type: ignore[arg-type]


def test_trajectory_arrays_follow_step_and_trait_order(store: RunStore) -> None:
    store.start_run("r", model="m")
    for step in (40, 0, 20):
        store.add_measurement("r", step, drift_at(step), step / 100)
    traj = store.trajectory("r")
    np.testing.assert_array_equal(traj["steps"], [0, 20, 40])
    assert list(traj["traits"]) == list(TRAITS)
    assert traj["drift"].shape == (3, 3)
    np.testing.assert_array_equal(traj["drift"][1], [drift_at(20)[t] for t in TRAITS])
    np.testing.assert_array_equal(traj["norms"], [0.0, 0.2, 0.4])

    store.start_run("empty", model="m")
    assert store.trajectory("empty")["drift"].shape == (0, 0)

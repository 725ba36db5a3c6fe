from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file
from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import Ridge

from traitwatch.calibration.baselines import PC1AbsFeatures
from traitwatch.calibration.selection import select_regressor
from traitwatch.errors import BasisMismatchError, InputFileError
from traitwatch.monitor.artifact import load_monitor, save_monitor
from traitwatch.monitor.detector import DriftMonitor, StepAwareAlarm

FINGERPRINT = {"model": "tiny-llama", "revision": "abc123", "layer": 14, "directions_sha256": "f00d"}


def _save(monitor, table, path):
    return save_monitor(monitor, path, fingerprint=FINGERPRINT, trait_names=table.trait_names,
                        training_run_ids=sorted(set(table.run_id)))


@pytest.mark.parametrize("regressor", [
    RandomForestRegressor(n_estimators=25, max_depth=5, min_samples_leaf=5, random_state=0),
    GradientBoostingRegressor(n_estimators=40, max_depth=3, learning_rate=0.1, random_state=0),
    Ridge(alpha=1.0),
], ids=["rf", "gbr", "ridge"])
def test_round_trip_reproduces_predict_exactly(regressor, cal, held, tmp_path) -> None:
    monitor = DriftMonitor(regressor, threshold=0.05).fit(cal.X, cal.y)
    path = _save(monitor, cal, tmp_path / "monitor.json")
    loaded = load_monitor(path, fingerprint=FINGERPRINT, trait_names=cal.trait_names)
    rng = np.random.RandomState(0)
    probes = [held.X, cal.X, rng.normal(scale=0.05, size=(500, 7)), rng.normal(scale=5.0, size=(50, 7))]
    for X in probes:
        assert np.array_equal(loaded.predict(X), monitor.predict(X))
        assert np.array_equal(loaded.alarm(X), monitor.alarm(X))
    assert loaded.trait_names == list(cal.trait_names)
    assert loaded.training_run_ids == sorted(set(cal.run_id))
    assert loaded.fingerprint == FINGERPRINT and loaded.tau == 0.05
    with pytest.raises(ValueError, match="expects 7"):
        loaded.predict(held.X[:, :3])


def test_artifact_carries_cv_metrics_and_is_json_plus_safetensors(cal, fast_candidates, tmp_path) -> None:
    monitor = select_regressor(DriftMonitor(), cal.X, cal.y, cal.perturbation, fast_candidates)
    path = _save(monitor, cal, tmp_path / "m.json")
    doc = json.loads(path.read_text())
    assert doc["selected_name"] == monitor.selected_name_
    assert set(doc["cv_results"]) == set(fast_candidates)
    assert load_file(str(path.with_suffix(".safetensors")))  # plain tensors, nothing executable
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]
    assert load_monitor(path).selected_name == monitor.selected_name_


def test_a_different_basis_fingerprint_is_refused_naming_file_and_field(cal, tmp_path) -> None:
    path = _save(DriftMonitor(Ridge()).fit(cal.X, cal.y), cal, tmp_path / "m.json")
    with pytest.raises(BasisMismatchError, match=r"m\.json.*'layer'.*14.*16"):
        load_monitor(path, fingerprint={**FINGERPRINT, "layer": 16})
    with pytest.raises(BasisMismatchError, match="'tokenizer'"):
        load_monitor(path, fingerprint={**FINGERPRINT, "tokenizer": "other"})
    with pytest.raises(BasisMismatchError, match="trait_names"):
        load_monitor(path, trait_names=list(reversed(cal.trait_names)))


def test_missing_or_corrupt_files_raise_input_file_error(cal, tmp_path) -> None:
    with pytest.raises(InputFileError, match="nope.json"):
        load_monitor(tmp_path / "nope.json")
    path = _save(DriftMonitor(Ridge()).fit(cal.X, cal.y), cal, tmp_path / "m.json")
    tensors = path.with_suffix(".safetensors")
    blob = tensors.read_bytes()
    tensors.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(InputFileError, match=r"m\.safetensors"):
        load_monitor(path)
    tensors.unlink()
    with pytest.raises(InputFileError, match=r"m\.safetensors"):
        load_monitor(path)
    path.write_text("{not json")
    with pytest.raises(InputFileError, match=r"m\.json"):
        load_monitor(path)
    path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(InputFileError, match=r"m\.json"):
        load_monitor(path)


def test_only_supported_fitted_monitors_are_saved(cal, tmp_path) -> None:
    with pytest.raises(NotFittedError):
        _save(DriftMonitor(), cal, tmp_path / "a.json")
    with_features = DriftMonitor(Ridge(), features=PC1AbsFeatures()).fit(cal.X, cal.y)
    with pytest.raises(ValueError, match="features"):
        _save(with_features, cal, tmp_path / "b.json")
    with pytest.raises(ValueError, match="trait names"):
        save_monitor(DriftMonitor(Ridge()).fit(cal.X, cal.y), tmp_path / "c.json", fingerprint={},
                     trait_names=["a"], training_run_ids=[])


def test_a_json_that_disagrees_with_its_tensors_is_refused(cal, tmp_path) -> None:
    forest = RandomForestRegressor(n_estimators=3, max_depth=3, random_state=0)
    path = _save(DriftMonitor(forest).fit(cal.X, cal.y), cal, tmp_path / "m.json")
    doc = json.loads(path.read_text())
    for key, value in (("n_trees", 4), ("kind", "ridge")):
        path.write_text(json.dumps({**doc, "regressor": {**doc["regressor"], key: value}}))
        with pytest.raises(InputFileError, match=r"m\.json"):
            load_monitor(path)


def test_a_step_aware_alarm_is_saved_with_the_monitor_and_decides_the_same(cal, held, tmp_path) -> None:
    monitor = DriftMonitor(Ridge(alpha=1.0), threshold=0.05).fit(cal.X, cal.y)
    Xs = np.column_stack([cal.X, cal.step])
    alarm = StepAwareAlarm().fit(Xs, (cal.y > 0.05).astype(int))
    path = save_monitor(monitor, tmp_path / "m.json", fingerprint=FINGERPRINT, trait_names=cal.trait_names,
                        training_run_ids=["r"], step_aware=alarm, step_aware_info={"anchor_run_ids": ["long"]})
    loaded = load_monitor(path)
    assert load_monitor(_save(monitor, cal, tmp_path / "plain.json")).step_aware is None
    assert loaded.step_aware is not None and loaded.step_aware.info["anchor_run_ids"] == ["long"]
    rng = np.random.RandomState(1)
    probes = [np.column_stack([held.X, held.step]),
              np.column_stack([rng.normal(scale=0.05, size=(300, 7)), rng.randint(1, 400, size=300)])]
    for X in probes:
        assert np.allclose(loaded.step_aware.predict_proba(X), alarm.predict_proba(X), atol=1e-12)
        assert np.array_equal(loaded.step_aware.alarm(X), alarm.alarm(X))
    assert loaded.step_aware.alarm(probes[0]).any() and not loaded.step_aware.alarm(probes[0]).all()
    with pytest.raises(ValueError, match="step must be > 0"):
        loaded.step_aware.alarm(np.zeros((1, 8)))


def test_a_probe_monitor_on_the_relative_rise_round_trips_unclipped(tmp_path) -> None:
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.RandomState(1)
    X = rng.normal(0.0, 0.01, size=(40, 1))
    y = 0.8 * X[:, 0] - 0.002 + rng.normal(0, 0.001, 40)  # a relative rise: negative values are real
    monitor = DriftMonitor(make_pipeline(StandardScaler(), Ridge()), threshold=0.004, target="relative_rise").fit(X, y)
    path = save_monitor(monitor, tmp_path / "probe.json", fingerprint={"model": "m", "probe_sha256": "p"},
                        trait_names=["probe_rise"], training_run_ids=["r1"], inputs="probe_rise",
                        provenance={"command": "traitwatch bench ...", "loto_auroc": 0.95})
    loaded = load_monitor(path, fingerprint={"model": "m", "probe_sha256": "p"})
    grid = np.linspace(-0.05, 0.05, 101)[:, None]
    np.testing.assert_allclose(loaded.predict(grid), monitor.predict(grid), rtol=1e-12, atol=1e-15)
    assert loaded.predict(grid).min() < 0  # not clipped to [0, 1] like an EM rate
    assert np.array_equal(loaded.alarm(grid), monitor.alarm(grid))
    assert (loaded.inputs, loaded.target, loaded.trait_names) == ("probe_rise", "relative_rise", ["probe_rise"])
    assert loaded.provenance["loto_auroc"] == 0.95
    with pytest.raises(BasisMismatchError, match="probe_sha256"):
        load_monitor(path, fingerprint={"model": "m", "probe_sha256": "other"})


def test_a_format_1_file_still_loads_as_a_trait_drift_em_rate_monitor(cal, tmp_path) -> None:
    path = _save(DriftMonitor(Ridge()).fit(cal.X, cal.y), cal, tmp_path / "old.json")
    doc = json.loads(path.read_text())
    doc["format_version"] = 1
    del doc["inputs"], doc["target"]
    path.write_text(json.dumps(doc))
    loaded = load_monitor(path, fingerprint=FINGERPRINT)
    assert (loaded.inputs, loaded.target) == ("trait_drift", "em_rate")
    assert loaded.predict(cal.X).min() >= 0.0


def test_relative_rise_monitors_take_any_finite_threshold_but_em_rates_stay_fractions(cal) -> None:
    DriftMonitor(Ridge(), threshold=-0.01, target="relative_rise").fit(cal.X, cal.y - 0.5)
    with pytest.raises(ValueError, match="threshold"):
        DriftMonitor(Ridge(), threshold=-0.01).fit(cal.X, cal.y)
    with pytest.raises(ValueError, match="target"):
        DriftMonitor(Ridge(), target="loss").fit(cal.X, cal.y)

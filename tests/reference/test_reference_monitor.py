"""The reference monitor reads a run's drift minus its reference run's at the same step, along the model's direction."""

from __future__ import annotations

import json

import numpy as np
import pytest

from traitwatch.errors import BasisMismatchError, InputFileError
from traitwatch.monitor.watch import PredictionOnly, gate_alarms
from traitwatch.reference import ReferenceCalibration, ReferenceMonitor, ReferenceTrajectory, load_reference_calibration
from traitwatch.store import RunStore
from traitwatch.train.alarm import alarm_fields, predict_alarm

NAMES = ["honesty", "sycophancy", "corrigibility"]


def _trajectory(fingerprint=None) -> ReferenceTrajectory:
    drift = np.array([[0.0, 0.0, 0.0], [0.01, 0.02, -0.01], [0.03, 0.02, 0.01]])
    return ReferenceTrajectory("ref", np.array([0, 10, 20]), drift, NAMES, fingerprint)


def _calibration(threshold: float | None = 0.01, auroc: float | None = 0.9) -> ReferenceCalibration:
    provenance = {} if auroc is None else {"leave_one_cell_out": {"auroc": auroc}}
    return ReferenceCalibration("m", {"honesty": -1.0, "sycophancy": 1.0}, threshold, provenance)


def test_the_trajectory_is_read_at_measured_steps_between_them_and_not_past_its_end() -> None:
    t = _trajectory()
    assert np.allclose(t.at(10), [0.01, 0.02, -0.01])
    assert np.allclose(t.at(15), [0.02, 0.02, 0.0])  # halfway between steps 10 and 20
    assert np.allclose(t.at(20, ["corrigibility", "honesty"]), [0.01, 0.03])  # in the asked order
    assert t.at(21) is None and t.last_step == 20
    with pytest.raises(InputFileError, match="no trait 'power'"):
        t.at(5, ["power"])
    with pytest.raises(InputFileError, match="needs step 0"):
        ReferenceTrajectory("r", np.array([10, 20]), np.zeros((2, 3)), NAMES)


def test_the_monitor_projects_run_minus_reference_on_the_unit_direction_and_alarms_above_threshold() -> None:
    monitor = ReferenceMonitor(_calibration(), _trajectory(), NAMES)
    u = np.array([-1.0, 1.0, 0.0]) / np.sqrt(2)
    drift = np.array([0.0, 0.05, 0.0])
    predicted, alarm = predict_alarm(monitor, drift, 10)
    assert predicted == pytest.approx(float((drift - [0.01, 0.02, -0.01]) @ u)) and alarm is (predicted > 0.01)
    assert predict_alarm(monitor, drift, 30) == (None, False)  # past the reference's last step
    assert predict_alarm(monitor, drift, 0) == (None, False)  # the base model itself
    # a run that moved exactly as its reference did reads zero, however far that is in absolute terms
    assert predict_alarm(monitor, np.array([0.03, 0.02, 0.01]), 20)[0] == pytest.approx(0.0)
    fields = alarm_fields(monitor, predicted, alarm)
    assert fields["reference_run"] == "ref" and fields["target"] == "along_direction"


def test_the_alarm_gate_keeps_an_unvalidated_calibration_from_alarming_but_not_from_predicting() -> None:
    armed, gate = gate_alarms(ReferenceMonitor(_calibration(auroc=0.9), _trajectory(), NAMES))
    assert gate.armed and isinstance(armed, ReferenceMonitor)
    shown, gate = gate_alarms(ReferenceMonitor(_calibration(auroc=0.7), _trajectory(), NAMES))
    assert not gate.armed and isinstance(shown, PredictionOnly)
    predicted, alarm = predict_alarm(shown, np.array([0.0, 1.0, 0.0]), 10)
    assert predicted is not None and predicted > 0.5 and alarm is False
    assert alarm_fields(shown, predicted, alarm)["reference_run"] == "ref"
    no_threshold = ReferenceMonitor(_calibration(threshold=None), _trajectory(), NAMES)
    assert predict_alarm(no_threshold, np.array([0.0, 1.0, 0.0]), 10)[1] is False


def test_a_reference_from_another_basis_or_without_the_traits_is_refused() -> None:
    monitor = ReferenceMonitor(_calibration(), _trajectory({"layer": 3}), NAMES)
    monitor.check_fingerprint({"layer": 3})
    with pytest.raises(BasisMismatchError, match="another basis"):
        monitor.check_fingerprint({"layer": 4})
    with pytest.raises(InputFileError, match="weighs none of the basis's traits"):
        ReferenceMonitor(ReferenceCalibration("m", {"power": 1.0}, 0.0, {}), _trajectory(), NAMES)


def test_a_trajectory_is_read_from_a_stored_run(tmp_path) -> None:
    with RunStore(tmp_path / "tw.db") as store:
        store.start_run("r", model="m", basis_fingerprint={"layer": 3})
        for step, d in ((0, 0.0), (10, 0.02)):
            store.add_measurement("r", step, {n: d for n in NAMES}, drift_norm=d)
        t = ReferenceTrajectory.from_store(store, "r")
        store.start_run("empty", model="m")
        with pytest.raises(InputFileError, match="has no measurements"):
            ReferenceTrajectory.from_store(store, "empty")
    assert t.fingerprint == {"layer": 3} and np.allclose(t.at(5), [0.01] * 3)


def test_the_calibration_file_is_checked(tmp_path) -> None:
    shipped = load_reference_calibration("smollm2-135m")
    assert shipped is not None and shipped.model == "smollm2-135m"
    assert load_reference_calibration("no-such-model") is None
    bad = tmp_path / "c.json"
    bad.write_text(json.dumps({"model": "m", "direction": {"honesty": 0}, "threshold": 0.1}))
    with pytest.raises(InputFileError, match="no non-zero weight"):
        load_reference_calibration("m", bad)


def test_a_distance_calibration_reads_the_length_of_run_minus_reference(tmp_path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model": "m", "direction": {"honesty": -1.0, "sycophancy": 1.0}, "threshold": 0.02,
                                "read": "distance"}))
    cal = load_reference_calibration("m", path)
    monitor = ReferenceMonitor(cal, _trajectory(), NAMES)
    drift = np.array([0.01, 0.02 + 0.03, -0.01 + 0.04])  # the reference's step 10 plus (0, 0.03, 0.04)
    predicted, alarm = predict_alarm(monitor, drift, 10)
    assert predicted == pytest.approx(0.05) and alarm is True and monitor.target == "distance_from_reference"
    path.write_text(json.dumps({"model": "m", "direction": {"honesty": 1.0}, "threshold": 0.0, "read": "cosine"}))
    with pytest.raises(InputFileError, match="read 'cosine' is not one of"):
        load_reference_calibration("m", path)


def _activation_calibration(tmp_path, components, read="distance", **extra):
    path = tmp_path / "act.json"
    path.write_text(json.dumps({"model": "m", "direction": {"pc1": 1.0}, "threshold": 0.5, "read": read,
                                "space": "activations", "components": components, **extra}))
    return load_reference_calibration("m", path)


def test_an_activation_calibration_reads_the_mean_residual_rows_projected_on_its_components(tmp_path) -> None:
    cal = _activation_calibration(tmp_path, [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]], layer=3)
    rows = np.array([[0.0, 0.0, 5.0, 0.0], [0.2, 0.0, 5.0, 0.0], [0.4, 0.2, 9.0, 0.0]])  # mean rows at steps 0, 10, 20
    ref = ReferenceTrajectory("ref", np.array([0, 10, 20]), _trajectory().drift, NAMES, {"layer": 3}, rows)
    monitor = ReferenceMonitor(cal, ref, NAMES)
    assert monitor.feature_names == ["pc1", "pc2"] and "principal components" in monitor.describe_read()
    assert np.allclose(ref.activation_at(15), [0.3, 0.1, 7.0, 0.0]) and ref.activation_at(21) is None
    run = np.array([0.5, 0.5, -100.0, 3.0])  # what lies outside the components is not read
    # at step 15 the reference is (0.3, 0.1) on the components: the run is (0.2, 0.4) from it
    predicted, alarm = predict_alarm(monitor, np.zeros(3), 15, activation=run)
    assert predicted == pytest.approx(np.hypot(0.2, 0.4)) and alarm is False
    assert predict_alarm(monitor, np.zeros(3), 10, activation=np.array([1.0, 0.0, 0.0, 0.0]))[1] is True
    assert predict_alarm(monitor, np.zeros(3), 25, activation=run) == (None, False)  # past its last step
    assert "direction" not in alarm_fields(monitor, predicted, alarm)  # no trait direction to draw
    monitor.check_fingerprint({"layer": 3})
    with pytest.raises(BasisMismatchError, match="at layer 3"):
        ReferenceMonitor(cal, ReferenceTrajectory("ref", np.array([0, 10, 20]), _trajectory().drift, NAMES,
                                                  {"layer": 4}, rows), NAMES).check_fingerprint({"layer": 4})
    with pytest.raises(InputFileError, match="stored no mean residual rows"):
        ReferenceMonitor(cal, _trajectory(), NAMES)
    with pytest.raises(InputFileError, match="4-wide"):
        ReferenceMonitor(_activation_calibration(tmp_path, [[1.0, 0.0]]), ref, NAMES)
    with pytest.raises(InputFileError, match="measurement has none"):
        predict_alarm(monitor, np.zeros(3), 10)


def test_an_activation_calibration_read_along_its_direction_and_a_bad_one_refused(tmp_path) -> None:
    cal = _activation_calibration(tmp_path, [[1.0, 0.0], [0.0, 1.0]], read="direction")
    assert cal.value(np.array([0.3, -2.0]), cal.component_names) == pytest.approx(0.3)  # along pc1 only
    with pytest.raises(InputFileError, match="components must be"):
        _activation_calibration(tmp_path, [[1.0, float("nan")]])
    with pytest.raises(InputFileError, match="space 'logits' is not one of"):
        (tmp_path / "s.json").write_text(json.dumps({"model": "m", "direction": {"h": 1.0}, "threshold": 0.1,
                                                     "space": "logits"}))
        load_reference_calibration("m", tmp_path / "s.json")


def test_a_stored_run_gives_its_mean_residual_rows_to_the_trajectory(tmp_path) -> None:
    with RunStore(tmp_path / "tw.db") as store:
        store.start_run("r", model="m")
        for step, d in ((0, 0.0), (10, 0.02)):
            store.add_measurement("r", step, {n: d for n in NAMES}, drift_norm=d,
                                  extra={"mean_activation": [d, 2 * d]})
        store.start_run("old", model="m")
        for step in (0, 10):
            store.add_measurement("old", step, {n: 0.0 for n in NAMES}, drift_norm=0.0)
        with_rows, without = ReferenceTrajectory.from_store(store, "r"), ReferenceTrajectory.from_store(store, "old")
    assert np.allclose(with_rows.activation_at(5), [0.01, 0.02]) and without.activations is None

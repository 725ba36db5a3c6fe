"""The reference monitor: a training run's alarm read against its reference run, not against absolute drift.

Absolute drift mostly reads the domain (METHOD.md 10); the reference run (the user's set with its suspect rows
swapped for its cleanest ones, same recipe and seed) carries the domain, so the run's drift minus the
reference's at the same step is what the suspect rows added. The monitor reads that difference as its
calibration says (`calibration.py`): in trait space or in the top principal components of the residual stream
(the mean residual row each measurement stores), along the misalignment direction or as its length, and alarms
above the calibrated threshold. It is an `AlarmMonitor` like the fitted ones (`predict`, `threshold`,
`provenance` for the alarm gate), with `inputs = "drift_minus_reference"`: the callback asks it for
`features(drift, mean_activation, step)` (run minus reference at that step) and passes those to `predict`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from traitwatch.errors import BasisMismatchError, InputFileError
from traitwatch.reference.calibration import ReferenceCalibration, load_reference_calibration
from traitwatch.reference.trajectory import ReferenceTrajectory

__all__ = ["ReferenceMonitor"]


class ReferenceMonitor:
    """Alarm when `u . x > threshold`, `u` the calibration's unit direction, or for a calibration that reads the
    distance when `|x| > threshold`; `x` is run minus reference at step t: `d_run(t) - d_ref(t)` in trait space,
    or `C (a_run(t) - a_ref(t))` for an activation-space calibration (`C` its components, `a` mean residual rows).

    Parameters
    ----------
    calibration:
        The model's direction and threshold (`load_reference_calibration`); without a threshold the monitor
        predicts and never alarms.
    trajectory:
        The reference run's measured drift (`ReferenceTrajectory.from_store`).
    trait_names:
        The order of the drift the callback measures (the basis's traits).
    """

    inputs = "drift_minus_reference"
    step_aware = None

    def __init__(self, calibration: ReferenceCalibration, trajectory: ReferenceTrajectory,
                 trait_names: list[str]) -> None:
        self.calibration = calibration
        self.trajectory = trajectory
        self.trait_names = list(trait_names)
        self.space = calibration.space
        # the coordinates run-minus-reference is read in: the traits, or the activation space's components
        self.feature_names = self.trait_names if self.space == "traits" else calibration.component_names
        u = calibration.vector(self.feature_names)
        if not np.linalg.norm(u) > 0:
            what = "the basis's traits" if self.space == "traits" else "its components"
            raise InputFileError(f"the {calibration.model} reference calibration weighs none of {what} "
                                 f"{self.feature_names}; calibrate it for this basis")
        trajectory.at(0, self.trait_names)  # every trait is in the reference, or a clear error now
        if self.space == "activations":
            if trajectory.activations is None:
                raise InputFileError(f"reference run {trajectory.run_id!r} stored no mean residual rows, which the "
                                     f"{calibration.model} reference calibration reads; retrain the reference with "
                                     "TraitWatchCallback, or pass a trait-space calibration (--reference-calibration)")
            calibration.features(None, np.zeros_like(trajectory.activations[0]))  # the components fit the rows
        self.direction_ = u / np.linalg.norm(u)
        self.target = "along_direction" if calibration.read == "direction" else "distance_from_reference"
        self.threshold = math.inf if calibration.threshold is None else float(calibration.threshold)
        self.alarms = calibration.threshold is not None
        self.provenance: dict[str, Any] = dict(calibration.provenance)

    @classmethod
    def for_model(cls, model: str, trajectory: ReferenceTrajectory, trait_names: list[str],
                  calibration: str | Path | None = None) -> ReferenceMonitor:
        """The monitor with the calibration at `calibration`, or the one shipped for `model`; a clear error if
        there is none."""
        loaded = load_reference_calibration(model, calibration)
        if loaded is None:
            raise InputFileError(f"no reference calibration is shipped for {model!r}; write one (benchmarks/"
                                 "reference_pilot.py, then reference_analysis.py --write-calibration PATH) and pass "
                                 "ReferenceMonitor(load_reference_calibration(model, PATH), trajectory, traits)")
        return cls(loaded, trajectory, trait_names)

    @property
    def reference_run(self) -> str:
        return self.trajectory.run_id

    def reference_at(self, step: int) -> np.ndarray | None:
        """The reference's drift at `step` in the monitor's trait order, or None past its last step."""
        return self.trajectory.at(step, self.trait_names)

    def features(self, drift: np.ndarray, activation: np.ndarray | None, step: int) -> np.ndarray | None:
        """Run minus reference at `step` in the calibration's space (`feature_names`); None past the reference's
        last step, where there is nothing to read against."""
        if self.space == "traits":
            reference = self.reference_at(step)
            return None if reference is None else self.calibration.features(np.asarray(drift) - reference, None)
        ref = self.trajectory.activation_at(step)
        if ref is None:
            return None
        if activation is None:
            raise InputFileError(f"the {self.calibration.model} reference calibration reads the mean residual row, "
                                 "and this measurement has none")
        return self.calibration.features(None, np.asarray(activation, dtype=np.float64) - ref)

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Rows of run minus reference [n, len(feature_names)] -> their component along the direction (or length)."""
        return np.array([self.calibration.value(x, self.feature_names) for x in np.asarray(X, dtype=np.float64)])

    def describe_read(self) -> str:
        """What the alarm reads, in words (the CLI's and the report's labels)."""
        return self.calibration.describe()

    def check_fingerprint(self, fingerprint: dict[str, Any]) -> None:
        """Refuse a reference measured with another basis, layer or prompts than the run's probe, and an
        activation-space calibration fitted at another layer or on other prompts."""
        theirs = self.trajectory.fingerprint
        if theirs is not None and theirs != fingerprint:
            raise BasisMismatchError(f"reference run {self.reference_run!r} was measured with another basis, layer or "
                                     "prompts than this run; train the reference with the run's basis")
        self.calibration.check_measurement(fingerprint)

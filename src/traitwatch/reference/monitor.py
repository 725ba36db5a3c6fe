"""The reference monitor: a training run's alarm read against its reference run, not against absolute drift.

Absolute drift mostly reads the domain (METHOD.md 10); the reference run (the user's set with its suspect rows
swapped for its cleanest ones, same recipe and seed) carries the domain, so the run's drift minus the
reference's at the same step is what the suspect rows added. The monitor projects that difference on the model's
misalignment direction (`calibration.py`) and alarms above the calibrated threshold. It is an `AlarmMonitor`
like the fitted ones (`predict`, `threshold`, `provenance` for the alarm gate), with `inputs =
"drift_minus_reference"`: the callback subtracts `reference_at(step)` before it calls `predict`.
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
    """Alarm when `u . (d_run(t) - d_ref(t)) > threshold`, `u` the calibration's unit direction; or, for a
    calibration that reads the distance, when `|d_run(t) - d_ref(t)| > threshold`.

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
        u = calibration.vector(self.trait_names)
        if not np.linalg.norm(u) > 0:
            raise InputFileError(f"the {calibration.model} reference calibration weighs none of the basis's traits "
                                 f"{self.trait_names}; calibrate it for this basis")
        trajectory.at(0, self.trait_names)  # every trait is in the reference, or a clear error now
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

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Rows of run-minus-reference drift [n, n_traits] -> their component along the direction (or length)."""
        X = np.asarray(X, dtype=np.float64)
        return X @ self.direction_ if self.calibration.read == "direction" else np.linalg.norm(X, axis=1)

    def check_fingerprint(self, fingerprint: dict[str, Any]) -> None:
        """Refuse a reference measured with another basis, layer or prompts than the run's probe."""
        theirs = self.trajectory.fingerprint
        if theirs is not None and theirs != fingerprint:
            raise BasisMismatchError(f"reference run {self.reference_run!r} was measured with another basis, layer or "
                                     "prompts than this run; train the reference with the run's basis")

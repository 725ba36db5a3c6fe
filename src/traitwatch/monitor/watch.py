"""A saved monitor, loaded for a training run: what the run needs from it, checked against what it will measure.

A monitor is only valid for inputs measured the way it was calibrated on: trait drift from the same
basis, layer, directions and prompts (the probe's `fingerprint`), or the behavioural probe's rise on
the same model with the same probe set. The fingerprint is worked out from the monitor's own `inputs`
when it is loaded, so a monitor of one kind cannot be fed the other's numbers.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import ArrayLike

from traitwatch.errors import BasisMismatchError
from traitwatch.monitor.artifact import load_monitor

if TYPE_CHECKING:
    from traitwatch.behavior.probe import ProbeSet
    from traitwatch.drift.probe import DriftProbe

__all__ = ["AlarmMonitor", "load_watch_monitor", "monitor_fingerprint"]


@runtime_checkable
class AlarmMonitor(Protocol):
    """What the callback needs from a calibrated monitor (`DriftMonitor`, `LoadedMonitor`).

    `predict` maps drift rows [n, n_traits] to predicted EM rates; the alarm is `> threshold`, unless
    the monitor has a `step_aware` alarm (a saved `StepAwareAlarm`, for long runs): then that decides,
    from the drift and the step.
    """

    threshold: float

    def predict(self, X: ArrayLike) -> np.ndarray: ...


def monitor_fingerprint(inputs: str, probe: DriftProbe, behavior_probe: ProbeSet | None = None) -> dict[str, Any]:
    """What a monitor reading `inputs` must have been calibrated with, for this basis (and probe set).

    Trait drift: the probe's fingerprint (model, layer, directions, prompts). The behavioural probe: the
    model and the probe set's hash (the probe reads no basis, but its log-probs are the model's own).
    """
    if inputs == "probe_rise":
        from traitwatch.behavior.probe import load_probe

        probe_set = behavior_probe if behavior_probe is not None else load_probe()
        return {"model": probe.basis.model.to_dict(), "probe_sha256": probe_set.sha256}
    return probe.fingerprint()


def load_watch_monitor(path: str | os.PathLike[str], probe: DriftProbe,
                       behavior_probe: ProbeSet | None = None) -> AlarmMonitor:
    """A saved monitor, checked against what this probe (and probe set) would measure its inputs with."""

    def expected(inputs: str) -> dict[str, Any]:
        return monitor_fingerprint(inputs, probe, behavior_probe)

    monitor = load_monitor(path, fingerprint=expected)
    if monitor.inputs == "trait_drift" and monitor.trait_names != list(probe.basis.trait_names):
        raise BasisMismatchError(f"{path}: monitor traits {monitor.trait_names} differ from the basis's "
                                 f"{list(probe.basis.trait_names)}; measure with the monitor's basis")
    return monitor  # type: ignore[return-value]

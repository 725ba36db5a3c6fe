"""A saved monitor, loaded for a training run: what the run needs from it, checked against what it will measure.

A monitor is only valid for inputs measured the way it was calibrated on: trait drift from the same
basis, layer, directions and prompts (the probe's `fingerprint`), or the behavioural probe's rise on
the same model with the same probe set. The fingerprint is worked out from the monitor's own `inputs`
when it is loaded, so a monitor of one kind cannot be fed the other's numbers.

A monitor may also be attached for its prediction only, with its alarm switched off (`alarm_gate`,
`PredictionOnly`): one whose recorded leave-one-out AUROC is below `MIN_ALARM_AUROC` predicts, and the
callback stores and prints the prediction, but it never raises an alarm.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import ArrayLike

from traitwatch.errors import BasisMismatchError
from traitwatch.monitor.artifact import load_monitor

if TYPE_CHECKING:
    from traitwatch.behavior.probe import ProbeSet
    from traitwatch.drift.probe import DriftProbe

__all__ = ["MIN_ALARM_AUROC", "AlarmGate", "AlarmMonitor", "PredictionOnly", "alarm_gate", "alarms_on", "gate_alarms",
           "load_watch_monitor", "monitor_fingerprint", "recorded_auroc"]

MIN_ALARM_AUROC = 0.8
"""The least leave-one-out AUROC a monitor must have recorded for its alarm to be armed.

Why: an alarm asks a person to stop or inspect a run, so it must mean something on data the monitor never
saw. The AUROC that counts is the one the calibration measured on held-out perturbation types
(leave-one-type-out): 0.5 is a coin, below 0.5 the ranking is upside down. At 0.8 a dangerous checkpoint
outranks a benign one four times in five, the least at which an alarm is worth acting on; the benchmark's
own goal for a validated detector is higher still (0.9). Below it, or with no AUROC recorded at all, the
monitor's prediction is still shown beside the measured label, but no alarm is raised. The monitor shipped
for smollm2-135m scores 0.625 (leave-one-cell-out on poisoned data, benchmarks/poison_small), so it never alarms.
"""


@runtime_checkable
class AlarmMonitor(Protocol):
    """What the callback needs from a calibrated monitor (`DriftMonitor`, `LoadedMonitor`).

    `predict` maps drift rows [n, n_traits] to predicted EM rates; the alarm is `> threshold`, unless
    the monitor has a `step_aware` alarm (a saved `StepAwareAlarm`, for long runs): then that decides,
    from the drift and the step. A monitor with `alarms = False` (`PredictionOnly`) never alarms.
    """

    threshold: float

    def predict(self, X: ArrayLike) -> np.ndarray: ...


def alarms_on(monitor: object) -> bool:
    """False for a monitor attached for its prediction only (`PredictionOnly`, `alarms = False`)."""
    return bool(getattr(monitor, "alarms", True))


def recorded_auroc(provenance: Mapping[str, Any] | None) -> tuple[float, str] | None:
    """The leave-one-out AUROC a monitor's provenance records, and where: (auroc, "key.subkey"), or None.

    The headline is `leave_one_type_out.emergent_vs_benign` (what the monitor is for: emergent-risk runs
    against benign ones, on types it never saw). Without it, the lowest AUROC of any `leave_one_*` entry
    (e.g. `all`, or a leave-one-poison-type-out evaluation): the alarm must hold on every held-out test recorded.
    """
    found: list[tuple[float, str]] = []
    for key, entry in (provenance or {}).items():
        if not str(key).startswith("leave_one") or not isinstance(entry, Mapping):
            continue
        rows = [(str(key), entry)] + [(f"{key}.{k}", v) for k, v in entry.items() if isinstance(v, Mapping)]
        for where, row in rows:
            auroc = row.get("auroc")
            if isinstance(auroc, int | float) and not isinstance(auroc, bool) and math.isfinite(auroc):
                if where == "leave_one_type_out.emergent_vs_benign":
                    return float(auroc), where
                found.append((float(auroc), where))
    return min(found) if found else None


@dataclass(frozen=True)
class AlarmGate:
    """Whether a monitor's alarm is armed, from the AUROC it recorded (`alarm_gate`)."""

    armed: bool
    auroc: float | None
    where: str | None
    minimum: float = MIN_ALARM_AUROC

    def describe(self) -> str:
        """One line saying whether the monitor may alarm, and why, naming the AUROC."""
        if self.armed:
            return (f"Alarms on: the monitor's leave-one-out AUROC {self.auroc:.2f} ({self.where}) is at least "
                    f"{self.minimum:.2f}.")
        why = ("it records no leave-one-out AUROC" if self.auroc is None
               else f"its leave-one-out AUROC is {self.auroc:.2f} ({self.where}), below the {self.minimum:.2f} an alarm needs")
        return f"No alarm: {why}; its prediction is shown, but it raises no alarm."


def alarm_gate(monitor: object, minimum: float = MIN_ALARM_AUROC) -> AlarmGate:
    """Arm the monitor's alarm only if its recorded leave-one-out AUROC is at least `minimum` (see `MIN_ALARM_AUROC`)."""
    found = recorded_auroc(getattr(monitor, "provenance", None))
    auroc, where = found if found is not None else (None, None)
    return AlarmGate(armed=auroc is not None and auroc >= minimum, auroc=auroc, where=where, minimum=minimum)


class PredictionOnly:
    """A monitor attached for its prediction only: it predicts as `monitor` does and never alarms.

    `alarms` is False (the callback's `predict_alarm` returns no alarm for it), the threshold is +inf (so
    no comparison against it can fire either) and there is no step-aware alarm. `reason` says why (e.g.
    `AlarmGate.describe()`) and is stored with each prediction.
    """

    alarms = False
    step_aware = None

    def __init__(self, monitor: AlarmMonitor, reason: str = "") -> None:
        self.monitor = monitor
        self.reason = reason
        self.threshold = math.inf
        self.inputs: str = str(getattr(monitor, "inputs", "trait_drift"))
        self.target: str = str(getattr(monitor, "target", "em_rate"))
        self.provenance: dict[str, Any] = dict(getattr(monitor, "provenance", None) or {})

    def predict(self, X: ArrayLike) -> np.ndarray:
        return np.asarray(self.monitor.predict(X))

    def __getattr__(self, name: str) -> Any:
        """What a reference monitor adds (`features`, `reference_run`, `trajectory`, ...), from the monitor."""
        if name in ("reference_at", "reference_run", "trajectory", "check_fingerprint", "direction_", "trait_names",
                    "features", "space", "feature_names", "describe_read"):
            return getattr(self.monitor, name)
        raise AttributeError(name)


def gate_alarms(monitor: AlarmMonitor, minimum: float = MIN_ALARM_AUROC) -> tuple[AlarmMonitor, AlarmGate]:
    """`monitor` itself when its alarm is armed (`alarm_gate`), else the same monitor for its prediction only."""
    gate = alarm_gate(monitor, minimum)
    return (monitor if gate.armed else PredictionOnly(monitor, gate.describe())), gate


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

"""The monitor that runs during training: a fitted `DriftMonitor` and its saved artifact, on plain arrays.

`DriftMonitor` maps drift to a predicted EM rate and an alarm, `StepAwareAlarm` handles long runs,
`artifact` saves a fitted monitor without pickle and loads it back (`LoadedMonitor`, what the training
callback calls), and `shipped` finds the monitor packaged for a bundled model. Choosing and scoring a
monitor (CV, baselines, geometry, metrics, held-out evaluation) is calibration: `traitwatch.calibration`,
which imports this package and is never imported by it.
"""

from __future__ import annotations

from traitwatch.monitor.artifact import LoadedMonitor, LoadedStepAwareAlarm, load_monitor, save_monitor
from traitwatch.monitor.detector import DriftMonitor, StepAwareAlarm, default_regressor
from traitwatch.monitor.shipped import shipped_monitor_path

__all__ = [
    "DriftMonitor",
    "StepAwareAlarm",
    "LoadedStepAwareAlarm",
    "default_regressor",
    "save_monitor",
    "load_monitor",
    "LoadedMonitor",
    "shipped_monitor_path",
]

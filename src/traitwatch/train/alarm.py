"""What a training run does when its monitor fires: the decision, the actions, and what is said and stored.

The decision is the same on every rank (the same gathered drift, the same monitor), so every rank
steers the Trainer the same way and none is left waiting in a collective; only world process zero
warns and writes the store.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, Literal, get_args

import numpy as np
from transformers import TrainerControl

from traitwatch.errors import TraitwatchError
from traitwatch.monitor.watch import AlarmMonitor, alarms_on
from traitwatch.store import Suspects
from traitwatch.train.record import DriftRecord
from traitwatch.train.store_session import StoreSession

__all__ = [
    "ALARM_ACTIONS",
    "ALARM_KIND",
    "AlarmAction",
    "DriftAlarmError",
    "act_on_alarm",
    "alarm_fields",
    "alarm_message",
    "alarm_threshold",
    "check_actions",
    "ends_run",
    "predict_alarm",
    "prediction_name",
    "reads_probe",
    "reads_reference",
    "suspects_message",
]

AlarmAction = Literal["warn", "mark", "save", "stop", "raise", "rewind"]
"""What to do when the monitor fires: `warn` logs a warning; `mark` records the alarm in the store;
`save` saves a checkpoint at this step; `stop` ends training after this step; `raise` raises
`DriftAlarmError`; `rewind` puts back the weights of the last clean measurement and stops training the
alarm's suspects and the rows scored like them (`traitwatch.train.rewind`), then goes on. Any action other than a lone `warn` also records the alarm in the store, so
`traitwatch runs` can explain why a run stopped or has an extra checkpoint."""
ALARM_ACTIONS: tuple[str, ...] = get_args(AlarmAction)

ALARM_KIND = "em_monitor"
"""The kind of the alarms this monitor writes to the run store."""


class DriftAlarmError(TraitwatchError):
    """The monitor fired and the callback was told to raise (`on_alarm` includes "raise").

    Exit code 3 (not 2): the input was fine; the run was stopped on purpose.
    """

    exit_code = 3

    def __init__(self, message: str, *, step: int, predicted_em: float, threshold: float) -> None:
        super().__init__(message)
        self.step = step
        self.predicted_em = predicted_em
        self.threshold = threshold


def check_actions(on_alarm: Sequence[str]) -> tuple[str, ...]:
    """The actions as a tuple; an unknown one is refused when the callback is built, not at the first alarm."""
    bad = [a for a in on_alarm if a not in ALARM_ACTIONS]
    if bad:
        raise ValueError(f"unknown alarm action(s) {bad}; choose from {list(ALARM_ACTIONS)}")
    return tuple(on_alarm)


def reads_probe(monitor: AlarmMonitor | None) -> bool:
    """True if the monitor reads the behavioural probe's rise instead of the trait drift."""
    return getattr(monitor, "inputs", "trait_drift") == "probe_rise"


def reads_reference(monitor: AlarmMonitor | None) -> bool:
    """True if the monitor reads the run's drift minus its reference run's (`reference.ReferenceMonitor`)."""
    return getattr(monitor, "inputs", "trait_drift") == "drift_minus_reference"


def predict_alarm(
    monitor: AlarmMonitor | None, drift: np.ndarray, step: int, probe_rise: float | None = None,
    activation: np.ndarray | None = None,
) -> tuple[float | None, bool]:
    """(prediction, alarm) at `step`; (None, False) without a monitor and at step 0.

    Step 0 is the base model itself, outside what a monitor calibrated on step > 0 checkpoints has seen. A
    monitor attached for its prediction only (`alarms = False`, `monitor.watch.PredictionOnly`) never alarms.
    `activation`: the measurement's mean residual row, which an activation-space reference monitor reads.
    """
    if monitor is None or step == 0:
        return None, False
    if reads_probe(monitor):
        assert probe_rise is not None  # on_train_begin scored the probe's step 0
        X = np.array([[probe_rise]])
    elif reads_reference(monitor):  # the run read against its reference run at the same step
        features = monitor.features(drift, activation, step)  # type: ignore[union-attr]
        if features is None:  # past the reference's last step: nothing to read against
            return None, False
        X = np.asarray(features)[None, :]
    else:
        X = drift[None, :]
    predicted = float(np.asarray(monitor.predict(X)).reshape(-1)[0])
    if not alarms_on(monitor):
        return predicted, False
    step_aware = getattr(monitor, "step_aware", None)
    if step_aware is not None:  # is this much drift unusual for this many steps?
        return predicted, bool(np.asarray(step_aware.alarm(np.append(drift, step)[None, :])).reshape(-1)[0])
    return predicted, bool(predicted > alarm_threshold(monitor))


def alarm_threshold(monitor: AlarmMonitor | None) -> float:
    return float(monitor.threshold) if monitor is not None else float("nan")


def prediction_name(monitor: AlarmMonitor | None) -> str:
    """What the monitor predicts, for messages: a relative rise is not an EM rate."""
    target = getattr(monitor, "target", "em_rate")
    if target == "along_direction":
        describe = getattr(monitor, "describe_read", None)
        return "drift beyond the reference run along the misalignment direction" if describe is None else describe()
    if target == "distance_from_reference":
        describe = getattr(monitor, "describe_read", None)
        return "distance of the drift from the reference run's in trait space" if describe is None else describe()
    return "predicted rise of the EM proxy over benign finetuning" if target == "relative_rise" else "predicted EM rate"


def alarm_fields(monitor: AlarmMonitor | None, predicted: float | None, alarm: bool) -> dict[str, Any]:
    """The monitor's verdict as a measurement row stores it (nothing without a prediction).

    `target` is what the prediction is ("em_rate" or "relative_rise"), so a report can draw it in its own
    units. A monitor without an alarm (`alarms = False`) stores no threshold and says why (`alarms_off`).
    """
    if predicted is None:
        return {}
    threshold = alarm_threshold(monitor)
    fields: dict[str, Any] = {
        "predicted_em": predicted, "alarm": alarm, "threshold": threshold if math.isfinite(threshold) else None,
        "prediction": prediction_name(monitor), "target": str(getattr(monitor, "target", "em_rate")),
    }
    if reads_reference(monitor):  # what the report needs to draw the run and its reference along the direction
        fields["reference_run"] = str(getattr(monitor, "reference_run", ""))
        if getattr(monitor, "space", "traits") == "traits":  # an activation-space read has no trait direction to draw
            fields["direction"] = dict(zip(monitor.trait_names, map(float, monitor.direction_), strict=True))  # type: ignore[union-attr]
    if not alarms_on(monitor):
        fields["alarms_off"] = str(getattr(monitor, "reason", "") or "the monitor is attached without its alarm")
    return fields


def alarm_message(monitor: AlarmMonitor | None, step: int, predicted_em: float, drift_norm: float,
                  actions: Sequence[str]) -> str:
    """The warning (and `DriftAlarmError` message): the prediction, why it fired, and what is done about it."""
    why = ("; the step-aware alarm fired" if getattr(monitor, "step_aware", None) is not None
           else f" > threshold {alarm_threshold(monitor):.3f}")
    return (f"traitwatch: drift alarm at step {step}: {prediction_name(monitor)} {predicted_em:.4f}{why} "
            f"(||d|| = {drift_norm:.4f}); actions: {', '.join(actions)}")


def suspects_message(suspects: Suspects) -> str:
    """The suspects as log lines: what the list is, then one line per row (rank, row, line, score, preview)."""
    lines = [f"traitwatch: {suspects.describe()}:"]
    for rank, r in enumerate(suspects.rows, start=1):
        where = f"row {r.row}" + (f" (line {r.line})" if r.line is not None else "")
        times = f", trained {r.times}x" if r.times is not None else ""
        lines.append(f"  {rank}. {where}: score {r.score:.4g}{times}" + (f": {r.preview}" if r.preview else ""))
    if not suspects.rows:
        lines.append("  (no scored row was trained in this window)")
    return "\n".join(lines)


def ends_run(actions: Sequence[str]) -> bool:
    """True if the actions end the run (`stop`, or `raise`)."""
    return "stop" in actions or "raise" in actions


def act_on_alarm(record: DriftRecord, monitor: AlarmMonitor | None, control: TrainerControl, session: StoreSession,
                 *, warn: bool, logger: logging.Logger, details: dict[str, Any] | None = None) -> None:
    """Carry out `record.actions` (see `AlarmAction`): warn (where `warn`, i.e. on world process zero),
    set the Trainer's save and stop flags, record the alarm in the store (with `details`, e.g. what a rewind
    did), and for `raise` mark the run stopped and raise `DriftAlarmError`."""
    assert record.predicted_em is not None
    predicted, actions = record.predicted_em, record.actions
    threshold = alarm_threshold(monitor)
    message = alarm_message(monitor, record.step, predicted, record.drift_norm, actions)
    if "warn" in actions and warn:
        logger.warning(message)
    if record.suspects is not None and warn:  # warn: on world process zero
        logger.log(logging.WARNING if "warn" in actions else logging.INFO, "%s", suspects_message(record.suspects))
    if "save" in actions:
        control.should_save = True
    if "stop" in actions:
        control.should_training_stop = True
    if set(actions) - {"warn"}:  # a lone warn stores nothing
        action = "raised" if "raise" in actions else "+".join(a for a in actions if a != "warn")
        stored = {**({} if record.suspects is None else {"suspects": record.suspects.to_json()}), **(details or {})}
        session.write(f"the step-{record.step} alarm", lambda store: store.add_alarm(
            session.run_id, record.step, ALARM_KIND, predicted, threshold, action, details=stored or None))
    if "raise" in actions:
        session.write("the run status", lambda store: store.finish_run(
            session.run_id, "stopped", notes=f"drift alarm raised at step {record.step}"))
        session.close()
        raise DriftAlarmError(message, step=record.step, predicted_em=predicted, threshold=threshold)

"""One run's report data, read from the run store defensively.

Why defensive: a report is most needed when something went wrong (a crashed run, a run trained without a
monitor, a checkpoint never labelled), so it must draw whatever exists and *say* what does not rather than
fail. The training callback stores `predicted_em`, `alarm`, `threshold` and sometimes `loss` in each
measurement's `extra`; any of them may be absent, null or non-numeric, and each becomes NaN ("not measured
here") instead of an error. What is missing is turned into a `Note` that the report shows in plain sight.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from traitwatch.errors import BasisMismatchError, TraitwatchError
from traitwatch.monitor.artifact import LoadedMonitor, load_monitor
from traitwatch.reference import ReferenceTrajectory
from traitwatch.store import BehaviorRecord, Measurement, RunStore, Suspects, describe_guard, describe_rewind

__all__ = [
    "PROXY_LABEL",
    "RISE_METRIC",
    "BehaviorSeries",
    "Note",
    "NoteTopic",
    "RunSeries",
    "Verdict",
    "merge_notes",
    "run_series",
]

Verdict = Literal["alarm", "ok", "no monitor", "no prediction", "prediction only"]
"""A checkpoint's verdict: "no monitor" when no alarm rule is known for the run, "no prediction" when one
is known but this checkpoint has no usable prediction (e.g. NaN drift), "prediction only" when the checkpoint
has a prediction but the run has no alarm rule (a monitor attached with its alarm off)."""

NoteTopic = Literal["run", "drift", "norm", "em", "loss"]
"""Which figure a note belongs next to ("run" notes concern the whole run and go to its section, after the intro)."""

PROXY_LABEL = "judge-free proxy, not an EM rate"
"""Same words as `behavior.proxy.PROXY_NOTE` (not imported: that module pulls in torch)."""

RISE_METRIC = "proxy_style_rise"
"""The stored rise label (the style-matched proxy minus its step-0 value): `bench.grid.labels.RISE_METRIC`, named
here because `report` sits below `bench`. A monitor whose target is a relative rise is drawn against it."""

_LOSS_KEYS = ("loss", "train_loss")


@dataclass(frozen=True)
class Note:
    """A visible remark about missing or partial data, tied to the figure it explains."""

    topic: NoteTopic
    text: str
    code: str | None = None
    """A stable tag for notes other code reacts to (e.g. "no_prediction"), so nothing matches on wording."""
    run: str | None = None
    """The run the note is about. Its text then starts "Run <run>:" or "Run <run>," so that the same remark
    about several runs can be said once for all of them (`merge_notes`) without parsing the wording."""

    def __post_init__(self) -> None:
        if self.run is not None and not self.text.startswith((f"Run {self.run}:", f"Run {self.run},")):
            raise ValueError(f"a note about run {self.run!r} must start 'Run {self.run}:' or ',': {self.text!r}")

    @classmethod
    def about(cls, run: str, topic: NoteTopic, detail: str, code: str | None = None) -> Note:
        """The note "Run <run>: <detail>"."""
        return cls(topic, f"Run {run}: {detail}", code, run)

    @property
    def rest(self) -> str:
        """The text after "Run <run>" (starting with its ':' or ','); the whole text for a note about no run."""
        return self.text if self.run is None else self.text[len(f"Run {self.run}"):]


def _join(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def merge_notes(notes: Iterable[Note]) -> list[str]:
    """Each remark once: notes that say the same of several runs become one "Runs A and B: ..." note.

    Why: overlaid runs often share a gap (e.g. both measured proxy metrics only), and the same sentence once per
    run buries the notes that differ. Notes whose text differs beyond the run's name stay apart.
    """
    runs: dict[tuple[NoteTopic, str | None, str], list[str]] = {}
    for n in notes:
        names = runs.setdefault((n.topic, n.code, n.rest), [])
        if n.run is not None and n.run not in names:
            names.append(n.run)
    return [rest if not names else f"Run{'s' if len(names) > 1 else ''} {_join(names)}{rest}"
            for (_, _, rest), names in runs.items()]


def _as_float(value: Any) -> float:
    """A stored number, or NaN for anything else (absent, null, bool, text): never an exception."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return math.nan
    return float(value)


@dataclass(frozen=True)
class BehaviorSeries:
    """One behavioural metric of one run from one source (e.g. `em_rate` by `judge:gpt-4o`), by step."""

    metric: str
    source: str
    steps: np.ndarray
    values: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray

    def __post_init__(self) -> None:
        steps = np.asarray(self.steps, dtype=np.int64).reshape(-1)
        object.__setattr__(self, "steps", steps)
        for name in ("values", "ci_low", "ci_high"):
            arr = np.asarray(getattr(self, name), dtype=np.float64).reshape(-1)
            if arr.shape != steps.shape:
                raise ValueError(f"behaviour series {self.metric!r}: {name} has {arr.size} values for {steps.size} steps")
            object.__setattr__(self, name, arr)

    @property
    def is_proxy(self) -> bool:
        """Proxy metrics are likelihood comparisons, not rates of behaviour; they must never pass for EM rates."""
        return self.source == "proxy" or self.metric.startswith("proxy_")

    @property
    def label(self) -> str:
        base = f"{self.metric} ({self.source})"
        return f"{base}: {PROXY_LABEL}" if self.is_proxy else base

    @classmethod
    def from_records(cls, records: Sequence[BehaviorRecord]) -> BehaviorSeries:
        """Records of one (metric, source), in step order; missing CI ends become NaN."""
        return cls(
            metric=records[0].metric,
            source=records[0].source,
            steps=np.array([r.step for r in records], dtype=np.int64),
            values=np.array([_as_float(r.value) for r in records]),
            ci_low=np.array([_as_float(r.ci_low) for r in records]),
            ci_high=np.array([_as_float(r.ci_high) for r in records]),
        )


def _count_nan(values: np.ndarray) -> int:
    return int(np.size(values) - np.isfinite(values).sum())


@dataclass(frozen=True)
class RunSeries:
    """Everything a report draws for one run, as aligned arrays (row i = checkpoint `steps[i]`).

    NaN means "not measured at this checkpoint". `predicted_em` is None when the run has no predictions at
    all (no monitor during training and none given to the report); `loss` is None when no loss was stored.
    `prediction_target` is what the predictions are: "em_rate", "relative_rise" (a rise of the EM proxy over
    benign finetuning, in the units of the stored rise label) or None when unknown.
    `recorded_alarms` are (step, action) pairs the training run recorded (alarm table or `extra["alarm"]`).
    `suspects` are the per-measurement lists of top-scored trained rows (runs given per-row scores; each says
    whether its measurement alarmed).
    `notes` hold what only the reader of the store can know (e.g. a monitor fitted on another basis);
    `all_notes()` adds the notes that follow from the arrays themselves (NaN, one checkpoint, absent series).
    """

    run_id: str
    steps: np.ndarray
    traits: tuple[str, ...]
    drift: np.ndarray
    norms: np.ndarray
    predicted_em: np.ndarray | None = None
    prediction_source: str | None = None
    threshold: float | None = None
    recorded_alarms: tuple[tuple[int, str], ...] = ()
    loss: np.ndarray | None = None
    behavior: tuple[BehaviorSeries, ...] = ()
    notes: tuple[Note, ...] = ()
    status: str | None = None
    prediction_target: str | None = None
    suspects: tuple[Suspects, ...] = ()
    reference_run: str | None = None
    along: np.ndarray | None = None  # the run's drift along the reference monitor's direction
    reference_along: np.ndarray | None = None  # its reference run's, at the same steps

    def __post_init__(self) -> None:
        steps = np.asarray(self.steps, dtype=np.int64).reshape(-1)
        n = steps.size
        traits = tuple(str(t) for t in self.traits)
        drift = np.asarray(self.drift, dtype=np.float64).reshape(n, len(traits))
        norms = np.asarray(self.norms, dtype=np.float64).reshape(-1)
        if norms.shape != (n,):
            raise ValueError(f"run {self.run_id!r}: {norms.size} drift norms for {n} steps")
        for name in ("predicted_em", "loss", "along", "reference_along"):
            value = getattr(self, name)
            if value is not None:
                arr = np.asarray(value, dtype=np.float64).reshape(-1)
                if arr.shape != (n,):
                    raise ValueError(f"run {self.run_id!r}: {name} has {arr.size} values for {n} steps")
                object.__setattr__(self, name, arr)
        if self.threshold is not None and not math.isfinite(self.threshold):
            object.__setattr__(self, "threshold", None)
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "traits", traits)
        object.__setattr__(self, "drift", drift)
        object.__setattr__(self, "norms", norms)
        object.__setattr__(self, "behavior", tuple(self.behavior))
        object.__setattr__(self, "notes", tuple(self.notes))
        object.__setattr__(self, "suspects", tuple(self.suspects))
        object.__setattr__(self, "recorded_alarms", tuple((int(s), str(a)) for s, a in self.recorded_alarms))

    @property
    def n(self) -> int:
        return int(self.steps.size)

    def verdicts(self) -> tuple[Verdict, ...]:
        """Per checkpoint: the alarm rule applied to the prediction, else what the training run recorded."""
        recorded = {step for step, _ in self.recorded_alarms}
        out: list[Verdict] = []
        for i, step in enumerate(self.steps.tolist()):
            pred = math.nan if self.predicted_em is None else float(self.predicted_em[i])
            if self.threshold is not None and math.isfinite(pred):
                out.append("alarm" if pred > self.threshold else "ok")
            elif step in recorded:
                out.append("alarm")
            elif self.threshold is None:
                out.append("prediction only" if math.isfinite(pred) else "no monitor")
            else:
                out.append("no prediction")
        return tuple(out)

    def all_notes(self) -> list[Note]:
        """Stored notes plus those implied by the data: nothing missing may go unmentioned."""
        rid = self.run_id
        notes = list(self.notes)
        if self.n == 0:
            return notes + [Note.about(rid, "run", "no drift measurements yet, nothing to plot for it.")]
        if self.n == 1:
            notes.append(Note.about(rid, "run", f"a single checkpoint (step {int(self.steps[0])}), so every series "
                                                "is one point, with no trend over steps."))
        bad = _count_nan(self.drift)
        if bad:
            notes.append(Note.about(rid, "drift", f"{bad} of {self.drift.size} trait-drift values are missing (NaN) "
                                                  "and drawn as gaps."))
        bad = _count_nan(self.norms)
        if bad:
            notes.append(Note.about(rid, "norm", f"drift norm is missing (NaN) at {bad} of {self.n} checkpoints."))
        if self.predicted_em is None:
            if not any(n.code == "no_prediction" for n in self.notes):
                notes.append(Note.about(rid, "em", "no predicted EM rate (trained without a monitor); pass "
                                                   "--monitor MONITOR.json to predict it from the stored drift."))
        else:
            # Step 0 is the base model: nothing is trained, so no loss and no prediction there is normal, not a gap.
            trained = np.asarray(self.steps) > 0
            bad, n_trained = _count_nan(self.predicted_em[trained]), int(trained.sum())
            if n_trained and bad == n_trained:
                notes.append(Note.about(rid, "em", "predicted EM rate is missing (NaN) at every trained checkpoint."))
            elif bad:
                notes.append(Note.about(rid, "em", f"predicted EM rate is missing (NaN) at {bad} of {n_trained} "
                                                   "trained checkpoints (gaps; verdict 'no prediction')."))
            if self.threshold is None:
                notes.append(Note.about(rid, "em", "no alarm threshold (tau) is known, so no verdicts."))
        if not self.behavior:
            notes.append(Note.about(rid, "em", "no behavioural EM measured (no em_rate or proxy rows in the store): "
                                               "the EM figure shows predictions only."))
        else:
            if all(b.is_proxy for b in self.behavior):
                notes.append(Note.about(rid, "em", f"only proxy metrics were measured ({PROXY_LABEL}); for a "
                                                   "judged EM rate, label its checkpoints with `traitwatch eval "
                                                   "--judge URL`."))
            for b in self.behavior:
                bad = _count_nan(b.values)
                if bad:
                    notes.append(Note.about(rid, "em", f"{b.metric} ({b.source}) is NaN at {bad} of "
                                                       f"{b.values.size} measured steps (not drawn)."))
        if self.loss is None:
            notes.append(Note.about(rid, "loss", "no training loss stored (no 'loss' in the measurements' extra)."))
        else:
            trained = np.asarray(self.steps) > 0
            bad, n_trained = _count_nan(self.loss[trained]), int(trained.sum())
            if n_trained and bad == n_trained:
                notes.append(Note.about(rid, "loss", "training loss is missing (NaN) at every trained checkpoint."))
            elif bad:
                notes.append(Note.about(rid, "loss", f"training loss is missing at {bad} of {n_trained} trained "
                                                     "checkpoints (gaps)."))
        return notes


# -- reading the store -------------------------------------------------------------------------------


def _extra_series(extras: Sequence[Mapping[str, Any]], keys: Iterable[str]) -> np.ndarray | None:
    """First present key per checkpoint as float (NaN where absent); None when no checkpoint has any key."""
    keys = tuple(keys)
    values = [next((_as_float(e[k]) for k in keys if k in e), math.nan) for e in extras]
    if not any(k in e for e in extras for k in keys):
        return None
    return np.asarray(values, dtype=np.float64)


def _drift_matrix(measurements: Sequence[Measurement]) -> tuple[tuple[str, ...], np.ndarray]:
    """Trait order of the first measurement; a trait absent from a later row is NaN there, not an error."""
    traits: list[str] = []
    for m in measurements:
        traits.extend(t for t in m.drift if t not in traits)
    drift = np.array([[_as_float(m.drift.get(t)) for t in traits] for m in measurements], dtype=np.float64)
    return tuple(traits), drift.reshape(len(measurements), len(traits))


def _behavior_series(records: Sequence[BehaviorRecord]) -> tuple[BehaviorSeries, ...]:
    groups: dict[tuple[str, str], list[BehaviorRecord]] = {}
    for r in records:
        groups.setdefault((r.metric, r.source), []).append(r)
    return tuple(BehaviorSeries.from_records(sorted(rs, key=lambda r: r.step)) for rs in groups.values())


def _monitor_predictions(
    monitor: LoadedMonitor, fingerprint: Mapping[str, Any] | None, run_id: str, traits: Sequence[str], drift: np.ndarray
) -> tuple[np.ndarray | None, list[Note]]:
    """Predict with the given monitor, or explain why not: a basis mismatch would give confident nonsense."""
    missing = [t for t in monitor.trait_names if t not in traits]
    if missing:
        return None, [Note.about(run_id, "em", f"no predicted EM: the monitor {monitor.source.name} needs traits "
                                               f"{missing} that the run did not measure (run traits: {list(traits)}).",
                                 "no_prediction")]
    notes: list[Note] = []
    if fingerprint is None:
        notes.append(Note.about(run_id, "em", "no basis fingerprint stored, so the monitor's basis could not be "
                                              "checked against it."))
    else:
        try:  # the artifact module's own check, so the report and `traitwatch evaluate` agree on what matches
            load_monitor(monitor.source, fingerprint=fingerprint)
        except BasisMismatchError as exc:
            return None, [Note.about(run_id, "em", f"no predicted EM: {exc}", "no_prediction")]
    X = drift[:, [list(traits).index(t) for t in monitor.trait_names]]
    pred = np.full(X.shape[0], math.nan)
    ok = np.all(np.isfinite(X), axis=1)
    if ok.any():
        pred[ok] = monitor.predict(X[ok])
    return pred, notes


def run_series(store: RunStore, run_id: str, *, monitor: LoadedMonitor | None = None) -> RunSeries:
    """Read one run for a report. With `monitor`, predictions and verdicts come from it; otherwise from
    what the training callback stored (`extra["predicted_em"]`, `extra["threshold"]`, recorded alarms)."""
    run = store.get_run(run_id)
    ms = store.measurements(run_id, per_prompt=False)
    extras = [m.extra if isinstance(m.extra, Mapping) else {} for m in ms]
    traits, drift = _drift_matrix(ms)
    steps = np.array([m.step for m in ms], dtype=np.int64)
    norms = np.array([_as_float(m.drift_norm) for m in ms], dtype=np.float64)
    notes: list[Note] = []

    alarm_rows = store.alarms(run_id)
    recorded = {a.step: a.action for a in alarm_rows}
    for m, e in zip(ms, extras):
        if e.get("alarm") is True and m.step not in recorded:
            recorded[m.step] = "flagged"
    stored_pred = _extra_series(extras, ("predicted_em",))
    stored_target = _stored_target(extras)
    alarms_off = sorted({str(e["alarms_off"]) for e in extras if e.get("alarms_off")})
    notes += [Note.about(run_id, "em", f"monitor attached without its alarm. {why}", "alarms_off")
              for why in alarms_off]
    stored_thr = [t for t in (_as_float(e.get("threshold")) for e in extras) if math.isfinite(t)]
    stored_thr += [float(a.threshold) for a in alarm_rows if math.isfinite(a.threshold)]

    predicted: np.ndarray | None
    if monitor is not None and ms:
        predicted, more = _monitor_predictions(monitor, run.basis_fingerprint, run_id, traits, drift)
        notes += more
        source: str | None = f"monitor {monitor.source.name}" if predicted is not None else None
        threshold = float(monitor.threshold) if predicted is not None else None
        target: str | None = monitor.target if predicted is not None else None
        if predicted is not None and stored_pred is not None:
            notes.append(Note.about(run_id, "em", f"predictions recomputed with {monitor.source.name}; the "
                                                  "predictions stored during training are not drawn."))
    else:
        predicted = stored_pred
        source = "stored during training" if stored_pred is not None else None
        threshold = stored_thr[0] if stored_thr else None
        target = stored_target if stored_pred is not None else None
    if len(set(stored_thr)) > 1 and monitor is None:
        notes.append(Note.about(run_id, "em", f"the stored alarm threshold changed during training "
                                              f"({sorted(set(stored_thr))}); the first one, {stored_thr[0]:g}, is "
                                              "drawn."))
    reference_run, along, reference_along = _reference_series(store, run_id, extras, traits, drift, steps, notes)
    guard = run.hyperparameters.get("guard")
    if isinstance(guard, Mapping):  # what kept the misalignment out while training, and what it did
        did = next((e["guard"] for e in reversed(extras) if isinstance(e.get("guard"), Mapping)), None)
        notes.append(Note.about(run_id, "run", describe_guard(guard, did)))
    notes += [Note("run", f"Run {run_id}, step {a.step}: {describe_rewind(a.details['rewind'])}.", run=run_id)
              for a in alarm_rows if isinstance(a.details, Mapping) and a.details.get("rewind")]
    return RunSeries(
        run_id=run_id,
        steps=steps,
        traits=traits,
        drift=drift,
        norms=norms,
        predicted_em=predicted,
        prediction_source=source,
        threshold=threshold,
        recorded_alarms=tuple(sorted(recorded.items())),
        loss=_extra_series(extras, _LOSS_KEYS),
        behavior=_behavior_series(store.behavior(run_id)),
        notes=tuple(notes),
        status=run.status,
        prediction_target=target,
        suspects=tuple(store.suspects(run_id)),
        reference_run=reference_run,
        along=along,
        reference_along=reference_along,
    )


def _reference_series(store: RunStore, run_id: str, extras: Sequence[Mapping[str, Any]], traits: Sequence[str],
                      drift: np.ndarray, steps: np.ndarray, notes: list[Note]
                      ) -> tuple[str | None, np.ndarray | None, np.ndarray | None]:
    """A run read against a reference run: its drift and the reference's along the stored direction, per step.

    The reference's drift is read at the run's steps (straight lines between its own measured steps, NaN past its
    last one), the way the callback read it during training.
    """
    stored = [e for e in extras if e.get("reference_run") and isinstance(e.get("direction"), Mapping)]
    if not stored:
        return None, None, None
    ref_id, weights = str(stored[0]["reference_run"]), stored[0]["direction"]
    u = np.array([_as_float(weights.get(t, 0.0)) for t in traits])
    used = [i for i, w in enumerate(u) if w != 0]
    along = drift[:, used] @ u[used]
    names = [traits[i] for i in used]
    try:  # read as the callback read it (`ReferenceTrajectory.at`)
        trajectory = ReferenceTrajectory.from_store(store, ref_id)
        at = [trajectory.at(int(step), names) for step in steps]
    except TraitwatchError as exc:
        notes.append(Note.about(run_id, "em", f"its reference run {ref_id!r} could not be read ({exc}); only the "
                                              "run is drawn along the direction."))
        return ref_id, along, None
    read = np.array([math.nan if d is None else float(d @ u[used]) for d in at])
    return ref_id, along, read


def _stored_target(extras: Sequence[Mapping[str, Any]]) -> str | None:
    """What the stored predictions are: the `target` the callback stores, or for older rows its wording."""
    for e in extras:
        if e.get("predicted_em") is None:
            continue
        if isinstance(e.get("target"), str):
            return str(e["target"])
        if isinstance(e.get("prediction"), str):
            return "relative_rise" if "rise" in str(e["prediction"]) else "em_rate"
    return None

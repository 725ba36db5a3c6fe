"""`TraitWatchCallback`: trait drift of the live model during `transformers.Trainer` training.

The callback is a thin wrapper around `DriftProbe` (measure) and a calibrated monitor (predict); a
custom training loop can call `TraitWatchCallback.measure_now` or the probe directly.

Cadence (METHOD.md 3): step 0 in `on_train_begin`, before any weight moves; then every
`every_n_steps` optimizer steps (`state.global_step`, which counts optimizer updates whatever the
gradient accumulation) and at the final step; `on_train_end` adds the last step if training ended
off-cadence (stopped by an alarm or by another callback).

Where the numbers go:
* `trainer.log({"traitwatch/<trait>": ..., "traitwatch/drift_norm": ...})`, plus
  `traitwatch/predicted_em` and `traitwatch/alarm` (0.0/1.0) with a monitor. The public `Trainer.log`
  is used because the `report_to` integrations are registered before user callbacks: editing `logs`
  in our own `on_log` would come after they have already sent them (STYLE.md 3). `Trainer.log` is
  called on every rank, as the Trainer does for the loss, so `state.log_history` agrees across ranks;
  the integrations themselves only act on world process zero.
* The run store (world process zero only): every measurement, with its per-prompt projections, and
  alarms. A failed store write during training is logged, not raised: the numbers are still in the
  Trainer's logs, and an exception on rank 0 alone would leave the other ranks hanging.

The step-0 anchor, and resuming. Drift is measured against the *base* model's step-0 projections
(p_0, N). A fresh run uses the given or the basis's stored anchor when it fits this probe (same
layer, prompt set and precision), else measures the live model in `on_train_begin` (for LoRA the
freshly initialised adapter is a no-op, so the live model is the base). A resumed run (Trainer
`resume_from_checkpoint`, `global_step > 0`) must not re-anchor on an already trained model, so the
anchor is persisted in the store itself, in the step-0 measurement's `extra["anchor"]`: per-prompt
norms, layer, prompt hash, precision and source, plus the per-prompt projections when the anchor did
not come from this pass (a measured anchor's projections are the row's own `per_prompt` array, not
stored twice). A store row is used rather than a side file because the store is the one thing a
resumed run must find anyway (the run id's trajectory lives there) and each write is one committed
transaction, so the anchor can never be half written. On resume the stored anchor is read by rank 0,
broadcast, and adopted (one measured at another layer or with other prompts is refused,
`DriftProbe.use_anchor`). Without a stored anchor of the model's precision the fallbacks are the
given, then the basis anchor, then (PEFT) the live model with its adapter disabled, which is exactly
the base; a full finetune with none of them is an error rather than a silently wrong trajectory.
Steps already in the store up to the resumed step are not measured again (the store replaces a row
measured twice anyway); a resumed cadence step that is missing is measured at once.

Precision. An anchor is only used on a model that computes the measurement layer in the dtype and
on the device type it was measured in (`Anchor.dtype`/`device`, read from a one-token pass, so FSDP
mixed precision counts as what it runs in). The same model in bf16 and fp32 is ||d|| = 0.0011 apart
(smollm2-135m), which would be reported as drift. A stored, given or basis anchor of another (or
an unrecorded) precision is skipped with a warning and the run re-anchors on the base model: the
live model at step 0, the adapter-disabled model on a resumed PEFT run; a resumed full finetune has
no base left to measure and is refused (`AnchorError`) with the fix.

Distributed training: see `traitwatch.train.distributed`. Each rank projects a share of the prompts,
the shares are gathered, and every rank computes the same drift, prediction and decision. Every rank
makes the same forward passes (the same count, through the same blocks: `lockstep_passes`), because
under FSDP2 or ZeRO-3 each pass all-gathers parameters, and every rank runs the same tensor code
around them (the LoRA norm of the stored extras included: on sharded LoRA weights it communicates).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args, runtime_checkable

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import nn
from transformers import PreTrainedTokenizerBase, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from traitwatch.basis.basis import Anchor
from traitwatch.drift.probe import DriftMeasurement, DriftProbe, Projection
from traitwatch.errors import TraitwatchError
from traitwatch.models.layers import unwrap_model
from traitwatch.store import RunStore
from traitwatch.train.distributed import broadcast_from_zero, gather_projection, lockstep_passes

if TYPE_CHECKING:
    from traitwatch.basis.basis import TraitBasis
    from traitwatch.behavior.probe import ProbeSet
    from transformers import Trainer

__all__ = [
    "ALARM_ACTIONS",
    "AlarmAction",
    "AlarmMonitor",
    "AnchorError",
    "DriftAlarmError",
    "DriftRecord",
    "TraitWatchCallback",
    "basis_fingerprint",
    "load_watch_monitor",
    "monitor_fingerprint",
]

logger = logging.getLogger(__name__)

AlarmAction = Literal["warn", "mark", "save", "stop", "raise"]
"""What to do when the monitor fires: `warn` logs a warning; `mark` records the alarm in the store;
`save` saves a checkpoint at this step; `stop` ends training after this step; `raise` raises
`DriftAlarmError`. Any action other than a lone `warn` also records the alarm in the store, so
`traitwatch runs` can explain why a run stopped or has an extra checkpoint."""
ALARM_ACTIONS: tuple[str, ...] = get_args(AlarmAction)

LOG_PREFIX = "traitwatch/"
ALARM_KIND = "em_monitor"


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


class AnchorError(TraitwatchError):
    """A resumed run has no step-0 anchor to measure drift against, and none can be rebuilt."""


@runtime_checkable
class AlarmMonitor(Protocol):
    """What the callback needs from a calibrated monitor (`DriftMonitor`, `LoadedMonitor`).

    `predict` maps drift rows [n, n_traits] to predicted EM rates; the alarm is `> threshold`, unless
    the monitor has a `step_aware` alarm (a saved `StepAwareAlarm`, for long runs): then that decides,
    from the drift and the step.
    """

    threshold: float

    def predict(self, X: ArrayLike) -> np.ndarray: ...


@dataclass(frozen=True)
class DriftRecord:
    """One measurement as the callback saw it (handed to `reporter`, kept in `history_`)."""

    step: int
    drift: dict[str, float]
    drift_norm: float
    predicted_em: float | None = None
    alarm: bool = False
    actions: tuple[str, ...] = ()
    wall_time_s: float = 0.0
    probe: float | None = None  # the behavioural probe, when measured
    probe_rise: float | None = None  # ... minus its step-0 value

    def log_dict(self) -> dict[str, float]:
        """The scalars sent through `Trainer.log` (plain floats: trackers drop anything else)."""
        logs = {f"{LOG_PREFIX}{name}": float(value) for name, value in self.drift.items()}
        logs[f"{LOG_PREFIX}drift_norm"] = float(self.drift_norm)
        if self.probe is not None and self.probe_rise is not None:
            logs[f"{LOG_PREFIX}probe"] = float(self.probe)
            logs[f"{LOG_PREFIX}probe_rise"] = float(self.probe_rise)
        if self.predicted_em is not None:
            logs[f"{LOG_PREFIX}predicted_em"] = float(self.predicted_em)
            logs[f"{LOG_PREFIX}alarm"] = float(self.alarm)
        return logs


def lora_delta_norm(model: nn.Module) -> float | None:
    """Frobenius norm of the LoRA weight update, sqrt(sum over adapted modules of ||scale * B @ A||^2).

    The "LoRA weight-delta norm" baseline of the calibration (METHOD.md 6); None without LoRA layers.
    """
    from peft.tuners.lora import LoraLayer

    total, found = 0.0, False
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, LoraLayer) or not hasattr(module, "get_delta_weight"):
                continue
            for name in module.lora_A:  # PEFT's own scale * B @ A (the update merge_and_unload adds)
                total += float(module.get_delta_weight(name).float().pow(2).sum())
                found = True
    return total**0.5 if found else None


def training_extras(state: TrainerState, model: nn.Module | None) -> dict[str, float]:
    """The training-side signals stored next to each drift measurement (baselines of the calibration).

    `loss`: the last loss the Trainer logged at or before this step (absent at step 0 and when nothing
    was logged); `lora_norm`: `lora_delta_norm` of the model.
    """
    extras: dict[str, float] = {}
    for entry in reversed(state.log_history or []):
        if "loss" in entry and int(entry.get("step", 0)) <= state.global_step:
            extras["loss"] = float(entry["loss"])
            break
    if model is not None:
        norm = lora_delta_norm(model)
        if norm is not None:
            extras["lora_norm"] = norm
    return extras


def basis_fingerprint(probe: DriftProbe) -> dict[str, Any]:
    """What makes two runs' drift comparable: base model, layer, directions, prompt set.

    Stored with the run (`RunStore.start_run` refuses to resume a run with another one).
    """
    basis = probe.basis
    directions = basis.matrix(probe.layer_).float().contiguous().numpy()
    return {
        "model": basis.model.to_dict(),
        "method": basis.method,
        "position": basis.position,
        "layer": probe.layer_,
        "trait_names": list(basis.trait_names),
        "directions_sha256": hashlib.sha256(directions.tobytes()).hexdigest()[:16],
        "measurement_prompts_hash": probe.prompts_hash_,
    }


def monitor_fingerprint(inputs: str, probe: DriftProbe, behavior_probe: ProbeSet | None = None) -> dict[str, Any]:
    """What a monitor reading `inputs` must have been calibrated with, for this basis (and probe set).

    Trait drift: the basis fingerprint (model, layer, directions, prompts). The behavioural probe: the
    model and the probe set's hash (the probe reads no basis, but its log-probs are the model's own).
    """
    if inputs == "probe_rise":
        from traitwatch.behavior.probe import load_probe

        probe_set = behavior_probe if behavior_probe is not None else load_probe()
        return {"model": probe.basis.model.to_dict(), "probe_sha256": probe_set.sha256}
    return basis_fingerprint(probe)


def load_watch_monitor(path: str | os.PathLike[str], probe: DriftProbe,
                       behavior_probe: ProbeSet | None = None) -> AlarmMonitor:
    """A saved monitor, checked against what this callback would measure its inputs with."""
    from traitwatch.monitor import load_monitor

    def expected(inputs: str) -> dict[str, Any]:
        return monitor_fingerprint(inputs, probe, behavior_probe)

    monitor = load_monitor(path, fingerprint=expected)
    if monitor.inputs == "trait_drift" and monitor.trait_names != list(probe.basis.trait_names):
        from traitwatch.errors import BasisMismatchError

        raise BasisMismatchError(f"{path}: monitor traits {monitor.trait_names} differ from the basis's "
                                 f"{list(probe.basis.trait_names)}; measure with the monitor's basis")
    return monitor  # type: ignore[return-value]


def _anchor_payload(anchor: Anchor, source: str, *, with_projections: bool) -> dict[str, Any]:
    """JSON for the step-0 row's `extra["anchor"]`; float32 values survive the JSON round trip exactly.

    The projections are written only when the anchor did not come from this step-0 pass (basis or
    given anchor); otherwise they are the row's `per_prompt` array and are not stored twice.
    """
    payload: dict[str, Any] = {
        "layer": anchor.layer,
        "prompts_hash": anchor.prompts_hash,
        "model_name": anchor.model_name,
        "dtype": anchor.dtype,
        "device": anchor.device,
        "source": source,
        "norms": [float(x) for x in anchor.norms.float().tolist()],
    }
    if with_projections:
        payload["projections"] = anchor.projections.float().tolist()
    return payload


def _anchor_from_store(store: RunStore, run_id: str) -> tuple[Anchor, str] | None:
    """The step-0 anchor persisted by an earlier start of this run, if any."""
    rows = [m for m in store.measurements(run_id) if m.step == 0]
    if not rows or not rows[0].extra or "anchor" not in rows[0].extra:
        return None
    meta = rows[0].extra["anchor"]
    projections = meta.get("projections", rows[0].per_prompt)
    if projections is None:
        return None
    anchor = Anchor(
        layer=int(meta["layer"]),
        prompts_hash=str(meta["prompts_hash"]),
        projections=torch.tensor(np.asarray(projections, dtype=np.float32)),
        norms=torch.tensor(meta["norms"], dtype=torch.float32),
        model_name=str(meta.get("model_name", "")),
        dtype=meta.get("dtype"),
        device=meta.get("device"),
    )
    return anchor, str(meta.get("source", "stored"))


@dataclass
class _Context:
    """What `on_train_begin` works out once; the same on every rank."""

    rank: int = 0
    world_size: int = 1
    is_zero: bool = True
    tokenizer: PreTrainedTokenizerBase | None = None
    store: RunStore | None = None
    owns_store: bool = False
    run_id: str = ""
    stored_steps: set[int] = field(default_factory=set)
    stored_probe0: float | None = None  # a resumed run's step-0 behavioural probe, from the store


class TraitWatchCallback(TrainerCallback):
    """Measure trait drift of the model being trained and act on a monitor's alarm.

    Parameters
    ----------
    probe:
        The drift probe (basis, layer, prompts). An anchor already set on it (`fit_anchor`) is used
        as is on a fresh run.
    trainer:
        The Trainer, needed for `Trainer.log`; or call `attach(trainer)` after building it.
    tokenizer:
        Tokenizer for the measurement prompts; default: the Trainer's `processing_class`.
    store, run_id:
        A `RunStore` or a path to one (opened by world process zero only; prefer a path under
        distributed training so other ranks never open the file), and the run id (default:
        `args.run_name`, else the output_dir's name). No store: nothing is persisted, and a resumed
        run falls back to the basis or adapter-disabled anchor.
    model_name:
        The model's name in the store (default: the basis's model name).
    run_metadata:
        Extra `start_run` fields (`dataset`, `seed`, `hyperparameters`) for runs this callback starts.
    monitor:
        Optional calibrated monitor (`AlarmMonitor`). It is consulted from step 1 on: step 0 is the
        base model itself, outside what a detector calibrated on step > 0 checkpoints has seen. A
        monitor whose `inputs` is "probe_rise" reads the behavioural probe instead of the drift.
    behavior_probe:
        Also score the behavioural probe (`traitwatch.behavior.probe`: 64 questions with style-matched
        aligned/misaligned answers, disjoint from the EM evaluation questions) at every measurement:
        True for the packaged set, or a `ProbeSet`. On by itself when the monitor reads it. Logged as
        `traitwatch/probe` and `traitwatch/probe_rise` (its rise over step 0). Every rank scores all
        questions (the same forward passes on every rank, so sharded models stay in step).
    every_n_steps:
        Cadence in optimizer steps (METHOD.md 3: 10).
    on_alarm:
        Actions when `predict(drift) > threshold` (see `AlarmAction`).
    reporter:
        Called on world process zero with each `DriftRecord` (e.g. a live table).
    """

    def __init__(
        self,
        probe: DriftProbe,
        *,
        trainer: Trainer | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        store: RunStore | str | os.PathLike[str] | None = None,
        run_id: str | None = None,
        model_name: str | None = None,
        run_metadata: Mapping[str, Any] | None = None,
        monitor: AlarmMonitor | None = None,
        every_n_steps: int = 10,
        on_alarm: Sequence[AlarmAction] = ("warn", "mark"),
        reporter: Callable[[DriftRecord], None] | None = None,
        behavior_probe: ProbeSet | bool | None = None,
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        bad = [a for a in on_alarm if a not in ALARM_ACTIONS]
        if bad:
            raise ValueError(f"unknown alarm action(s) {bad}; choose from {list(ALARM_ACTIONS)}")
        if monitor is not None and not isinstance(monitor, AlarmMonitor):
            raise TypeError("monitor must have predict(X) and a threshold attribute")
        self.probe = probe
        self.trainer = trainer
        self.tokenizer = tokenizer
        self.store = store
        self.run_id = run_id
        self.model_name = model_name
        self.run_metadata = dict(run_metadata or {})
        self.monitor = monitor
        self.every_n_steps = every_n_steps
        self.on_alarm = tuple(on_alarm)
        self.reporter = reporter
        self.behavior_probe = behavior_probe
        if getattr(monitor, "inputs", "trait_drift") == "probe_rise" and behavior_probe is False:
            raise ValueError("the monitor reads the behavioural probe: behavior_probe=False would leave it without input")
        self.probe_: DriftProbe = probe  # the working copy of the current run, with its anchor
        self.probe_set_: ProbeSet | None = None  # the behavioural probe scored in this run, if any
        self.probe0_: float | None = None  # its step-0 (base model) value
        self.history_: list[DriftRecord] = []
        self.anchor_source_: str | None = None
        self.stopped_by_alarm_: bool = False
        self.store_errors_: list[str] = []
        self._ctx = _Context()
        self._last_step: int | None = None

    @classmethod
    def from_basis(
        cls,
        basis: str | os.PathLike[str] | TraitBasis,
        *,
        store: RunStore | str | os.PathLike[str] | None = None,
        run_id: str | None = None,
        monitor: AlarmMonitor | str | os.PathLike[str] | None = None,
        every_n_steps: int = 10,
        on_alarm: Sequence[AlarmAction] = ("warn", "mark"),
        reporter: Callable[[DriftRecord], None] | None = None,
        batch_size: int = 32,
        behavior_probe: ProbeSet | bool | None = None,
    ) -> TraitWatchCallback:
        """The two-line set-up: a callback from a basis folder (and a saved monitor file, if any).

        `TraitWatchCallback.from_basis("my-basis", store="traitwatch.db").attach(trainer)`.
        A monitor file is checked when loaded against what would measure its inputs: the basis's
        fingerprint for a drift monitor, the basis's model and the probe set for a probe monitor.
        """
        from traitwatch.basis.basis import TraitBasis as _TraitBasis

        loaded = basis if isinstance(basis, _TraitBasis) else _TraitBasis.load(basis)
        probe = DriftProbe(loaded, batch_size=batch_size)
        if monitor is not None and not isinstance(monitor, AlarmMonitor):
            given = behavior_probe if not isinstance(behavior_probe, bool) else None
            monitor = load_watch_monitor(monitor, probe, given)
        return cls(
            probe, store=store, run_id=run_id, monitor=monitor,  # type: ignore[arg-type]
            every_n_steps=every_n_steps, on_alarm=on_alarm, reporter=reporter, behavior_probe=behavior_probe,
        )

    def attach(self, trainer: Trainer) -> TraitWatchCallback:
        """Keep a reference to `trainer` (for `Trainer.log`) and register with it; returns self."""
        self.trainer = trainer
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        return self

    # -- Trainer events ---------------------------------------------------------------------------

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        processing_class: Any = None,
        **kwargs: Any,
    ) -> TrainerControl:
        if self.trainer is None:
            raise TraitwatchError(
                "TraitWatchCallback has no trainer reference: build it with trainer=... or call "
                "callback.attach(trainer), so drift reaches trainer.log and the report_to integrations."
            )
        if model is None:
            raise TraitwatchError("TraitWatchCallback got no model from the Trainer.")
        tokenizer = self.tokenizer or processing_class
        if not isinstance(tokenizer, PreTrainedTokenizerBase):
            raise TraitwatchError(
                "TraitWatchCallback needs a tokenizer: pass tokenizer=... or the Trainer's processing_class."
            )
        # Work on a copy: the caller's probe keeps its own anchor (or none) across runs.
        self.probe_ = copy.copy(self.probe)
        self.probe_.check_model(model, tokenizer, self.model_name)
        ctx = _Context(
            rank=args.process_index,
            world_size=args.world_size,
            is_zero=state.is_world_process_zero,
            tokenizer=tokenizer,
            run_id=self.run_id or args.run_name or Path(args.output_dir or "run").name,
        )
        self._ctx = ctx
        self.probe_set_, self.probe0_ = self._resolve_behavior_probe(), None
        self.history_ = []
        self.stopped_by_alarm_ = False
        self.store_errors_ = []
        self._last_step = None

        stored: tuple[Anchor, str] | None = None
        failure: Exception | None = None
        if ctx.is_zero and self.store is not None:
            try:
                stored = self._open_store(args, state)
            except (TraitwatchError, sqlite3.Error, OSError) as exc:  # e.g. a run id of another model: all ranks stop
                failure = exc
        # Only rank 0 may read the store; every rank needs the same anchor, step list and verdict
        # (a rank-0-only exception would leave the other ranks waiting in the next collective).
        stored, steps, probe0, failure = broadcast_from_zero(
            (stored, sorted(ctx.stored_steps), ctx.stored_probe0, failure), ctx.world_size)
        if failure is not None:
            self._close_store()
            raise failure
        ctx.stored_steps, ctx.stored_probe0 = set(steps), probe0

        if state.global_step == 0:
            self._begin_fresh(args, state, control, model)
        else:
            self._begin_resumed(args, state, control, model, stored)
        return control

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> TrainerControl:
        step = state.global_step
        if self._due(step, state.max_steps) and self._last_step != step and model is not None:
            self.measure_now(args, state, control, model)
        return control

    def on_train_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> TrainerControl:
        ctx = self._ctx
        try:
            if model is not None and self._last_step != state.global_step and ctx.tokenizer is not None:
                self.measure_now(args, state, control, model)  # ended off-cadence: record the final step
        finally:
            status = "stopped" if self.stopped_by_alarm_ else "finished"
            self._store_write("the run status", lambda store: store.finish_run(ctx.run_id, status))
            self._close_store()
        return control

    # -- measuring --------------------------------------------------------------------------------

    def measure_now(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module,
        *,
        extra: Mapping[str, Any] | None = None,
        projection: Projection | None = None,
        started: float | None = None,
        probe_value: float | None = None,
    ) -> DriftRecord:
        """Measure at `state.global_step`, log, store and act on an alarm. Every rank must call it.

        `projection` (with `started`, its `time.perf_counter()` start) and `probe_value` reuse
        measurements already made at this step.
        """
        start = time.perf_counter() if started is None else started
        step = state.global_step
        proj = self._project(model) if projection is None else projection
        m = self.probe_.drift_from(proj)
        probe = rise = None
        if self.probe_set_ is not None:
            probe = self._behavior(model) if probe_value is None else probe_value
            rise = probe - self.probe0_ if self.probe0_ is not None else None
        predicted, alarm = self._predict(m, step, rise)
        actions = self._actions(alarm)
        record = DriftRecord(
            step=step,
            drift=m.as_dict(),
            drift_norm=m.norm,
            predicted_em=predicted,
            alarm=alarm,
            actions=actions,
            wall_time_s=time.perf_counter() - start,
            probe=probe,
            probe_rise=rise,
        )
        self._log(record, control)
        self._last_step = step
        self.history_.append(record)
        ctx = self._ctx
        # Every rank: on FSDP-sharded LoRA weights the norm's matmuls communicate, so rank 0 alone would hang.
        extras = training_extras(state, model)
        if ctx.store is not None:
            stored_extra: dict[str, Any] = {**extras, **dict(extra or {})}
            if m.mean_activation is not None:  # the activation-space baselines' input (monitor.baselines)
                stored_extra["mean_activation"] = [float(v) for v in m.mean_activation]
            if predicted is not None:
                stored_extra.update(predicted_em=predicted, alarm=alarm, threshold=self._threshold(),
                                    prediction=self._prediction_name())
            if probe is not None:
                stored_extra.update(probe=probe, probe_rise=rise)
            stored_extra["world_size"] = ctx.world_size
            self._store_write(f"the step-{step} measurement", lambda store: store.add_measurement(
                ctx.run_id, step, record.drift, record.drift_norm, per_prompt=m.projections,
                wall_time_s=record.wall_time_s, extra=stored_extra,
            ))
        if ctx.is_zero and self.reporter is not None:
            self.reporter(record)
        if alarm:
            self._act(record, control)
        return record

    def _log(self, record: DriftRecord, control: TrainerControl) -> None:
        """Send the scalars through the base `Trainer.log`, to `log_history` and every `report_to` tracker.

        The base method, not the trainer's own: subclasses such as TRL's `SFTTrainer` add their running
        metrics (entropy, token accuracy) to whatever is logged and then clear them, so logging through
        the override would move those into our row and shorten their next averaging window.
        """
        from transformers import Trainer

        assert self.trainer is not None
        log = Trainer.log if isinstance(self.trainer, Trainer) else type(self.trainer).log
        # Trainer.log resets control.should_log (CallbackHandler.on_log), which would drop the Trainer's
        # own loss logging for this step: keep the flag as DefaultFlowCallback set it.
        should_log = control.should_log
        log(self.trainer, record.log_dict())
        control.should_log = self.trainer.control.should_log = should_log

    def _project(self, model: nn.Module) -> Projection:
        ctx = self._ctx
        inner = unwrap_model(model)
        assert ctx.tokenizer is not None
        tokenizer = ctx.tokenizer

        n_prompts = len(self.probe_.prompt_list_)
        passes = lockstep_passes(lambda share: self.probe_.count_forward_passes(tokenizer, share), n_prompts,
                                 ctx.world_size)

        def project(indices: list[int] | None) -> Projection:
            return self.probe_.project(inner, tokenizer, indices=indices, forward_passes=passes)

        return gather_projection(project, n_prompts, ctx.rank, ctx.world_size)

    def _predict(self, m: DriftMeasurement, step: int, probe_rise: float | None = None) -> tuple[float | None, bool]:
        if self.monitor is None or step == 0:
            return None, False
        if getattr(self.monitor, "inputs", "trait_drift") == "probe_rise":
            assert probe_rise is not None  # on_train_begin scored the probe's step 0
            X = np.array([[probe_rise]])
        else:
            X = m.drift[None, :]
        predicted = float(np.asarray(self.monitor.predict(X)).reshape(-1)[0])
        step_aware = getattr(self.monitor, "step_aware", None)
        if step_aware is not None:  # is this much drift unusual for this many steps?
            return predicted, bool(np.asarray(step_aware.alarm(np.append(m.drift, step)[None, :])).reshape(-1)[0])
        return predicted, bool(predicted > self._threshold())

    def _threshold(self) -> float:
        return float(self.monitor.threshold) if self.monitor is not None else float("nan")

    def _prediction_name(self) -> str:
        """What the monitor predicts, for messages: a relative rise is not an EM rate."""
        return ("predicted rise of the EM proxy over benign finetuning"
                if getattr(self.monitor, "target", "em_rate") == "relative_rise" else "predicted EM rate")

    # -- the behavioural probe ----------------------------------------------------------------------

    def _resolve_behavior_probe(self) -> ProbeSet | None:
        """The probe set this run scores: the given one, the packaged one when asked or when the monitor reads it."""
        from traitwatch.behavior.probe import ProbeSet as _ProbeSet
        from traitwatch.behavior.probe import load_probe

        if isinstance(self.behavior_probe, _ProbeSet):
            return self.behavior_probe
        if self.behavior_probe or getattr(self.monitor, "inputs", "trait_drift") == "probe_rise":
            return load_probe()
        return None

    def _behavior(self, model: nn.Module) -> float:
        """The probe on the live model. Every rank scores every question: the same forward passes everywhere."""
        from traitwatch.behavior.probe import probe_score

        assert self.probe_set_ is not None and self._ctx.tokenizer is not None
        return probe_score(unwrap_model(model), self._ctx.tokenizer, self.probe_set_).style_p_mis

    def _behavior_base(self, model: nn.Module, step: int) -> float:
        """A resumed run's step-0 probe: stored, else the adapter-disabled model; a full finetune has no base."""
        if self._ctx.stored_probe0 is not None:
            return self._ctx.stored_probe0
        inner = unwrap_model(model)
        if hasattr(inner, "disable_adapter"):
            with inner.disable_adapter():  # LoRA off = exactly the base model
                return self._behavior(inner)
        raise AnchorError(
            f"Run {self._ctx.run_id!r} resumed at step {step} with the behavioural probe on, but the store has no "
            "step-0 probe value and a fully finetuned model has no base left to score; restart the run from step 0.")

    def _actions(self, alarm: bool) -> tuple[str, ...]:
        return self.on_alarm if alarm else ()

    def _act(self, record: DriftRecord, control: TrainerControl) -> None:
        ctx = self._ctx
        assert record.predicted_em is not None
        threshold = self._threshold()
        why = ("; the step-aware alarm fired" if getattr(self.monitor, "step_aware", None) is not None
               else f" > threshold {threshold:.3f}")
        message = (
            f"traitwatch: drift alarm at step {record.step}: {self._prediction_name()} {record.predicted_em:.4f}{why} "
            f"(||d|| = {record.drift_norm:.4f}); actions: {', '.join(record.actions)}"
        )
        if "warn" in record.actions and ctx.is_zero:
            logger.warning(message)
        if "save" in record.actions:
            control.should_save = True
        if "stop" in record.actions or "raise" in record.actions:
            self.stopped_by_alarm_ = True
        if "stop" in record.actions:
            control.should_training_stop = True
        if ctx.store is not None and set(record.actions) - {"warn"}:
            action = "raised" if "raise" in record.actions else "+".join(a for a in record.actions if a != "warn")
            self._store_write(f"the step-{record.step} alarm", lambda store: store.add_alarm(
                ctx.run_id, record.step, ALARM_KIND, record.predicted_em, threshold, action))
        if "raise" in record.actions:
            self._store_write("the run status", lambda store: store.finish_run(
                ctx.run_id, "stopped", notes=f"drift alarm raised at step {record.step}"))
            self._close_store()
            raise DriftAlarmError(message, step=record.step, predicted_em=record.predicted_em, threshold=threshold)

    # -- anchors ----------------------------------------------------------------------------------

    def _begin_fresh(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: nn.Module
    ) -> None:
        """Step 0: the live model is the base. Anchor (given, basis, or measured) and record step 0."""
        started = time.perf_counter()
        precision = self.probe_.precision(unwrap_model(model))
        proj = self._project(model)
        source, _ = self._adopt_anchor(precision)
        if source is None:
            base, source = self._base_projection(model, precision, live=proj)
            self.probe_.anchor_ = self._new_anchor(base, precision)
        self.anchor_source_ = source
        anchor = self.probe_.anchor_
        assert anchor is not None
        if self.probe_set_ is not None:
            self.probe0_ = self._behavior(model)  # the live model is the base at step 0
        # Persist the anchor with the step-0 row, so a resumed run measures against this same p_0 and N
        # (and the step-0 probe, as the row's `probe`). A measured anchor *is* this pass, whose projections
        # are the row's per-prompt array already.
        self.measure_now(
            args, state, control, model, projection=proj, started=started, probe_value=self.probe0_,
            extra={"anchor": _anchor_payload(anchor, source, with_projections=source != "measured")},
        )

    def _begin_resumed(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module,
        stored: tuple[Anchor, str] | None,
    ) -> None:
        """Resumed at step G > 0: adopt the original anchor, or measure the adapter-disabled base; never
        anchor on the trained model."""
        step = state.global_step
        if stored is not None and not self.probe_.anchor_fits(stored[0]):
            self.probe_.use_anchor(stored[0])  # refuses an anchor of another layer or prompt set
        precision = self.probe_.precision(unwrap_model(model))
        source, skipped = self._adopt_anchor(precision, stored)
        if source is None:
            base, source = self._base_projection(model, precision, step=step, skipped=skipped)
            self.probe_.anchor_ = self._new_anchor(base, precision)
        self.anchor_source_ = source
        if self.probe_set_ is not None:
            self.probe0_ = self._behavior_base(model, step)
        if step not in self._ctx.stored_steps and self._due(step, state.max_steps):
            self.measure_now(args, state, control, model)  # the checkpoint's step was never recorded
        else:
            self._last_step = step

    def _adopt_anchor(
        self, precision: tuple[str, str], stored: tuple[Anchor, str] | None = None
    ) -> tuple[str | None, list[str]]:
        """Use the first anchor that fits the probe and the model's precision: stored, given, basis.

        Returns its source (None when none fits) and the anchors skipped only for their precision,
        which rank 0 names in a warning: re-anchoring costs a pass and changes p_0.
        """
        candidates = [(stored[0], f"store ({stored[1]})")] if stored is not None else []
        if self.probe_.anchor_ is not None:
            candidates.append((self.probe_.anchor_, "given"))
        if self.probe_.basis.anchor is not None:
            candidates.append((self.probe_.basis.anchor, "basis"))
        for anchor, source in candidates:
            if self.probe_.anchor_fits(anchor, precision):
                self.probe_.anchor_ = anchor
                return source, []
        self.probe_.anchor_ = None
        skipped = [f"the {source} anchor ({anchor.describe_precision()})" for anchor, source in candidates
                   if self.probe_.anchor_fits(anchor)]
        if skipped and self._ctx.is_zero:
            logger.warning(
                "traitwatch: %s was measured in another precision than the model runs in now (%s on %s); "
                "re-anchoring on the base model, since precision alone moves drift by ~0.001.",
                " and ".join(skipped), *precision,
            )
        return None, skipped

    def _base_projection(
        self,
        model: nn.Module,
        precision: tuple[str, str],
        *,
        live: Projection | None = None,
        step: int = 0,
        skipped: Sequence[str] = (),
    ) -> tuple[Projection, str]:
        """Project the base model: the live one at step 0, else the live one with its adapter disabled."""
        if live is not None:
            return live, "measured"  # at step 0 the model is the base (a fresh LoRA adapter is a no-op)
        inner = unwrap_model(model)
        if hasattr(inner, "disable_adapter"):
            with inner.disable_adapter():  # LoRA off = exactly the base model
                return self._project(inner), "adapter disabled"
        dtype, device = precision
        # select-layer anchors a plain dtype; an autocast precision is reproduced by fitting under torch.autocast
        basis_fix = "" if " " in dtype else (
            f"; for the basis: `traitwatch select-layer --basis BASIS --set {self.probe_.layer_} --dtype {dtype}`")
        why = (f"{' and '.join(skipped)} was measured in another precision than the model runs in now ({dtype} on "
               f"{device}), which would put precision noise into the drift" if skipped else
               f"its step-0 anchor is not in the store and the basis has none for layer {self.probe_.layer_}")
        raise AnchorError(
            f"Run {self._ctx.run_id!r} resumed at step {step} but {why}; a fully finetuned model has no base left "
            "to measure, and measuring this trained model as step 0 would be wrong. Resume in the precision the "
            f"anchor was measured in, restart the run from step 0, or anchor the base model in {dtype} on {device} "
            f"and pass that probe (`DriftProbe(basis).fit_anchor(base_model, tokenizer)`{basis_fix})."
        )

    def _new_anchor(self, base: Projection, precision: tuple[str, str]) -> Anchor:
        return Anchor(
            self.probe_.layer_, self.probe_.prompts_hash_, base.projections.clone(), base.norms.clone(),
            self.model_name or self.probe_.basis.model.name, *precision,
        )

    def _open_store(self, args: TrainingArguments, state: TrainerState) -> tuple[Anchor, str] | None:
        """Rank 0: open the store, start or resume the run; on resume, read the stored anchor and steps."""
        ctx = self._ctx
        assert self.store is not None
        ctx.store, ctx.owns_store = (
            (self.store, False) if isinstance(self.store, RunStore) else (RunStore(self.store), True)
        )
        ctx.store.start_run(
            ctx.run_id,
            model=self.model_name or self.probe_.basis.model.name,
            dataset=self.run_metadata.get("dataset"),
            seed=self.run_metadata.get("seed", args.seed),
            hyperparameters=self.run_metadata.get("hyperparameters", self._default_hyperparameters(args)),
            basis_fingerprint=basis_fingerprint(self.probe_),
        )
        if state.global_step == 0:
            return None
        rows = ctx.store.measurements(ctx.run_id, per_prompt=False)
        ctx.stored_steps = {m.step for m in rows}
        step0 = next((m for m in rows if m.step == 0), None)
        if step0 is not None and step0.extra and step0.extra.get("probe") is not None:
            ctx.stored_probe0 = float(step0.extra["probe"])
        return _anchor_from_store(ctx.store, ctx.run_id)

    def _store_write(self, what: str, write: Callable[[RunStore], object]) -> None:
        """Rank 0's store writes during training. A failure is logged, not raised: the drift is still in
        the Trainer's logs, and raising on rank 0 alone would leave the other ranks hanging."""
        ctx = self._ctx
        if ctx.store is None:
            return
        try:
            write(ctx.store)
        except (TraitwatchError, sqlite3.Error, OSError) as exc:
            self.store_errors_.append(f"{what}: {exc}")
            logger.error("traitwatch: could not store %s in %s (%s); it is still in the Trainer logs.",
                         what, ctx.store.path, exc)

    def _due(self, step: int, max_steps: int) -> bool:
        return step % self.every_n_steps == 0 or (max_steps > 0 and step >= max_steps)

    def _close_store(self) -> None:
        ctx = self._ctx
        if ctx.store is not None and ctx.owns_store:
            ctx.store.close()
        ctx.store = None

    @staticmethod
    def _default_hyperparameters(args: TrainingArguments) -> dict[str, Any]:
        return {
            "learning_rate": args.learning_rate,
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "world_size": args.world_size,
            "num_train_epochs": args.num_train_epochs,
            "max_steps": args.max_steps,
        }

"""`TraitWatchCallback`: trait drift of the live model during `transformers.Trainer` training.

The callback only wires Trainer events to the modules that do the work: what it is given (`options`), the
step-0 anchor of a fresh or resumed run (`run_anchor`), each measurement (`measurement`, gathered across ranks
by `distributed`), the run store (`store_session`), the alarm (`alarm`, `rewind`), the suspect rows
(`suspects`), the behavioural probe (`behavior_score`) and the stored training-side baselines (`extras`). A
custom training loop can call `TraitWatchCallback.measure_now` or the probe directly.

Cadence (METHOD.md 3): step 0 in `on_train_begin`, before any weight moves; then every `every_n_steps`
optimizer steps (`state.global_step`, which counts optimizer updates whatever the gradient accumulation) and at
the final step; `on_train_end` adds the last step if training ended off-cadence (stopped by an alarm or by
another callback). A resumed run does not measure the steps already in its store again; a resumed cadence step
that is missing is measured at once.

The numbers go through the public `Trainer.log`, on every rank as the Trainer does for the loss, so
`state.log_history` agrees across ranks: the `report_to` integrations are registered before user callbacks, so
editing `logs` in our own `on_log` would come after they had sent them (STYLE.md 3). World process zero also
stores every measurement and alarm; a store write that fails stops the run on every rank at once
(`StoreWriteError`, see `store_session`). Every rank computes the same drift, prediction and decision, running
the same tensor code, so none is left waiting in a collective. The model is unwrapped from DDP/FSDP/compile
wrappers once, where it enters the callback (`on_train_begin`, `measure_now`).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from torch import nn
from transformers import PreTrainedTokenizerBase, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from traitwatch.drift.anchoring import AnchorError
from traitwatch.drift.probe import DriftProbe, Projection
from traitwatch.errors import TraitwatchError
from traitwatch.guard import Guard
from traitwatch.models.layers import unwrap_model
from traitwatch.monitor.watch import AlarmMonitor, load_watch_monitor, monitor_fingerprint
from traitwatch.reference import ReferenceTrajectory
from traitwatch.store import RunStore, describe_rewind
from traitwatch.train.alarm import ALARM_ACTIONS, AlarmAction, DriftAlarmError, act_on_alarm, alarm_fields, ends_run
from traitwatch.train.behavior_score import probe_set_for
from traitwatch.train.extras import lora_delta_norm, measurement_extras, training_extras
from traitwatch.train.measurement import RunContext, read_step
from traitwatch.train.options import check_options, check_reference, load_for_basis
from traitwatch.train.record import DriftRecord
from traitwatch.train.rewind import Rewinder
from traitwatch.train.run_anchor import basis_fingerprint, begin_fresh, begin_resumed
from traitwatch.train.store_session import StoreSession, run_fields
from traitwatch.train.suspects import RowScores, SuspectWindow, TrainedRows

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
    "RowScores",
    "TraitWatchCallback",
    "TrainedRows",
    "basis_fingerprint",
    "load_watch_monitor",
    "lora_delta_norm",
    "monitor_fingerprint",
    "training_extras",
]

logger = logging.getLogger(__name__)


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
        monitor whose `inputs` is "probe_rise" reads the behavioural probe instead of the drift, one whose
        `inputs` is "drift_minus_reference" (`ReferenceMonitor`) the drift minus its reference run's.
    reference:
        A reference run's measured drift (`ReferenceTrajectory.from_store`: the user's set with its
        suspect rows swapped for its cleanest ones, trained in the same recipe and seed; `traitwatch train
        --reference auto` makes one). The monitor is then the model's shipped `ReferenceMonitor`: the run's
        drift minus the reference's at the same step, read as its calibration says (along the misalignment
        direction, or its length), with the alarm gate of `monitor.watch`. Pass
        `monitor=ReferenceMonitor(...)` instead for another calibration.
    behavior_probe:
        Also score the behavioural probe (`traitwatch.behavior.probe`: 64 questions with style-matched
        aligned/misaligned answers, disjoint from the EM evaluation questions) at every measurement:
        True for the packaged set, or a `ProbeSet`. On by itself when the monitor reads it. Logged as
        `traitwatch/probe` and `traitwatch/probe_rise` (its rise over step 0). Every rank scores all
        questions (the same forward passes on every rank, so sharded models stay in step).
    every_n_steps:
        Cadence in optimizer steps (METHOD.md 3: 10).
    on_alarm:
        Actions when `predict(drift) > threshold` (see `AlarmAction`). "rewind" snapshots the trainable weights at
        every clean measurement and, at an alarm, restores them and drops the suspects and the rows scored like
        them (needs `row_scores` and the collator's `rows`; without them only the weights go back).
    reporter:
        Called on world process zero with each `DriftRecord` (e.g. a live table).
    on_store_error:
        "raise" (default): a measurement, alarm or status that cannot be stored stops the run with
        `StoreWriteError` on every rank, naming the store and the cause; resume it once the store is
        fixed. "log": log it and go on (the numbers are still in the Trainer's logs), for runs that must
        not stop for their monitoring.
    row_scores, suspects_k, trained_rows:
        Per-row scores of the training set (`RowScores`, e.g. from a screen): at every measurement the
        `suspects_k` highest-scored rows trained since the last clean measurement are stored with it
        (`extra["suspects"]`), and an alarm logs them and stores them with the alarm. Which rows were
        trained comes from `trained_rows` (default: a new `TrainedRows`, `self.trained_rows`), which the
        Trainer's collator must feed: `PaddingCollator(pad_id, rows=callback.trained_rows)` on rows from
        `tokenize_chats`. Fed by nothing, the whole set is ranked, and the stored list says so. Under
        DDP every rank's rows are gathered at each measurement: give every rank the same `row_scores`.
    guard:
        A `traitwatch.guard.Guard` (ablation, steering, penalty on a misalignment subspace, or the L2 pull),
        attached to the model for the training passes and detached at the end; its settings are stored with the
        run's hyperparameters and what it did with every measurement (`extra["guard"]`).
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
        reference: ReferenceTrajectory | None = None,
        every_n_steps: int = 10,
        on_alarm: Sequence[AlarmAction] = ("warn", "mark"),
        reporter: Callable[[DriftRecord], None] | None = None,
        behavior_probe: ProbeSet | bool | None = None,
        on_store_error: Literal["raise", "log"] = "raise",
        row_scores: RowScores | None = None,
        suspects_k: int = 10,
        trained_rows: TrainedRows | None = None,
        guard: Guard | None = None,
    ) -> None:
        actions, monitor = check_options(
            probe, every_n_steps=every_n_steps, suspects_k=suspects_k, row_scores=row_scores, on_alarm=on_alarm,
            monitor=monitor, reference=reference, guard=guard, on_store_error=on_store_error,
            behavior_probe=behavior_probe,
        )
        self.probe = probe
        self.trainer = trainer
        self.tokenizer = tokenizer
        self.store = store
        self.run_id = run_id
        self.model_name = model_name
        self.run_metadata = dict(run_metadata or {})
        self.monitor = monitor
        self.reference = reference
        self.every_n_steps = every_n_steps
        self.on_alarm = actions
        self.reporter = reporter
        self.behavior_probe = behavior_probe
        self.on_store_error = on_store_error
        self.row_scores = row_scores
        self.suspects_k = suspects_k
        self.guard = guard
        self._rewinder = Rewinder() if "rewind" in actions else None
        self.trained_rows = trained_rows if trained_rows is not None or row_scores is None else TrainedRows()
        self.probe_: DriftProbe = probe  # the working copy of the current run, with its anchor
        self.probe_set_: ProbeSet | None = None  # the behavioural probe scored in this run, if any
        self.probe0_: float | None = None  # its step-0 (base model) value
        self.history_: list[DriftRecord] = []
        self.anchor_source_: str | None = None
        self.stopped_by_alarm_: bool = False
        self._ctx = RunContext()
        self._session = StoreSession(on_error=on_store_error, logger=logger)
        self.store_errors_: list[str] = self._session.errors
        self._last_step: int | None = None
        self._window = SuspectWindow(row_scores, self.trained_rows, suspects_k)

    @classmethod
    def from_basis(
        cls,
        basis: str | os.PathLike[str] | TraitBasis,
        *,
        store: RunStore | str | os.PathLike[str] | None = None,
        run_id: str | None = None,
        monitor: AlarmMonitor | str | os.PathLike[str] | None = None,
        reference: ReferenceTrajectory | str | None = None,
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
        `reference` may name a run of `store` (`ReferenceTrajectory.from_store`).
        """
        probe, loaded_monitor, loaded_reference = load_for_basis(
            basis, batch_size=batch_size, store=store, monitor=monitor, reference=reference,
            behavior_probe=behavior_probe,
        )
        return cls(
            probe, store=store, run_id=run_id, monitor=loaded_monitor, reference=loaded_reference,
            every_n_steps=every_n_steps, on_alarm=on_alarm, reporter=reporter, behavior_probe=behavior_probe,
        )

    def attach(self, trainer: Trainer) -> TraitWatchCallback:
        """Keep a reference to `trainer` (for `Trainer.log`) and register with it; returns self."""
        self.trainer = trainer
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        return self

    # -- Trainer events ---------------------------------------------------------------------------

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: nn.Module | None = None, processing_class: Any = None, **kwargs: Any) -> TrainerControl:
        if self.trainer is None:
            raise TraitwatchError(
                "TraitWatchCallback has no trainer reference: build it with trainer=... or call "
                "callback.attach(trainer), so drift reaches trainer.log and the report_to integrations."
            )
        if model is None:
            raise TraitwatchError("TraitWatchCallback got no model from the Trainer.")
        model = unwrap_model(model)
        tokenizer = self.tokenizer or processing_class
        if not isinstance(tokenizer, PreTrainedTokenizerBase):
            raise TraitwatchError(
                "TraitWatchCallback needs a tokenizer: pass tokenizer=... or the Trainer's processing_class."
            )
        # Work on a copy: the caller's probe keeps its own anchor (or none) across runs.
        self.probe_ = copy.copy(self.probe)
        self.probe_.check_model(model, tokenizer, self.model_name)
        check_reference(self.monitor, self.probe_, max_steps=state.max_steps, warn=state.is_world_process_zero,
                        logger=logger)
        ctx = self._ctx = RunContext(
            rank=args.process_index,
            world_size=args.world_size,
            is_zero=state.is_world_process_zero,
            tokenizer=tokenizer,
            run_id=self.run_id or args.run_name or Path(args.output_dir or "run").name,
        )
        self.probe_set_, self.probe0_ = probe_set_for(self.behavior_probe, self.monitor), None
        self.history_ = []
        self.stopped_by_alarm_ = False
        self._session = StoreSession(ctx.run_id, ctx.world_size, on_error=self.on_store_error, logger=logger)
        self.store_errors_ = self._session.errors
        self._last_step = None
        # A resumed run does not know what was trained before its checkpoint: its window starts there.
        self._window = SuspectWindow(self.row_scores, self.trained_rows, self.suspects_k)
        self._window.restart(state.global_step)
        step = state.global_step
        run = run_fields(args, self.run_metadata, model=self.model_name or self.probe_.basis.model.name,
                         fingerprint=self.probe_.fingerprint(), guard=self.guard)
        ctx.stored = self._session.start(self.store, is_zero=ctx.is_zero, resumed=step > 0, run=run)
        if step == 0:  # the live model is the base: anchor on it (or a fitting given anchor) and record step 0
            start = begin_fresh(self.probe_, model, ctx, model_name=self.model_name, probe_set=self.probe_set_,
                                logger=logger)
            self.anchor_source_, self.probe0_ = start.source, start.probe0
            self.measure_now(args, state, control, model, projection=start.projection, started=start.started,
                             probe_value=start.probe0, extra=start.extra)
        else:  # resumed: the stored (or a base) anchor, never the trained model
            self.anchor_source_, self.probe0_ = begin_resumed(
                self.probe_, model, ctx, step=step, model_name=self.model_name, probe_set=self.probe_set_,
                logger=logger)
            if step not in ctx.stored.steps and self._due(step, state.max_steps):
                self.measure_now(args, state, control, model)  # the checkpoint's step was never recorded
            else:
                self._last_step = step
        if self.guard is not None:  # after step 0 is measured; it acts on training passes only anyway
            self.guard.attach(model, grad_accum=args.gradient_accumulation_steps)
        return control

    def on_pre_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                              **kwargs: Any) -> TrainerControl:
        if self.guard is not None:
            self.guard.before_optimizer_step()
        return control

    def on_substep_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> TrainerControl:
        if self.trained_rows is not None:
            self.trained_rows.trained()  # a micro-batch of a gradient-accumulation group has run
        return control

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    model: nn.Module | None = None, **kwargs: Any) -> TrainerControl:
        if self.trained_rows is not None:
            self.trained_rows.trained()  # the step's last micro-batch
        if self.guard is not None:
            self.guard.step_end()
        if self._rewinder is not None:
            self._rewinder.optimizer = kwargs.get("optimizer", self._rewinder.optimizer)
        step = state.global_step
        if self._due(step, state.max_steps) and self._last_step != step and model is not None:
            self.measure_now(args, state, control, model)
        return control

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     model: nn.Module | None = None, **kwargs: Any) -> TrainerControl:
        ctx, session = self._ctx, self._session
        try:
            if model is not None and self._last_step != state.global_step and ctx.tokenizer is not None:
                self.measure_now(args, state, control, model)  # ended off-cadence: record the final step
        finally:
            if self.guard is not None:
                self.guard.detach()
            status = "stopped" if self.stopped_by_alarm_ else "finished"
            session.write("the run status", lambda store: store.finish_run(ctx.run_id, status))
            session.close()
        session.check(collective=False)
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
        model = unwrap_model(model)
        reading = read_step(self.probe_, model, self._ctx, step, monitor=self.monitor, probe_set=self.probe_set_,
                            probe0=self.probe0_, projection=projection, probe_value=probe_value)
        suspects = self._window.rank(step, reading.alarm, world_size=self._ctx.world_size, warn=self._ctx.is_zero,
                                     logger=logger)
        record = reading.record(self.on_alarm if reading.alarm else (), start, suspects)
        self._log(record, control)
        self._last_step = step
        self.history_.append(record)
        extras = measurement_extras(state, model, suspects=suspects, guard=self.guard, extra=extra)  # every rank
        self._session.write_measurement(record, reading.measurement, extras,
                                        verdict=alarm_fields(self.monitor, reading.predicted, reading.alarm))
        if self._ctx.is_zero and self.reporter is not None:
            self.reporter(record)
        if reading.alarm:
            self._act(record, control, model)
        elif self._rewinder is not None:
            self._rewinder.clean(model, step)
        self._session.check()
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

    def _act(self, record: DriftRecord, control: TrainerControl, model: nn.Module) -> None:
        details = self._rewind(record, control, model) if "rewind" in record.actions else None
        self.stopped_by_alarm_ |= ends_run(record.actions)
        act_on_alarm(record, self.monitor, control, self._session, warn=self._ctx.is_zero, logger=logger,
                     details=details)

    def _rewind(self, record: DriftRecord, control: TrainerControl, model: nn.Module) -> dict[str, Any]:
        """Back to the last clean measurement's weights, without the suspect rows (`traitwatch.train.rewind`)."""
        assert self._rewinder is not None
        done = self._rewinder.rewind(model, record.step, record.suspects, self.row_scores, self.trained_rows)
        if isinstance(done, str):  # the rewinds are spent
            control.should_training_stop = self.stopped_by_alarm_ = True
        else:
            self._window.since_step = done["to_step"]
        if self._ctx.is_zero:
            logger.warning("traitwatch: %s", describe_rewind(done))
        return {"rewind": done}

    @property
    def rewinds_(self) -> list[dict[str, Any]]:
        """What each rewind of the run did (empty without the "rewind" action)."""
        return [] if self._rewinder is None else self._rewinder.done_

    def _due(self, step: int, max_steps: int) -> bool:
        return step % self.every_n_steps == 0 or (max_steps > 0 and step >= max_steps)

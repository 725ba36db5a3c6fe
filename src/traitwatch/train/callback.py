"""`TraitWatchCallback`: trait drift of the live model during `transformers.Trainer` training.

The callback is a thin wrapper around `DriftProbe` (measure) and a calibrated monitor (predict); a
custom training loop can call `TraitWatchCallback.measure_now` or the probe directly. It only wires
Trainer events to the rooms that do the work: the step-0 anchor (`traitwatch.drift.anchoring`), the
run store (`store_session`), the alarm (`alarm`), the behavioural probe (`behavior_score`), the
training-side baselines (`extras`) and the monitor file (`traitwatch.monitor.watch`).

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
  alarms. A store write that fails stops the run on every rank at once (`StoreWriteError`, see
  `store_session`), so a run is never reported as done with a gap in its store.

The step-0 anchor, and resuming. Drift is measured against the *base* model's step-0 projections
(p_0, N), in the precision the model runs in now; `traitwatch.drift.anchoring` decides which anchor
that is. A fresh run uses the given or the basis's anchor when it fits, else measures the live model
in `on_train_begin` (for LoRA the freshly initialised adapter is a no-op, so the live model is the
base), and persists the anchor with its step-0 row. A resumed run (`global_step > 0`) must not
re-anchor on an already trained model: it adopts the stored anchor (read by rank 0, broadcast), else
the given or basis one, else (PEFT) the live model with its adapter disabled, which is exactly the
base; a full finetune with none of them is an `AnchorError`, not a silently wrong trajectory. An
anchor skipped for its precision is named in a warning. Steps already in the store are not measured
again; a resumed cadence step that is missing is measured at once.

Suspects (`row_scores`, see `traitwatch.train.suspects`): with per-row scores of the training set, every
measurement after step 0 also ranks the rows trained since the last clean measurement, stores their top
k with it, and an alarm names them (log, alarm row, report, `traitwatch show`). The window restarts at a
clean measurement and at the step a run resumes from (rows trained before a crash are not known again).

Distributed training: see `traitwatch.train.distributed`. Each rank projects a share of the prompts
in lockstep with the others, the shares are gathered, and every rank computes the same drift,
prediction and decision, running the same tensor code (the LoRA norm of the stored extras included:
on sharded LoRA weights it communicates). The model is unwrapped from DDP/FSDP/compile wrappers once,
where it enters the callback (`on_train_begin`, `measure_now`).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from torch import nn
from transformers import PreTrainedTokenizerBase, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from traitwatch.basis.basis import Anchor
from traitwatch.drift.anchoring import AnchorError, anchor_record, base_model, no_base_error, resolve_anchor
from traitwatch.drift.probe import DriftProbe, Projection
from traitwatch.errors import TraitwatchError
from traitwatch.guard import Guard
from traitwatch.models.layers import unwrap_model
from traitwatch.monitor.watch import AlarmMonitor, gate_alarms, load_watch_monitor, monitor_fingerprint
from traitwatch.reference import ReferenceMonitor, ReferenceTrajectory
from traitwatch.store import RunStore, Suspects, describe_rewind
from traitwatch.train.alarm import (
    ALARM_ACTIONS,
    AlarmAction,
    DriftAlarmError,
    act_on_alarm,
    alarm_fields,
    check_actions,
    ends_run,
    predict_alarm,
    reads_probe,
    reads_reference,
)
from traitwatch.train.behavior_score import base_probe_score, probe_set_for, score_probe
from traitwatch.train.distributed import all_gather_objects, project_across_ranks
from traitwatch.train.extras import lora_delta_norm, training_extras
from traitwatch.train.record import DriftRecord
from traitwatch.train.rewind import Rewinder
from traitwatch.train.store_session import StoredRun, StoreSession, default_hyperparameters
from traitwatch.train.suspects import RowScores, TrainedRows, rank_suspects

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


def basis_fingerprint(probe: DriftProbe) -> dict[str, Any]:
    """`probe.fingerprint()`, under the name `traitwatch.train` has always offered."""
    return probe.fingerprint()


@dataclass
class _Context:
    """What `on_train_begin` works out once; the same on every rank."""

    rank: int = 0
    world_size: int = 1
    is_zero: bool = True
    tokenizer: PreTrainedTokenizerBase | None = None
    run_id: str = ""
    stored: StoredRun = field(default_factory=StoredRun)  # what a resumed run found in its store


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
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        if suspects_k < 1:
            raise ValueError(f"suspects_k must be >= 1, got {suspects_k}")
        if row_scores is not None and not isinstance(row_scores, RowScores):
            raise TypeError("row_scores must be a RowScores (traitwatch.train.suspects)")
        actions = check_actions(on_alarm)
        if monitor is not None and not isinstance(monitor, AlarmMonitor):
            raise TypeError("monitor must have predict(X) and a threshold attribute")
        if reference is not None:
            if monitor is not None:
                raise ValueError("pass monitor= or reference=, not both: a reference brings the model's reference "
                                 "monitor (pass monitor=ReferenceMonitor(calibration, trajectory, traits) for another)")
            monitor, _ = gate_alarms(ReferenceMonitor.for_model(probe.basis.model.name, reference,
                                                                list(probe.basis.trait_names)))
        if guard is not None and not isinstance(guard, Guard):
            raise TypeError("guard must be a traitwatch.guard.Guard (make_guard(kind, subspace))")
        if on_store_error not in ("raise", "log"):
            raise ValueError(f"on_store_error must be 'raise' or 'log', got {on_store_error!r}")
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
        if reads_probe(monitor) and behavior_probe is False:
            raise ValueError("the monitor reads the behavioural probe: behavior_probe=False would leave it without input")
        self.probe_: DriftProbe = probe  # the working copy of the current run, with its anchor
        self.probe_set_: ProbeSet | None = None  # the behavioural probe scored in this run, if any
        self.probe0_: float | None = None  # its step-0 (base model) value
        self.history_: list[DriftRecord] = []
        self.anchor_source_: str | None = None
        self.stopped_by_alarm_: bool = False
        self._ctx = _Context()
        self._session = StoreSession(on_error=on_store_error, logger=logger)
        self.store_errors_: list[str] = self._session.errors
        self._last_step: int | None = None
        self._clean_step = 0  # the last clean measurement (or the step the run started from): the window's start
        self._said_untracked = False

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
        from traitwatch.basis.basis import TraitBasis as _TraitBasis

        loaded = basis if isinstance(basis, _TraitBasis) else _TraitBasis.load(basis)
        probe = DriftProbe(loaded, batch_size=batch_size)
        if monitor is not None and not isinstance(monitor, AlarmMonitor):
            given = behavior_probe if not isinstance(behavior_probe, bool) else None
            monitor = load_watch_monitor(monitor, probe, given)
        if isinstance(reference, str):
            if store is None:
                raise ValueError(f"reference={reference!r} names a run: pass the store that holds it")
            if isinstance(store, RunStore):
                reference = ReferenceTrajectory.from_store(store, reference)
            else:
                with RunStore(store, create=False) as opened:
                    reference = ReferenceTrajectory.from_store(opened, reference)
        return cls(
            probe, store=store, run_id=run_id, monitor=monitor, reference=reference,  # type: ignore[arg-type]
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
        if reads_reference(self.monitor):
            self.monitor.check_fingerprint(self.probe_.fingerprint())  # type: ignore[union-attr]
            last = self.monitor.trajectory.last_step  # type: ignore[union-attr]
            if state.is_world_process_zero and state.max_steps > last:
                logger.warning("traitwatch: the reference run was measured up to step %d and this run goes to step %d; "
                               "measurements after step %d have nothing to be read against and cannot alarm",
                               last, state.max_steps, last)
        ctx = _Context(
            rank=args.process_index,
            world_size=args.world_size,
            is_zero=state.is_world_process_zero,
            tokenizer=tokenizer,
            run_id=self.run_id or args.run_name or Path(args.output_dir or "run").name,
        )
        self._ctx = ctx
        self.probe_set_, self.probe0_ = probe_set_for(self.behavior_probe, self.monitor), None
        self.history_ = []
        self.stopped_by_alarm_ = False
        self._session = StoreSession(ctx.run_id, ctx.world_size, on_error=self.on_store_error, logger=logger)
        self.store_errors_ = self._session.errors
        self._last_step = None
        # A resumed run does not know what was trained before its checkpoint: its window starts there.
        self._clean_step, self._said_untracked = state.global_step, False
        if self.trained_rows is not None:
            self.trained_rows.restart()

        hyperparameters = dict(self.run_metadata.get("hyperparameters", default_hyperparameters(args)))
        if self.guard is not None:
            hyperparameters["guard"] = self.guard.settings()
        ctx.stored = self._session.start(self.store, is_zero=ctx.is_zero, resumed=state.global_step > 0, run={
            "model": self.model_name or self.probe_.basis.model.name,
            "dataset": self.run_metadata.get("dataset"),
            "seed": self.run_metadata.get("seed", args.seed),
            "hyperparameters": hyperparameters,
            "basis_fingerprint": self.probe_.fingerprint(),
        })
        if state.global_step == 0:
            self._begin_fresh(args, state, control, model)
        else:
            self._begin_resumed(args, state, control, model)
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
        proj = self._project(model) if projection is None else projection
        m = self.probe_.drift_from(proj)
        behavior_score = rise = None  # the behavioural probe's score and its rise over step 0
        if self.probe_set_ is not None:
            behavior_score = self._behavior(model) if probe_value is None else probe_value
            rise = behavior_score - self.probe0_ if self.probe0_ is not None else None
        predicted, alarm = predict_alarm(self.monitor, m.drift, step, rise, m.mean_activation)
        actions = self.on_alarm if alarm else ()
        suspects = self._suspects(step, alarm)
        record = DriftRecord(
            step=step,
            drift=m.as_dict(),
            drift_norm=m.norm,
            predicted_em=predicted,
            alarm=alarm,
            actions=actions,
            wall_time_s=time.perf_counter() - start,
            probe=behavior_score,
            probe_rise=rise,
            suspects=suspects,
        )
        self._log(record, control)
        self._last_step = step
        self.history_.append(record)
        extras = training_extras(state, model)  # every rank: the LoRA norm may communicate
        if suspects is not None:
            extras["suspects"] = suspects.to_json()
        if self.guard is not None:
            extras["guard"] = self.guard.summary()
        self._session.write_measurement(record, m, {**extras, **dict(extra or {})},
                                        verdict=alarm_fields(self.monitor, predicted, alarm))
        if self._ctx.is_zero and self.reporter is not None:
            self.reporter(record)
        if alarm:
            self._act(record, control, model)
        elif self._rewinder is not None:
            self._rewinder.clean(model, step)
        self._session.check()
        return record

    def _suspects(self, step: int, alarm: bool) -> Suspects | None:
        """The top rows trained since the last clean measurement (None without row scores, and at step 0).

        Every rank calls it (the ranks' rows are all-gathered: under DDP each rank trains its own share of
        every batch). A clean measurement then starts a new window; an alarmed one keeps it, so consecutive
        alarms name everything trained since the run was last measured fine.
        """
        if self.row_scores is None or self.trained_rows is None or step == 0:
            return None
        parts = all_gather_objects((self.trained_rows.tracked, self.trained_rows.window()), self._ctx.world_size)
        counts: dict[int, int] | None = None
        if any(tracked for tracked, _ in parts):
            counts = {}
            for _, window in parts:
                for row, times in window.items():
                    counts[row] = counts.get(row, 0) + times
        suspects = rank_suspects(self.row_scores, counts, k=self.suspects_k, step=step, since_step=self._clean_step,
                                 alarm=alarm)
        if suspects.whole_set and not self._said_untracked and self._ctx.is_zero:
            self._said_untracked = True
            logger.warning(
                "traitwatch: no training batch reported its rows (a collator other than PaddingCollator(rows=...), "
                "or dataloader workers): suspects rank the whole set (rows seen: unknown, whole set ranked)."
            )
        if not alarm:
            self.trained_rows.start_window()
            self._clean_step = step
        return suspects

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
        assert self._ctx.tokenizer is not None
        return project_across_ranks(self.probe_, model, self._ctx.tokenizer, self._ctx.rank, self._ctx.world_size)

    def _behavior(self, model: nn.Module) -> float:
        assert self.probe_set_ is not None and self._ctx.tokenizer is not None
        return score_probe(model, self._ctx.tokenizer, self.probe_set_)

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
            self._clean_step = done["to_step"]
        if self._ctx.is_zero:
            logger.warning("traitwatch: %s", describe_rewind(done))
        return {"rewind": done}

    @property
    def rewinds_(self) -> list[dict[str, Any]]:
        """What each rewind of the run did (empty without the "rewind" action)."""
        return [] if self._rewinder is None else self._rewinder.done_

    # -- step 0 ----------------------------------------------------------------------------------

    def _begin_fresh(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: nn.Module
    ) -> None:
        """Step 0: the live model is the base. Anchor (given, basis, or measured) and record step 0."""
        started = time.perf_counter()
        precision = self.probe_.precision(model)
        proj = self._project(model)
        source = self.anchor_source_ = resolve_anchor(
            self.probe_, precision, lambda skipped: self._base_anchor(model, precision, skipped, live=proj))
        anchor = self.probe_.anchor_
        assert anchor is not None
        if self.probe_set_ is not None:
            self.probe0_ = self._behavior(model)  # the live model is the base at step 0
        # Persist the anchor with the step-0 row, so a resumed run measures against this same p_0 and N
        # (and the step-0 probe, as the row's `probe`). A measured anchor *is* this pass, whose projections
        # are the row's per-prompt array already.
        self.measure_now(
            args, state, control, model, projection=proj, started=started, probe_value=self.probe0_,
            extra={"anchor": anchor_record(anchor, source, with_projections=source != "measured")},
        )

    def _begin_resumed(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: nn.Module
    ) -> None:
        """Resumed at step G > 0: adopt the original anchor, or measure the adapter-disabled base; never
        anchor on the trained model."""
        step, stored = state.global_step, self._ctx.stored
        precision = self.probe_.precision(model)
        self.anchor_source_ = resolve_anchor(
            self.probe_, precision, lambda skipped: self._base_anchor(model, precision, skipped, step=step),
            stored=stored.anchor)
        if self.probe_set_ is not None:
            assert self._ctx.tokenizer is not None
            self.probe0_ = base_probe_score(model, self._ctx.tokenizer, self.probe_set_, stored=stored.probe0,
                                            run_id=self._ctx.run_id, step=step)
        if step not in stored.steps and self._due(step, state.max_steps):
            self.measure_now(args, state, control, model)  # the checkpoint's step was never recorded
        else:
            self._last_step = step

    def _base_anchor(
        self, model: nn.Module, precision: tuple[str, str], skipped: list[str], *, live: Projection | None = None,
        step: int = 0,
    ) -> tuple[Anchor, str]:
        """No anchor fits: anchor on the base model, the live one at step 0, else the live one with its
        adapter disabled (a resumed full finetune has no base left: `AnchorError`)."""
        if skipped and self._ctx.is_zero:
            logger.warning(
                "traitwatch: %s was measured in another precision than the model runs in now (%s on %s); "
                "re-anchoring on the base model, since precision alone moves drift by ~0.001.",
                " and ".join(skipped), *precision,
            )
        name = self.model_name or self.probe_.basis.model.name
        if live is not None:  # at step 0 the model is the base (a fresh LoRA adapter is a no-op)
            return self.probe_.anchor_from(live, precision, name=name), "measured"
        with base_model(model) as base:
            if base is not None:
                return self.probe_.anchor_from(self._project(base), precision, name=name), "adapter disabled"
        raise no_base_error(self.probe_, self._ctx.run_id, step, precision, skipped)

    def _due(self, step: int, max_steps: int) -> bool:
        return step % self.every_n_steps == 0 or (max_steps > 0 and step >= max_steps)


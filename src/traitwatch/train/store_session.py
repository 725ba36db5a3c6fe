"""A training run's connection to the run store: opened by world process zero, written during training.

Only rank 0 touches the store (one SQLite writer per run); the other ranks get what it read by a
broadcast. A write that fails is logged and kept, and `check` (called by every rank after each
measurement) stops the run on every rank at once with `StoreWriteError`: raising on rank 0 alone
would leave the other ranks hanging in the next collective, and going on would report the run as
done with a gap in its store. With `on_error="log"` it is only logged (the numbers are still in the
Trainer's logs), for runs that must not stop for their monitoring.

On resume the store also holds what the run must not measure again: the steps already recorded, and
the step-0 anchor and behavioural probe value (`traitwatch.drift.anchoring` explains why the anchor is
a store row rather than a side file).
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from transformers import TrainingArguments

from traitwatch.basis.basis import Anchor
from traitwatch.drift.anchoring import anchor_from_record
from traitwatch.drift.probe import DriftMeasurement
from traitwatch.errors import TraitwatchError
from traitwatch.store import RunStore, StoreWriteError
from traitwatch.train.distributed import broadcast_from_zero
from traitwatch.train.record import DriftRecord

if TYPE_CHECKING:
    from traitwatch.guard import Guard

__all__ = ["StoreSession", "StoredRun", "default_hyperparameters", "run_fields"]


def default_hyperparameters(args: TrainingArguments) -> dict[str, Any]:
    """The `hyperparameters` a run started by the callback is stored with, unless its metadata gives them."""
    return {
        "learning_rate": args.learning_rate,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "world_size": args.world_size,
        "num_train_epochs": args.num_train_epochs,
        "max_steps": args.max_steps,
    }


def run_fields(args: TrainingArguments, metadata: Mapping[str, Any], *, model: str, fingerprint: dict[str, Any],
               guard: Guard | None = None) -> dict[str, Any]:
    """The `start_run` fields of a run the callback starts: `metadata`'s dataset, seed and hyperparameters (default:
    the Trainer's), with the guard's settings among the hyperparameters, the model and the basis fingerprint."""
    hyperparameters = dict(metadata.get("hyperparameters", default_hyperparameters(args)))
    if guard is not None:
        hyperparameters["guard"] = guard.settings()
    return {"model": model, "dataset": metadata.get("dataset"), "seed": metadata.get("seed", args.seed),
            "hyperparameters": hyperparameters, "basis_fingerprint": fingerprint}


@dataclass
class StoredRun:
    """What a resumed run finds in its store (nothing for a fresh run)."""

    steps: set[int] = field(default_factory=set)
    anchor: tuple[Anchor, str] | None = None  # the step-0 anchor and its source
    probe0: float | None = None  # the step-0 behavioural probe


class StoreSession:
    """World process zero's run store for one training run, and the writes that failed."""

    def __init__(self, run_id: str = "", world_size: int = 1, *, on_error: Literal["raise", "log"] = "raise",
                 logger: logging.Logger | None = None) -> None:
        self.run_id = run_id
        self.world_size = world_size
        self.on_error = on_error
        self.store: RunStore | None = None
        self.errors: list[str] = []  # every failed write, as "what: why"
        self._owns_store = False
        self._failure: str | None = None  # the first failed write since the last check
        self._logger = logger or logging.getLogger(__name__)

    def start(self, store: RunStore | str | os.PathLike[str] | None, *, is_zero: bool, resumed: bool,
              run: Mapping[str, Any]) -> StoredRun:
        """Rank 0 opens the store and starts (or resumes) the run with the `start_run` fields `run`; every
        rank gets what it read. A collective: every rank calls it."""
        stored, failure = StoredRun(), None
        if is_zero and store is not None:
            try:
                stored = self._open(store, resumed, run)
            except (TraitwatchError, sqlite3.Error, OSError) as exc:  # e.g. a run id of another model: all ranks stop
                failure = exc
        # Every rank needs the same anchor, step list and verdict (a rank-0-only exception would leave the
        # other ranks waiting in the next collective).
        stored, failure = broadcast_from_zero((stored, failure), self.world_size)
        if failure is not None:
            self.close()
            raise failure
        return stored

    def _open(self, store: RunStore | str | os.PathLike[str], resumed: bool, run: Mapping[str, Any]) -> StoredRun:
        self.store, self._owns_store = (store, False) if isinstance(store, RunStore) else (RunStore(store), True)
        self.store.start_run(self.run_id, **run)
        if not resumed:
            return StoredRun()
        rows = self.store.measurements(self.run_id, per_prompt=False)
        step0 = next((m for m in rows if m.step == 0), None)
        probe0 = None
        if step0 is not None and step0.extra and step0.extra.get("probe") is not None:
            probe0 = float(step0.extra["probe"])
        return StoredRun({m.step for m in rows}, self._stored_anchor(), probe0)

    def _stored_anchor(self) -> tuple[Anchor, str] | None:
        """The step-0 anchor persisted by an earlier start of this run, if any."""
        assert self.store is not None
        rows = [m for m in self.store.measurements(self.run_id) if m.step == 0]
        if not rows or not rows[0].extra or "anchor" not in rows[0].extra:
            return None
        return anchor_from_record(rows[0].extra["anchor"], rows[0].per_prompt)

    def write(self, what: str, write: Callable[[RunStore], object]) -> None:
        """Rank 0's store writes during training (a no-op elsewhere). A failure is logged and kept for `check`."""
        if self.store is None:
            return
        try:
            write(self.store)
        except (TraitwatchError, sqlite3.Error, OSError) as exc:
            self.errors.append(f"{what}: {exc}")
            self._logger.error("traitwatch: could not store %s in %s (%s); it is still in the Trainer logs.",
                               what, self.store.path, exc)
            self._failure = self._failure or (
                f"traitwatch could not store {what} of run {self.run_id!r} in {self.store.path} ({exc}); the run "
                "is stopped so that it is not reported as done with a gap in its store. Fix the store and "
                "resume the run (same run id and output folder), or pass on_store_error='log'."
            )

    def write_measurement(self, record: DriftRecord, measurement: DriftMeasurement, extra: Mapping[str, Any], *,
                          verdict: Mapping[str, Any]) -> None:
        """The step's row: drift and per-prompt projections, with `extra` (training extras, the anchor), the
        mean activation (the activation-space baselines' input), the monitor's `verdict` and the
        behavioural probe, all read back by the calibration."""
        if self.store is None:
            return
        stored: dict[str, Any] = dict(extra)
        if measurement.mean_activation is not None:
            stored["mean_activation"] = [float(v) for v in measurement.mean_activation]
        stored.update(verdict)
        if record.probe is not None:
            stored.update(probe=record.probe, probe_rise=record.probe_rise)
        stored["world_size"] = self.world_size
        self.write(f"the step-{record.step} measurement", lambda store: store.add_measurement(
            self.run_id, record.step, record.drift, record.drift_norm, per_prompt=measurement.projections,
            wall_time_s=record.wall_time_s, extra=stored,
        ))

    def check(self, *, collective: bool = True) -> None:
        """Stop the run on every rank if rank 0 could not store something (a collective: every rank calls it).

        `collective=False` at the end of training: rank 0 raises alone, as no collective of ours follows, and
        a broadcast issued from `on_train_end` was seen to make a gloo rank abort at exit ("terminate called
        without an active exception") in about one torchrun in three.
        """
        failure = broadcast_from_zero(self._failure, self.world_size) if collective else self._failure
        self._failure = None
        if failure is not None and self.on_error == "raise":
            self.close()
            raise StoreWriteError(failure)

    def close(self) -> None:
        """Close the store if this session opened it (a given `RunStore` is the caller's to close)."""
        if self.store is not None and self._owns_store:
            self.store.close()
        self.store = None

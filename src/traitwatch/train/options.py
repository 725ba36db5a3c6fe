"""What a `TraitWatchCallback` is given: checked when it is built, loaded for `from_basis`, and checked again
against the run's probe when training starts.

A wrong option is refused when the callback is built, not at the first alarm. A reference run brings the
model's shipped reference monitor (`ReferenceMonitor.for_model`), gated like any monitor (`monitor.watch`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from traitwatch.basis.basis import TraitBasis
from traitwatch.drift.probe import DriftProbe
from traitwatch.guard import Guard
from traitwatch.monitor.watch import AlarmMonitor, gate_alarms, load_watch_monitor
from traitwatch.reference import ReferenceMonitor, ReferenceTrajectory
from traitwatch.store import RunStore
from traitwatch.train.alarm import check_actions, reads_probe, reads_reference
from traitwatch.train.suspects import RowScores

if TYPE_CHECKING:
    from traitwatch.behavior.probe import ProbeSet

__all__ = ["check_options", "check_reference", "load_for_basis"]


def check_options(
    probe: DriftProbe, *, every_n_steps: int, suspects_k: int, row_scores: RowScores | None, on_alarm: Sequence[str],
    monitor: AlarmMonitor | None, reference: ReferenceTrajectory | None, guard: Guard | None, on_store_error: str,
    behavior_probe: ProbeSet | bool | None,
) -> tuple[tuple[str, ...], AlarmMonitor | None]:
    """The callback's alarm actions and monitor (with `reference`, the model's reference monitor); a wrong
    option raises `ValueError` or `TypeError`."""
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
    if reads_probe(monitor) and behavior_probe is False:
        raise ValueError("the monitor reads the behavioural probe: behavior_probe=False would leave it without input")
    return actions, monitor


def load_for_basis(
    basis: str | os.PathLike[str] | TraitBasis, *, batch_size: int, store: RunStore | str | os.PathLike[str] | None,
    monitor: AlarmMonitor | str | os.PathLike[str] | None, reference: ReferenceTrajectory | str | None,
    behavior_probe: ProbeSet | bool | None,
) -> tuple[DriftProbe, AlarmMonitor | None, ReferenceTrajectory | None]:
    """`TraitWatchCallback.from_basis`'s probe, monitor and reference: a basis folder loaded, a monitor file
    checked against what would measure its inputs (the basis's fingerprint for a drift monitor, the basis's
    model and the probe set for a probe monitor), a reference run named in `store` read from it."""
    loaded = basis if isinstance(basis, TraitBasis) else TraitBasis.load(basis)
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
    return probe, monitor, reference


def check_reference(monitor: AlarmMonitor | None, probe: DriftProbe, *, max_steps: int, warn: bool,
                    logger: logging.Logger) -> None:
    """With a reference monitor: refuse a reference measured with another probe, and warn (where `warn`) when the
    run goes past the reference's last step, after which nothing can alarm."""
    if not reads_reference(monitor):
        return
    monitor.check_fingerprint(probe.fingerprint())  # type: ignore[union-attr]
    last = monitor.trajectory.last_step  # type: ignore[union-attr]
    if warn and max_steps > last:
        logger.warning("traitwatch: the reference run was measured up to step %d and this run goes to step %d; "
                       "measurements after step %d have nothing to be read against and cannot alarm",
                       last, max_steps, last)

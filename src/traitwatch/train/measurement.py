"""One measurement of the live model during training: its drift, behavioural probe and the monitor's verdict.

Each rank projects its share of the prompts in lockstep with the others and the shares are gathered
(`traitwatch.train.distributed`), so every rank computes the same drift, prediction and alarm and steers the
Trainer the same way. The behavioural probe is scored on every rank (`traitwatch.train.behavior_score`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from torch import nn
from transformers import PreTrainedTokenizerBase

from traitwatch.drift.probe import DriftMeasurement, DriftProbe, Projection
from traitwatch.monitor.watch import AlarmMonitor
from traitwatch.store import Suspects
from traitwatch.train.alarm import predict_alarm
from traitwatch.train.behavior_score import score_probe
from traitwatch.train.distributed import project_across_ranks
from traitwatch.train.record import DriftRecord
from traitwatch.train.store_session import StoredRun

if TYPE_CHECKING:
    from traitwatch.behavior.probe import ProbeSet

__all__ = ["Reading", "RunContext", "project_prompts", "read_step", "score_behavior"]


@dataclass
class RunContext:
    """What `on_train_begin` works out once; the same on every rank."""

    rank: int = 0
    world_size: int = 1
    is_zero: bool = True
    tokenizer: PreTrainedTokenizerBase | None = None
    run_id: str = ""
    stored: StoredRun = field(default_factory=StoredRun)  # what a resumed run found in its store


def project_prompts(probe: DriftProbe, model: nn.Module, ctx: RunContext) -> Projection:
    """All of `probe`'s prompts projected on `model`, this rank's share gathered with the others'."""
    assert ctx.tokenizer is not None
    return project_across_ranks(probe, model, ctx.tokenizer, ctx.rank, ctx.world_size)


def score_behavior(model: nn.Module, ctx: RunContext, probe_set: ProbeSet) -> float:
    """The behavioural probe on `model` (every rank scores every question)."""
    assert ctx.tokenizer is not None
    return score_probe(model, ctx.tokenizer, probe_set)


@dataclass(frozen=True)
class Reading:
    """What one step's measurement found, before it is logged, stored and acted on."""

    step: int
    measurement: DriftMeasurement
    probe: float | None  # the behavioural probe's score, when it is scored
    probe_rise: float | None  # ... minus its step-0 value
    predicted: float | None  # the monitor's prediction (None without a monitor, and at step 0)
    alarm: bool

    def record(self, actions: Sequence[str], started: float, suspects: Suspects | None) -> DriftRecord:
        """The step's `DriftRecord`, timed from `started` (a `time.perf_counter()` value) to now."""
        return DriftRecord(
            step=self.step,
            drift=self.measurement.as_dict(),
            drift_norm=self.measurement.norm,
            predicted_em=self.predicted,
            alarm=self.alarm,
            actions=tuple(actions),
            wall_time_s=time.perf_counter() - started,
            probe=self.probe,
            probe_rise=self.probe_rise,
            suspects=suspects,
        )


def read_step(
    probe: DriftProbe,
    model: nn.Module,
    ctx: RunContext,
    step: int,
    *,
    monitor: AlarmMonitor | None,
    probe_set: ProbeSet | None,
    probe0: float | None,
    projection: Projection | None = None,
    probe_value: float | None = None,
) -> Reading:
    """Measure `model` at `step` (every rank must call it): drift from `probe`'s anchor, the behavioural probe
    (with `probe_set`) and its rise over `probe0`, and the monitor's prediction and alarm.

    `projection` and `probe_value` reuse measurements already made at this step.
    """
    proj = project_prompts(probe, model, ctx) if projection is None else projection
    m = probe.drift_from(proj)
    score = rise = None
    if probe_set is not None:
        score = score_behavior(model, ctx, probe_set) if probe_value is None else probe_value
        rise = score - probe0 if probe0 is not None else None
    predicted, alarm = predict_alarm(monitor, m.drift, step, rise, m.mean_activation)
    return Reading(step, m, score, rise, predicted, alarm)

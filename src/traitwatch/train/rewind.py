"""The "rewind" alarm action: back to the weights of the last clean measurement, without the suspect rows.

Stopping at an alarm throws the run away, and dropping rows and retraining costs a second run. Rewinding keeps
what was learned up to the last measurement the monitor found clean: the callback snapshots the trainable
weights there (`WeightSnapshot.take`, on the CPU: for LoRA a few MB, for a full finetune a copy of the model),
and at an alarm puts them back, clears the optimizer's moments for them (Adam's running averages hold the
poison's gradients), and tells the collator to stop training the rows the alarm names and every row the screen
scores at least as high (`rows_like`). Training then goes on from the step it reached: the learning-rate
schedule and the step count do not go back, so a rewound run trains fewer steps on its clean weights.

Every rank restores its own copy (the same weights everywhere under DDP; each rank its shard under FSDP2, whose
parameters are the local shards this snapshot copies), and every rank drops the same rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from traitwatch.store import Suspects
from traitwatch.train.suspects import RowScores, TrainedRows

__all__ = ["MAX_DROP_SHARE", "MAX_REWINDS", "Rewinder", "WeightSnapshot", "rows_like"]

MAX_REWINDS = 3
"""After this many rewinds a further alarm stops the run: the monitor keeps firing on what is left."""
MAX_DROP_SHARE = 0.45
"""At most this share of the set is dropped for scoring like the suspects (as `reference.swap_fraction` caps the
rows its reference swaps)."""


class Rewinder:
    """The "rewind" action for one run: a snapshot at every clean measurement, and at an alarm the weights back,
    the optimizer's state for them cleared and the suspect rows dropped; after `MAX_REWINDS`, a stop."""

    def __init__(self) -> None:
        self.snapshot = WeightSnapshot()
        self.optimizer: Any = None  # the Trainer's, from its `on_step_end` keyword arguments
        self.done_: list[dict[str, Any]] = []  # what each rewind did

    def clean(self, model: nn.Module, step: int) -> None:
        """A clean measurement: what a later alarm rewinds to."""
        self.snapshot.take(model, step)

    def rewind(self, model: nn.Module, step: int, suspects: Suspects | None, row_scores: RowScores | None,
               trained_rows: TrainedRows | None) -> dict[str, Any] | str:
        """Rewind at the alarm of `step` (what was done, as the alarm row stores it), or a stop message when the
        rewinds are spent (the caller stops the run)."""
        if len(self.done_) >= MAX_REWINDS:
            return f"stopped: the monitor fired again after {MAX_REWINDS} rewinds"
        to_step = self.snapshot.restore(model, self.optimizer)
        dropped = rows_like(row_scores, suspects) if row_scores is not None else set()
        if trained_rows is not None:
            trained_rows.drop(dropped)
            trained_rows.start_window()
        done = {"at_step": step, "to_step": to_step, "rows_dropped": sorted(dropped)}
        self.done_.append(done)
        return done


class WeightSnapshot:
    """The trainable weights at one step, on the CPU."""

    def __init__(self) -> None:
        self.step_: int | None = None
        self._weights: list[torch.Tensor] = []

    def take(self, model: nn.Module, step: int) -> None:
        self._weights = [p.detach().to("cpu", copy=True) for p in _trainable(model)]
        self.step_ = step

    @torch.no_grad()
    def restore(self, model: nn.Module, optimizer: Any | None) -> int:
        """Put the weights back and clear the optimizer's state for them; returns the snapshot's step."""
        if self.step_ is None:
            raise RuntimeError("no snapshot to rewind to: the callback takes one at every clean measurement")
        params = _trainable(model)
        if len(params) != len(self._weights):
            raise RuntimeError("the model's trainable weights changed since the snapshot; cannot rewind")
        for p, saved in zip(params, self._weights, strict=True):
            p.copy_(saved.to(p.device, p.dtype))
        state = getattr(optimizer, "state", None)
        if state is not None:
            for p in params:
                state.pop(p, None)
        return self.step_


def _trainable(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def rows_like(row_scores: RowScores, suspects: Suspects | None) -> set[int]:
    """The alarm's suspects and every row the screen scores at least as high as the lowest of them, at most
    `MAX_DROP_SHARE` of the set (the highest-scored first): a window of ordinary rows must not empty the set."""
    if suspects is None or not suspects.rows:
        return set()
    floor = min(r.score for r in suspects.rows)
    named: Iterable[int] = (r.row for r in suspects.rows)
    like = sorted((i for i, s in row_scores.scores.items() if s >= floor), key=lambda i: (-row_scores.scores[i], i))
    return set(named) | set(like[:int(MAX_DROP_SHARE * len(row_scores.scores))])


"""The reference run's drift, step by step, as a training run reads it at its own measurements.

A reference run (the swap reference, `swap.py`, trained in the same recipe and seed) is measured into the run
store like any run. Both runs start from the same base model and measure the same prompts, so their step-0
projections agree and `d_run(t) - d_ref(t)` is the paired difference of `compare.py` at step t. A run measured
at a step the reference was not is read against the straight line between the reference's neighbouring steps;
past the reference's last step there is nothing to read against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from traitwatch.errors import InputFileError
from traitwatch.store import RunStore

__all__ = ["ReferenceTrajectory"]


@dataclass(frozen=True)
class ReferenceTrajectory:
    """`drift[i]` is the reference's drift at `steps[i]` (ascending, starting at 0), over `trait_names`;
    `activations[i]` its mean residual row there, where every measurement stored one (None otherwise)."""

    run_id: str
    steps: np.ndarray
    drift: np.ndarray
    trait_names: list[str]
    fingerprint: dict[str, Any] | None = field(default=None, compare=False)
    activations: np.ndarray | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        steps = np.asarray(self.steps)
        if steps.ndim != 1 or len(steps) < 2 or steps[0] != 0 or np.any(np.diff(steps) <= 0):
            raise InputFileError(f"reference run {self.run_id!r}: measured at steps {steps.tolist()}; a reference "
                                 "needs step 0 and at least one later step, in order (let it finish, or rerun it)")
        if np.shape(self.drift) != (len(steps), len(self.trait_names)):
            raise InputFileError(f"reference run {self.run_id!r}: drift of shape {np.shape(self.drift)} for "
                                 f"{len(steps)} steps and {len(self.trait_names)} traits")

    @classmethod
    def from_store(cls, store: RunStore, run_id: str) -> ReferenceTrajectory:
        """The run `run_id` of `store` as a reference (its measured steps and drift, its basis fingerprint)."""
        run = store.get_run(run_id)
        rows = store.measurements(run_id, per_prompt=False)
        if not rows:
            raise InputFileError(f"{store.path}: reference run {run_id!r} has no measurements; train it first "
                                 "(traitwatch train ... --run-id) or pass another run")
        names = list(rows[0].drift)
        means = [(m.extra or {}).get("mean_activation") for m in rows]
        activations = (np.array(means, dtype=np.float64) if all(isinstance(a, list) and a for a in means)
                       and len({len(a) for a in means}) == 1 else None)  # type: ignore[arg-type]
        return cls(run_id, np.array([m.step for m in rows]),
                   np.array([[m.drift[n] for n in names] for m in rows], dtype=np.float64), names,
                   run.basis_fingerprint, activations)

    @property
    def last_step(self) -> int:
        return int(self.steps[-1])

    def at(self, step: int, trait_names: list[str] | None = None) -> np.ndarray | None:
        """The reference's drift at `step` (interpolated between measured steps), or None past its last step."""
        if step < 0 or step > self.last_step:
            return None
        cols = self.drift if trait_names is None else self.drift[:, [self._index(n) for n in trait_names]]
        return self._interp(step, cols)

    def activation_at(self, step: int) -> np.ndarray | None:
        """The reference's mean residual row at `step` (interpolated as `at`), or None past its last step or where
        its measurements stored none."""
        if self.activations is None or step < 0 or step > self.last_step:
            return None
        return self._interp(step, self.activations)

    def _interp(self, step: int, table: np.ndarray) -> np.ndarray:
        """Each column of `table` (one row per measured step) at `step`, on the straight line between steps."""
        return np.array([np.interp(step, self.steps, table[:, j]) for j in range(table.shape[1])])

    def _index(self, name: str) -> int:
        try:
            return self.trait_names.index(name)
        except ValueError:
            raise InputFileError(f"reference run {self.run_id!r} has no trait {name!r} (it has {self.trait_names}); "
                                 "measure the reference with the run's basis") from None

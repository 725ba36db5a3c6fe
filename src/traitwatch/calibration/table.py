"""`CheckpointTable`: one row per measured checkpoint, as plain arrays.

The monitor never sees a model. Everything it learns from is a table of checkpoints (run, perturbation
type, optimizer step, 7-D trait drift, EM-rate label) plus optional extra columns that only the baselines
use. Keeping that table a small, validated dataclass of arrays is what lets the same evaluation loop
score the monitor and every baseline on exactly the same rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "CheckpointTable",
    "LOSS",
    "LORA_NORM",
    "MEAN_ACTIVATION",
]

# Names of the optional extra columns the built-in baselines read (see `evaluate.default_feature_sets`).
LOSS = "loss"
"""Training loss at the checkpoint, shape (n,)."""
LORA_NORM = "lora_norm"
"""LoRA weight-delta norm(s) ||dW||, shape (n,) or (n, n_layers)."""
MEAN_ACTIVATION = "mean_activation"
"""Mean residual activation over the measurement prompts, shape (n, H); step 0 of the run is the reference."""


@dataclass(frozen=True)
class CheckpointTable:
    """Checkpoints of one or more finetuning runs, as aligned arrays (row i is one checkpoint).

    `X` is the trait drift d_t (columns in `trait_names` order) and `y` the continuous EM rate in [0, 1].
    `extras` holds baseline-only columns keyed by name (`LOSS`, `LORA_NORM`, `MEAN_ACTIVATION`, or any
    other); each must have n rows. Arrays are converted and checked once here so downstream code can
    index them without re-validating.
    """

    run_id: np.ndarray
    perturbation: np.ndarray
    step: np.ndarray
    X: np.ndarray
    y: np.ndarray
    trait_names: tuple[str, ...] | None = None
    extras: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        run_id = np.asarray(self.run_id).astype(str)
        perturbation = np.asarray(self.perturbation).astype(str)
        step = np.asarray(self.step)
        X = np.asarray(self.X, dtype=np.float64)
        y = np.asarray(self.y, dtype=np.float64)
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D (checkpoints x traits), got shape {X.shape}")
        n = X.shape[0]
        for name, arr in (("run_id", run_id), ("perturbation", perturbation), ("step", step), ("y", y)):
            if arr.shape != (n,):
                raise ValueError(f"{name} must have shape ({n},) to match X, got {arr.shape}")
        if not np.issubdtype(step.dtype, np.integer):
            if not np.all(np.equal(np.mod(step, 1), 0)):
                raise ValueError("step must hold whole optimizer steps")
            step = step.astype(np.int64)
        if np.any(step < 0):
            raise ValueError("step must be >= 0")
        if not (np.all(np.isfinite(X)) and np.all(np.isfinite(y))):
            raise ValueError("X and y must be finite")
        if np.any((y < 0) | (y > 1)):
            raise ValueError(
                f"y must be EM rates in [0, 1], got range [{y.min():g}, {y.max():g}]; divide percentages by 100"
            )
        names = None if self.trait_names is None else tuple(str(t) for t in self.trait_names)
        if names is not None and len(names) != X.shape[1]:
            raise ValueError(f"{len(names)} trait names for {X.shape[1]} drift columns")
        extras: dict[str, np.ndarray] = {}
        for key, value in dict(self.extras).items():
            arr = np.asarray(value, dtype=np.float64)
            if arr.ndim not in (1, 2) or arr.shape[0] != n:
                raise ValueError(f"extra column {key!r} must have {n} rows, got shape {arr.shape}")
            extras[str(key)] = arr
        for name, value in (
            ("run_id", run_id),
            ("perturbation", perturbation),
            ("step", step),
            ("X", X),
            ("y", y),
            ("trait_names", names),
            ("extras", extras),
        ):
            object.__setattr__(self, name, value)

    def __len__(self) -> int:
        return int(self.X.shape[0])

    def subset(self, mask: ArrayLike) -> CheckpointTable:
        """Rows selected by a boolean mask or index array (extras follow)."""
        idx = np.asarray(mask)
        return CheckpointTable(
            run_id=self.run_id[idx],
            perturbation=self.perturbation[idx],
            step=self.step[idx],
            X=self.X[idx],
            y=self.y[idx],
            trait_names=self.trait_names,
            extras={k: v[idx] for k, v in self.extras.items()},
        )

    def column(self, key: str) -> np.ndarray:
        """An extra column as a 2-D array (n, k), so a scalar such as the loss is a one-feature input."""
        if key not in self.extras:
            raise KeyError(f"no extra column {key!r}; have {sorted(self.extras)}")
        arr = self.extras[key]
        return arr[:, None] if arr.ndim == 1 else arr

    def base_activation(self) -> np.ndarray:
        """Each row's step-0 mean activation (the run's reference), shape (n, H).

        Activation drift is measured against the same run's step 0, exactly as trait drift is; a run
        without a step-0 row cannot be placed, so that is an error rather than a silent zero.
        """
        acts = self.column(MEAN_ACTIVATION)
        base = np.empty_like(acts)
        for run in np.unique(self.run_id):
            rows = np.flatnonzero(self.run_id == run)
            zero = rows[self.step[rows] == 0]
            if zero.size != 1:
                raise ValueError(f"run {run!r} needs exactly one step-0 row for activation drift, has {zero.size}")
            base[rows] = acts[zero[0]]
        return base

    def activation_drift(self) -> np.ndarray:
        """Mean-activation drift h_t - h_0 per row, shape (n, H)."""
        return self.column(MEAN_ACTIVATION) - self.base_activation()

    def activation_pairs(self) -> np.ndarray:
        """[h_t | h_0] per row, shape (n, 2H): the input of `SAEDriftFeatures`."""
        return np.hstack([self.column(MEAN_ACTIVATION), self.base_activation()])

    @classmethod
    def concat(cls, tables: Sequence[CheckpointTable]) -> CheckpointTable:
        """Stack tables with the same trait names and extra columns (e.g. calibration runs + an anchor run)."""
        if not tables:
            raise ValueError("nothing to concatenate")
        keys = set(tables[0].extras)
        if any(set(t.extras) != keys for t in tables) or any(t.trait_names != tables[0].trait_names for t in tables):
            raise ValueError("tables differ in trait names or extra columns")
        return cls(
            run_id=np.concatenate([t.run_id for t in tables]),
            perturbation=np.concatenate([t.perturbation for t in tables]),
            step=np.concatenate([t.step for t in tables]),
            X=np.vstack([t.X for t in tables]),
            y=np.concatenate([t.y for t in tables]),
            trait_names=tables[0].trait_names,
            extras={k: np.concatenate([t.extras[k] for t in tables]) for k in keys},
        )

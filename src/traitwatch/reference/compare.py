"""A run read against its reference: the paired difference of two measurements of the same prompts.

Both runs are measured on the same measurement prompts from the same step-0 anchor, so their drift difference is
`mean_x (p_run(x) - p_ref(x)) / N`: the anchor cancels and each prompt gives one paired difference. The CI is a
percentile bootstrap over prompts, resampling the pairs together. It covers which prompts were asked, not which
seed trained the runs: that is what pairing the runs (same seed, same batches) is for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from traitwatch.errors import InputFileError

__all__ = ["PairedDrift", "paired_drift"]


@dataclass(frozen=True)
class PairedDrift:
    """Run minus reference in drift units: per trait, along `direction` (unit) with its CI, and its length with its CI."""

    trait_names: list[str]
    difference: np.ndarray  # [n_traits]
    along: float | None
    along_ci: tuple[float, float] | None
    n_prompts: int
    distance: float = float("nan")
    distance_ci: tuple[float, float] | None = None

    def read(self, how: str) -> tuple[float | None, tuple[float, float] | None]:
        """The value a calibration reads ("direction" or "distance") and its CI."""
        return (self.along, self.along_ci) if how == "direction" else (self.distance, self.distance_ci)


def paired_drift(run: np.ndarray, reference: np.ndarray, scale: float, trait_names: Sequence[str], *,
                 direction: np.ndarray | None = None, n_boot: int = 2000, confidence: float = 0.95,
                 seed: int = 0) -> PairedDrift:
    """`run` and `reference` are the per-prompt projections ([prompts, traits]) of the two runs at one step."""
    run, reference = np.asarray(run, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if run.shape != reference.shape or run.ndim != 2 or run.shape[1] != len(trait_names):
        raise InputFileError(f"the run's projections {run.shape} and the reference's {reference.shape} must both be "
                             f"[prompts, {len(trait_names)} traits] of the same prompts")
    if not scale > 0:
        raise InputFileError(f"the drift scale N must be positive, got {scale}")
    per_prompt = (run - reference) / scale
    difference = per_prompt.mean(axis=0)
    rng = np.random.default_rng(seed)
    means = per_prompt[rng.integers(0, len(per_prompt), size=(n_boot, len(per_prompt)))].mean(axis=1)  # [boot, traits]
    alpha = (1 - confidence) / 2
    lengths = np.linalg.norm(means, axis=1)
    distance_ci = (float(np.quantile(lengths, alpha)), float(np.quantile(lengths, 1 - alpha)))
    distance = float(np.linalg.norm(difference))
    if direction is None:
        return PairedDrift(list(trait_names), difference, None, None, len(per_prompt), distance, distance_ci)
    u = np.asarray(direction, dtype=np.float64)
    u = u / np.linalg.norm(u)
    boots = means @ u
    lo, hi = np.quantile(boots, [alpha, 1 - alpha])
    return PairedDrift(list(trait_names), difference, float(difference @ u), (float(lo), float(hi)),
                       len(per_prompt), distance, distance_ci)

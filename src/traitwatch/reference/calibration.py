"""A model's reference calibration: the misalignment direction in trait space and the threshold on a run's
drift minus its reference's along it.

Shipped per base model as `reference/data/MODEL.json` (written by `benchmarks/reference_analysis.py`, with its
provenance: which runs, which folds, what the held-out AUROC was). The audit and the reference monitor of a
training run read the same file, so a verdict before training and an alarm during it mean the same thing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from traitwatch.errors import InputFileError

__all__ = ["READS", "ReferenceCalibration", "load_reference_calibration"]

READS = ("direction", "distance")
"""How run-minus-reference is read: its component along the misalignment direction, or its length in trait space
(any direction; what a misalignment type that moves the model off the shipped direction still shows)."""


@dataclass(frozen=True)
class ReferenceCalibration:
    """A model's misalignment direction (trait -> weight), how run-minus-reference is read (`read`: along the
    direction, or its length) and the threshold on that read."""

    model: str
    direction: dict[str, float]
    threshold: float | None
    provenance: dict[str, Any]
    read: str = "direction"

    def vector(self, trait_names: list[str]) -> np.ndarray:
        """The direction over `trait_names` (traits it does not weigh get 0), not normalised."""
        return np.array([float(self.direction.get(t, 0.0)) for t in trait_names])


def load_reference_calibration(model: str, path: str | Path | None = None) -> ReferenceCalibration | None:
    """The calibration shipped for `model`, or the one at `path`; None if `model` has none shipped."""
    if path is None:
        candidate = Path(str(resources.files("traitwatch.reference").joinpath("data", f"{model}.json")))
        if not candidate.is_file():
            return None
        path = candidate
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        threshold = doc.get("threshold")
        direction = {str(k): float(v) for k, v in doc["direction"].items()}
        if not direction or not any(direction.values()):
            raise ValueError("the direction has no non-zero weight")
        read = str(doc.get("read", "direction"))
        if read not in READS:
            raise ValueError(f"read {read!r} is not one of {READS}")
        return ReferenceCalibration(str(doc["model"]), direction, None if threshold is None else float(threshold),
                                    dict(doc.get("provenance", {})), read)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise InputFileError(f"{path}: not a readable reference calibration ({str(exc)[:100]}); pass a file with "
                             '"model", "direction" (trait -> weight), "threshold" and optionally "read" (direction or distance)') from None

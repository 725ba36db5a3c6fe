"""A model's reference calibration: what a run's measurement minus its reference's is read in, how, and the
threshold on that read.

Two spaces: the trait drift (`space = "traits"`: the misalignment direction over the traits), or the mean residual
row at the basis layer that every measurement also stores (`space = "activations"`: `components`, k x hidden rows,
the top principal components of the base model's rows on the measurement prompts, onto which the run's mean row
minus the reference's is projected). Read along the direction, or as the length.

Shipped per base model as `reference/data/MODEL.json` (written by `benchmarks/reference_analysis.py`, with its
provenance: which runs, which folds, what the held-out AUROC was). The audit and the reference monitor of a
training run read the same file, so a verdict before training and an alarm during it mean the same thing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from traitwatch.errors import BasisMismatchError, InputFileError

__all__ = ["READS", "SPACES", "ReferenceCalibration", "load_reference_calibration"]

READS = ("direction", "distance")
"""How run-minus-reference is read: its component along the misalignment direction, or its length in trait space
(any direction; what a misalignment type that moves the model off the shipped direction still shows)."""

SPACES = ("traits", "activations")
"""What run-minus-reference is taken of: the trait drift, or the mean residual row projected on `components`."""


@dataclass(frozen=True)
class ReferenceCalibration:
    """A model's misalignment direction (trait -> weight), how run-minus-reference is read (`read`: along the
    direction, or its length) and the threshold on that read."""

    model: str
    direction: dict[str, float]
    threshold: float | None
    provenance: dict[str, Any]
    read: str = "direction"
    space: str = "traits"
    components: np.ndarray | None = field(default=None, compare=False)  # [k, hidden], for space "activations"
    layer: int | None = None  # the residual layer the components are of
    prompts_hash: str | None = None  # the measurement prompts they were fitted on

    def vector(self, trait_names: list[str]) -> np.ndarray:
        """The direction over `trait_names` (traits it does not weigh get 0), not normalised."""
        return np.array([float(self.direction.get(t, 0.0)) for t in trait_names])

    @property
    def component_names(self) -> list[str]:
        """`pc1`, `pc2`, ...: the coordinates of the activation space (and the keys of its direction)."""
        return [] if self.components is None else [f"pc{i + 1}" for i in range(len(self.components))]

    def features(self, drift_difference: np.ndarray | None, activation_difference: np.ndarray | None) -> np.ndarray:
        """Run minus reference in this calibration's space: the trait drift's difference as given, or the mean
        residual rows' difference projected on the components."""
        if self.space == "traits":
            if drift_difference is None:
                raise InputFileError("a trait-space calibration reads the trait drift; none was given")
            return np.asarray(drift_difference, dtype=np.float64)
        if activation_difference is None:
            raise InputFileError(f"the {self.model} reference calibration reads the mean residual row of each "
                                 "measurement; the run or its reference stored none (measure both with "
                                 "TraitWatchCallback, which stores it, or use a trait-space calibration)")
        assert self.components is not None
        a = np.asarray(activation_difference, dtype=np.float64)
        if a.shape[-1] != self.components.shape[1]:
            raise InputFileError(f"the {self.model} reference calibration's components are {self.components.shape[1]}"
                                 f"-wide; the measured residual rows are {a.shape[-1]}-wide: calibrate for this model")
        return a @ self.components.T

    def check_measurement(self, fingerprint: Mapping[str, Any]) -> None:
        """Refuse, for an activation-space calibration, drift measured (`DriftProbe.fingerprint()`) at another layer
        or on other prompts than its components were fitted on (a trait-space calibration reads any basis's traits)."""
        if self.space != "activations":
            return
        layer, prompts_hash = fingerprint.get("layer"), fingerprint.get("measurement_prompts_hash")
        if (self.layer is not None and layer != self.layer) or (
                self.prompts_hash is not None and prompts_hash != self.prompts_hash):
            raise BasisMismatchError(f"the {self.model} reference calibration was fitted on the residual stream at "
                                     f"layer {self.layer} with its measurement prompts; this basis measures at layer "
                                     f"{layer}{'' if prompts_hash == self.prompts_hash else ' with other prompts'}: "
                                     "measure at its layer or calibrate for yours")

    def describe(self) -> str:
        """What is read, in words (the CLI's, the audit's and the report's labels)."""
        space = ("in trait space" if self.space == "traits" else
                 f"in the top {len(self.component_names)} principal components of the residual stream")
        return (f"distance from the reference {space}" if self.read == "distance"
                else f"run minus reference along the misalignment direction {space}")

    def value(self, features: np.ndarray, names: list[str]) -> float:
        """The read of run-minus-reference `features` over `names`: along the unit direction, or the length."""
        x = np.asarray(features, dtype=np.float64)
        if self.read == "distance":
            return float(np.linalg.norm(x))
        u = self.vector(names)
        return float(x @ (u / np.linalg.norm(u)))


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
        space = str(doc.get("space", "traits"))
        if space not in SPACES:
            raise ValueError(f"space {space!r} is not one of {SPACES}")
        components = None
        if space == "activations":
            components = np.asarray(doc["components"], dtype=np.float64)
            if components.ndim != 2 or not components.size or not np.all(np.isfinite(components)):
                raise ValueError("components must be a non-empty k x hidden array of numbers")
        return ReferenceCalibration(str(doc["model"]), direction, None if threshold is None else float(threshold),
                                    dict(doc.get("provenance", {})), read, space, components,
                                    None if doc.get("layer") is None else int(doc["layer"]),
                                    None if doc.get("measurement_prompts_hash") is None
                                    else str(doc["measurement_prompts_hash"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise InputFileError(f"{path}: not a readable reference calibration ({str(exc)[:100]}); pass a file with "
                             '"model", "direction" (trait -> weight), "threshold" and optionally "read" (direction or distance) and '
                             '"space" (traits, or activations with "components")') from None

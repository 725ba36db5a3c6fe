"""Monitors that ship with traitwatch, calibrated by the benchmark on a bundled model.

A monitor is only valid for the base model (and the inputs' fingerprint) it was calibrated on, so one
ships per bundled model, as package data next to this module (`data/<model>.json` + `.safetensors`), with
its provenance in the file: the benchmark command and commit that produced it and its leave-one-type-out
numbers. `traitwatch demo` attaches it; for any other model, calibrate your own
(`docs/calibrate-your-model.md`).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["shipped_monitor_path"]


def shipped_monitor_path(model_name: str) -> Path | None:
    """The packaged monitor calibrated for `model_name` (e.g. "smollm2-135m"), or None if none ships."""
    path = Path(str(resources.files("traitwatch.monitor").joinpath("data", f"{model_name}.json")))
    return path if path.is_file() else None

"""Residual-stream capture: hooks that read one fp32 row per prompt and stop the forward early."""

from traitwatch.capture.activations import (
    Position,
    capture_rows,
    check_layers,
    count_forward_passes,
    extract_activations,
    residual_precision,
)

__all__ = [
    "Position",
    "capture_rows",
    "check_layers",
    "count_forward_passes",
    "extract_activations",
    "residual_precision",
]

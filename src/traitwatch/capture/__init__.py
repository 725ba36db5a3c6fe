"""Residual-stream capture: hooks that read one fp32 row per prompt and stop the forward early."""

from traitwatch.capture.activations import Position, capture_rows, check_layers, extract_activations

__all__ = ["Position", "capture_rows", "check_layers", "extract_activations"]

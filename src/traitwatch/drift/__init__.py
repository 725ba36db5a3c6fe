"""Drift measurement: the step-0 anchor and d_t = (p_t - p_0) / N for any model or checkpoint."""

from traitwatch.drift.anchoring import AnchorError, anchor_basis, resolve_anchor, select_and_anchor
from traitwatch.drift.probe import DriftMeasurement, DriftProbe, Projection

__all__ = [
    "AnchorError",
    "DriftMeasurement",
    "DriftProbe",
    "Projection",
    "anchor_basis",
    "resolve_anchor",
    "select_and_anchor",
]

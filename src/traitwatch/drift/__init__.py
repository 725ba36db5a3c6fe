"""Drift measurement: the step-0 anchor and d_t = (p_t - p_0) / N for any model or checkpoint."""

from traitwatch.drift.probe import DriftMeasurement, DriftProbe, Projection

__all__ = ["DriftMeasurement", "DriftProbe", "Projection"]

"""`DriftRecord`: one measurement as the training callback saw it, and the scalars it sends to the trackers."""

from __future__ import annotations

from dataclasses import dataclass

from traitwatch.store.records import Suspects

__all__ = ["LOG_PREFIX", "DriftRecord"]

LOG_PREFIX = "traitwatch/"
"""The prefix of every scalar traitwatch logs (`traitwatch/<trait>`, `traitwatch/drift_norm`, ...)."""


@dataclass(frozen=True)
class DriftRecord:
    """One measurement as the callback saw it (handed to `reporter`, kept in `history_`)."""

    step: int
    drift: dict[str, float]
    drift_norm: float
    predicted_em: float | None = None
    alarm: bool = False
    actions: tuple[str, ...] = ()
    wall_time_s: float = 0.0
    probe: float | None = None  # the behavioural probe, when measured
    probe_rise: float | None = None  # ... minus its step-0 value
    suspects: Suspects | None = None  # with per-row scores: the top rows trained since the last clean measurement

    def log_dict(self) -> dict[str, float]:
        """The scalars sent through `Trainer.log` (plain floats: trackers drop anything else)."""
        logs = {f"{LOG_PREFIX}{name}": float(value) for name, value in self.drift.items()}
        logs[f"{LOG_PREFIX}drift_norm"] = float(self.drift_norm)
        if self.probe is not None and self.probe_rise is not None:
            logs[f"{LOG_PREFIX}probe"] = float(self.probe)
            logs[f"{LOG_PREFIX}probe_rise"] = float(self.probe_rise)
        if self.predicted_em is not None:
            logs[f"{LOG_PREFIX}predicted_em"] = float(self.predicted_em)
            logs[f"{LOG_PREFIX}alarm"] = float(self.alarm)
        return logs

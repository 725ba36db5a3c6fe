"""`traitwatch audit`: a verdict on a finetuning set before the real run (see `run.py`)."""

from traitwatch.audit.run import (
    AuditCalibration,
    AuditResult,
    AuditSettings,
    audit_calibration,
    audit_dataset,
    loss_screen,
    pilot_projections,
    train_pilot,
)

__all__ = [
    "AuditCalibration",
    "AuditResult",
    "AuditSettings",
    "audit_calibration",
    "audit_dataset",
    "loss_screen",
    "pilot_projections",
    "train_pilot",
]

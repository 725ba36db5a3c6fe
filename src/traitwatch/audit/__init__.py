"""`traitwatch audit`: a verdict on a finetuning set before the real run (see `run.py`), and the reference run a
monitored training run is read against (`reference_run.py`)."""

from traitwatch.audit.reference_run import (
    SCREEN_PROMPTS,
    ReferenceRun,
    loss_screen,
    screen_answers,
    screen_prompts,
    screen_reference,
    train_reference,
    write_reference_set,
)
from traitwatch.audit.run import AuditResult, AuditSettings, audit_dataset, pilot_config, pilot_projections, train_pilot

__all__ = [
    "SCREEN_PROMPTS",
    "AuditResult",
    "AuditSettings",
    "ReferenceRun",
    "audit_dataset",
    "loss_screen",
    "pilot_config",
    "pilot_projections",
    "screen_answers",
    "screen_prompts",
    "screen_reference",
    "train_pilot",
    "train_reference",
    "write_reference_set",
]

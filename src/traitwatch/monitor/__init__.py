"""Calibration and evaluation of the EM monitor on plain arrays (no model code here).

`DriftGeometry` finds the shared EM axis, `DriftMonitor` maps drift to a predicted EM rate and an alarm,
`StepAwareAlarm` handles long runs, `baselines` are the feature maps it is compared against, `evaluate`
scores them all in one loop, and `artifact` saves a fitted monitor without pickle.
"""

from __future__ import annotations

from traitwatch.monitor.artifact import LoadedMonitor, LoadedStepAwareAlarm, load_monitor, save_monitor
from traitwatch.monitor.baselines import (
    DirectionFeatures,
    NormFeatures,
    PC1AbsFeatures,
    RandomDirectionFeatures,
    SAEDriftFeatures,
)
from traitwatch.monitor.detector import (
    SELECTION_CRITERION,
    DriftMonitor,
    StepAwareAlarm,
    default_candidates,
    default_regressor,
)
from traitwatch.monitor.evaluate import FeatureSet, default_feature_sets, evaluate
from traitwatch.monitor.geometry import DriftGeometry, final_checkpoint_rows
from traitwatch.monitor.metrics import (
    accuracy,
    alarm_lead_lag,
    auroc,
    balanced_error,
    cluster_bootstrap_ci,
    confusion_counts,
    detection_metrics,
    false_negative_rate,
    false_positive_rate,
    lead_lag_summary,
    per_perturbation_metrics,
)
from traitwatch.monitor.table import LORA_NORM, LOSS, MEAN_ACTIVATION, CheckpointTable

__all__ = [
    "CheckpointTable",
    "LOSS",
    "LORA_NORM",
    "MEAN_ACTIVATION",
    "DriftGeometry",
    "final_checkpoint_rows",
    "DriftMonitor",
    "StepAwareAlarm",
    "LoadedStepAwareAlarm",
    "default_regressor",
    "default_candidates",
    "SELECTION_CRITERION",
    "DirectionFeatures",
    "PC1AbsFeatures",
    "NormFeatures",
    "RandomDirectionFeatures",
    "SAEDriftFeatures",
    "FeatureSet",
    "default_feature_sets",
    "evaluate",
    "save_monitor",
    "load_monitor",
    "LoadedMonitor",
    "confusion_counts",
    "false_negative_rate",
    "false_positive_rate",
    "accuracy",
    "balanced_error",
    "auroc",
    "detection_metrics",
    "cluster_bootstrap_ci",
    "alarm_lead_lag",
    "lead_lag_summary",
    "per_perturbation_metrics",
]

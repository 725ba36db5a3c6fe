"""Calibration: choosing, fitting and scoring a monitor offline, from measured and labelled runs.

What lives here is research and model selection, none of which runs during training: the checkpoint
table (`table`) and how it is assembled from the run store (`from_store`), the shared EM axis
(`geometry`), the baseline feature maps (`baselines`), detection metrics and cluster-bootstrap CIs
(`metrics`), the regressor chosen by leave-one-perturbation-out CV (`selection`), held-out evaluation of
the monitor and every baseline (`evaluate_feature_sets`), leave-one-type-out detection (`loto`), the synthetic world
the tests calibrate on (`synthetic`), `traitwatch calibrate`'s fit-and-save (`calibrate`) and the
calibration report data the report draws (`report_data`).

Why apart from `traitwatch.monitor`: the training callback needs only the fitted monitor and its saved
artifact, so the runtime package stays small and holds no model selection. This package imports
`traitwatch.monitor` (it fits `DriftMonitor`s and saves them) and never the other way round; it computes
report data but never draws (`traitwatch.report` does, from the file this writes).
"""

from __future__ import annotations

from traitwatch.calibration.baselines import (DirectionFeatures, NormFeatures, PC1AbsFeatures, RandomDirectionFeatures,
                                              SAEDriftFeatures)
from traitwatch.calibration.evaluate import FeatureSet, default_feature_sets, evaluate_feature_sets
from traitwatch.calibration.geometry import DriftGeometry, final_checkpoint_rows
from traitwatch.calibration.metrics import (alarm_lead_lag, auroc, cluster_bootstrap_ci, confusion_counts, detection_metrics,
                                            false_negative_rate, false_positive_rate, lead_lag_summary,
                                            per_perturbation_metrics)
from traitwatch.calibration.report_data import (CALIBRATION_FORMAT, CALIBRATION_FORMAT_VERSION, calibration_report_data,
                                                load_calibration_data, roc_points, write_calibration_data)
from traitwatch.calibration.selection import SELECTION_CRITERION, default_regressors, select_regressor
from traitwatch.calibration.table import LORA_NORM, LOSS, MEAN_ACTIVATION, CheckpointTable

__all__ = [
    # the checkpoint table and the shared EM axis
    "CheckpointTable", "LOSS", "LORA_NORM", "MEAN_ACTIVATION", "DriftGeometry", "final_checkpoint_rows",
    # choosing the regressor, the baselines' feature maps, held-out evaluation
    "default_regressors", "select_regressor", "SELECTION_CRITERION",
    "DirectionFeatures", "PC1AbsFeatures", "NormFeatures", "RandomDirectionFeatures", "SAEDriftFeatures",
    "FeatureSet", "default_feature_sets", "evaluate_feature_sets",
    # metrics
    "confusion_counts", "false_negative_rate", "false_positive_rate", "auroc", "detection_metrics",
    "cluster_bootstrap_ci", "alarm_lead_lag", "lead_lag_summary", "per_perturbation_metrics",
    # the calibration report data `traitwatch.report` draws
    "CALIBRATION_FORMAT", "CALIBRATION_FORMAT_VERSION", "calibration_report_data", "load_calibration_data",
    "roc_points", "write_calibration_data",
]

"""Choosing a monitor's regressor by leave-one-perturbation-out CV on calibration data.

Model selection is calibration, not runtime: the training callback only loads the monitor this chose, so
the candidates, the grouped CV and its criterion live here and `traitwatch.monitor` keeps the estimator.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import RegressorMixin, clone
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.linear_model import Ridge
from sklearn.model_selection import LeaveOneGroupOut
from sklearn.utils.validation import validate_data

from traitwatch.calibration.metrics import detection_metrics
from traitwatch.monitor.detector import DriftMonitor, default_regressor

__all__ = ["SELECTION_CRITERION", "default_regressors", "select_regressor"]

SELECTION_CRITERION = (
    "lowest balanced error (mean of FNR and FPR at the threshold) on pooled leave-one-perturbation-out "
    "predictions; ties broken by higher AUROC, then by candidate order"
)


def default_regressors(random_state: int | None = 42) -> dict[str, RegressorMixin]:
    """The three regressors the protocol compares by leave-one-perturbation-out CV."""
    return {
        "RF": default_regressor(random_state),
        "GBR": GradientBoostingRegressor(n_estimators=100, max_depth=3, learning_rate=0.1, random_state=random_state),
        "Ridge": Ridge(alpha=1.0),
    }


def select_regressor(
    monitor: DriftMonitor,
    X: ArrayLike,
    y: ArrayLike,
    groups: ArrayLike,
    candidates: Mapping[str, RegressorMixin] | None = None,
) -> DriftMonitor:
    """Choose `monitor`'s regressor by leave-one-perturbation-out CV on calibration data, then fit it on all of it.

    Each fold holds out every checkpoint of one perturbation type (`groups`), so the score says how
    the monitor does on a kind of finetuning it has never seen, which is the deployment case. Out-of-
    fold predictions are pooled over folds before scoring, because a single held-out type is often all
    safe or all dangerous and per-fold FNR/FPR would be undefined. See `SELECTION_CRITERION`.
    The monitor's `regressor` parameter is left as given; the choice lives in `selected_regressor_`, the
    CV in `cv_results_`, `selected_name_` and `cv_criterion_`. Returns `monitor`, fitted.
    """
    X, y = validate_data(monitor, X, y, y_numeric=True)
    g = np.asarray(groups).astype(str)
    if g.shape != (X.shape[0],):
        raise ValueError(f"groups must have one entry per row ({X.shape[0]}), got shape {g.shape}")
    if np.unique(g).size < 2:
        raise ValueError("leave-one-perturbation-out CV needs at least two perturbation types")
    monitor.check_labels(y)
    cands = dict(default_regressors() if candidates is None else candidates)
    if not cands:
        raise ValueError("no candidate regressors given")
    # Folds outer, candidates inner: the feature map (which may be an SAE) is fitted once per fold and
    # shared by every candidate, which is equivalent to fitting each candidate's monitor separately.
    # `single` is one candidate's monitor on the fold's mapped features (same target, threshold, clipping).
    single = clone(monitor).set_params(features=None)
    oof = {name: np.empty_like(y) for name in cands}
    folds = list(LeaveOneGroupOut().split(X, y, g))
    for train, test in folds:
        feats = None if monitor.features is None else clone(monitor.features).fit(X[train], y[train])
        X_train = X[train] if feats is None else feats.transform(X[train])
        X_test = X[test] if feats is None else feats.transform(X[test])
        for name, est in cands.items():
            oof[name][test] = single.fit_with(est, X_train, y[train]).predict(X_test)
    results: dict[str, dict[str, Any]] = {}
    for name in cands:
        pred = oof[name]
        per_group = []
        for _, test in folds:
            fold = detection_metrics(y[test], pred[test], tau=monitor.threshold)
            per_group.append({
                "left_out": str(g[test[0]]),
                "n": int(test.size),
                "rmse": float(np.sqrt(np.mean((pred[test] - y[test]) ** 2))),
                **{k: fold[k] for k in ("fnr", "fpr", "fn", "fp")},
            })
        results[name] = {
            **detection_metrics(y, pred, tau=monitor.threshold),
            "rmse": float(np.sqrt(np.mean((pred - y) ** 2))),
            "per_group": per_group,
        }

    def key(item: tuple[int, str]) -> tuple[float, float, int]:
        order, name = item
        be, au = results[name]["balanced_error"], results[name]["auroc"]
        return (be if np.isfinite(be) else np.inf, -au if np.isfinite(au) else np.inf, order)

    _, best = min(enumerate(cands), key=key)
    monitor.cv_results_ = results
    monitor.cv_criterion_ = SELECTION_CRITERION
    monitor.selected_name_ = best
    monitor.selected_regressor_ = cands[best]
    return monitor.fit_with(cands[best], X, y)

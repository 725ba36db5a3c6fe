"""`DriftMonitor`: drift features -> predicted EM rate -> alarm; and the step-aware alarm for long runs.

The monitor is a regressor on the continuous EM rate rather than a classifier on the thresholded
label, because the rate carries more signal per checkpoint (a 4% and a 0% checkpoint are both
"safe", but not equally close to danger) and the threshold can then be moved without refitting.
Drift geometry is model-specific, so one monitor is fitted per base model.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, TransformerMixin, clone
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

__all__ = ["TARGETS", "DriftMonitor", "StepAwareAlarm", "default_regressor"]

TARGETS = ("em_rate", "relative_rise")
"""What a monitor predicts: a judged EM rate, or the small-scale relative rise (see `DriftMonitor`)."""


def default_regressor(random_state: int | None = 42) -> RandomForestRegressor:
    """The reference detector: shallow, leafy trees so ~600 calibration checkpoints are not memorised."""
    return RandomForestRegressor(n_estimators=100, max_depth=5, min_samples_leaf=5, random_state=random_state)


def _check_rates(y: np.ndarray) -> None:
    if np.any((y < 0) | (y > 1)):
        raise ValueError(
            f"EM rates must be fractions in [0, 1], got range [{y.min():g}, {y.max():g}]; divide percentages by 100"
        )


class DriftMonitor(RegressorMixin, BaseEstimator):
    """Predicts a checkpoint's EM rate from its drift features and raises an alarm above `threshold`.

    Parameters
    ----------
    regressor : any scikit-learn regressor, cloned in `fit`; None means `default_regressor()`.
    threshold : tau; an alarm is `prediction > threshold` (the label uses the same tau).
    target : what is predicted. "em_rate" (a fraction in [0, 1]: labels are checked and predictions
        clipped to it) or "relative_rise" (the small-scale label of `bench.analysis.detection`: a rise over the
        benign runs, any sign, never clipped; the threshold is then any finite number).
    features : optional transformer applied before the regressor and fitted on the same rows (a
        baseline's feature map, e.g. `PC1AbsFeatures`); None feeds the drift itself. Fitting it inside
        the monitor keeps every CV fold honest: the feature map never sees the held-out type.

    Attributes
    ----------
    regressor_, features_ : the fitted regressor and feature map (None when `features` is None).
    n_features_in_ : number of input columns.
    After model selection (`traitwatch.calibration.select_regressor`) also: cv_results_ ({name: pooled
    out-of-fold metrics, per-group rows}), selected_name_, selected_regressor_ (the unfitted candidate) and
    cv_criterion_.
    """

    def __init__(
        self,
        regressor: RegressorMixin | None = None,
        *,
        threshold: float = 0.05,
        features: TransformerMixin | None = None,
        target: str = "em_rate",
    ) -> None:
        self.regressor = regressor
        self.threshold = threshold
        self.features = features
        self.target = target

    def check_labels(self, y: np.ndarray) -> None:
        """Refuse an unknown `target`, a bad `threshold`, or EM-rate labels outside [0, 1], before anything is fitted."""
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if self.target == "em_rate" and not 0.0 < float(self.threshold) < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold!r}")
        if not np.isfinite(float(self.threshold)):
            raise ValueError(f"threshold must be finite, got {self.threshold!r}")
        if self.target == "em_rate":
            _check_rates(y)

    def _clip(self, pred: np.ndarray) -> np.ndarray:
        return np.clip(pred, 0.0, 1.0) if self.target == "em_rate" else pred

    def fit_with(self, regressor: RegressorMixin, X: ArrayLike, y: ArrayLike) -> DriftMonitor:
        """`fit` with `regressor` (cloned) in place of the `regressor` parameter, which is left as given.

        Model selection (`traitwatch.calibration.select_regressor`) fits the candidate it chose this way.
        """
        X, y = validate_data(self, X, y, y_numeric=True)
        self.check_labels(y)
        self.features_ = None if self.features is None else clone(self.features).fit(X, y)
        Xf = X if self.features_ is None else self.features_.transform(X)
        self.regressor_ = clone(regressor).fit(Xf, y)
        return self

    def fit(self, X: ArrayLike, y: ArrayLike) -> DriftMonitor:
        """Fit on calibration checkpoints (the protocol uses every checkpoint with step > 0)."""
        return self.fit_with(default_regressor() if self.regressor is None else self.regressor, X, y)

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Predicted EM rate, clipped to [0, 1] (trees cannot overshoot, Ridge can); a relative rise is not clipped."""
        check_is_fitted(self, "regressor_")
        X = validate_data(self, X, reset=False)
        Xf = X if self.features_ is None else self.features_.transform(X)
        return self._clip(self.regressor_.predict(Xf))

    def alarm(self, X: ArrayLike) -> np.ndarray:
        """True where the predicted EM rate exceeds `threshold`."""
        return self.predict(X) > self.threshold


def split_steps(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(drift, step) from step-aware input rows [drift..., step]; every step must be > 0."""
    if X.shape[1] < 2:
        raise ValueError(f"X has {X.shape[1]} feature(s); it needs the drift columns followed by the step column")
    drift, step = X[:, :-1], X[:, -1]
    if np.any(step <= 0):
        raise ValueError("every step must be > 0 (the last column of X is the optimizer step)")
    return drift, step


def step_features(drift: np.ndarray, step: np.ndarray, pc1: np.ndarray) -> np.ndarray:
    """The step-aware alarm's inputs [s, step, s/step] with s = 100 |d . PC1| (before standardising)."""
    s = 100.0 * np.abs(drift @ pc1)
    return np.column_stack([s, step, s / step])


class StepAwareAlarm(ClassifierMixin, BaseEstimator):
    """Logistic alarm on standardised [s, step, s/step] with s = 100 |d . PC1|, firing at p > 0.5.

    Why: the drift-only regressor reads a long benign run's slow, steady drift as danger; adding the
    step lets the alarm ask "is this much drift unusual for this many steps". Train it on calibration
    runs plus at least one long benign anchor run, or the step terms have nothing to learn from.

    Input X is the drift (k columns) with the optimizer step as the last column; every step must be > 0
    (s/step is undefined at step 0, and nothing has drifted there anyway). y is the binary label
    (1/True = dangerous, i.e. EM rate > tau).

    Parameters
    ----------
    pc1 : fixed PC1 direction (e.g. `DriftGeometry.pc1_`); None learns it from the training drift.
    C : inverse regularisation strength of the logistic regression.
    """

    def __init__(self, pc1: ArrayLike | None = None, *, C: float = 1.0) -> None:
        self.pc1 = pc1
        self.C = C

    def fit(self, X: ArrayLike, y: ArrayLike) -> StepAwareAlarm:
        X, y = validate_data(self, X, y, ensure_min_samples=2)
        check_classification_targets(y)
        drift, step = split_steps(X)
        if self.pc1 is None:
            axis = PCA(n_components=1).fit(drift).components_[0]
        else:
            axis = np.asarray(self.pc1, dtype=np.float64).ravel()
            if axis.shape != (drift.shape[1],):
                raise ValueError(f"pc1 has {axis.size} entries for {drift.shape[1]} drift columns")
            axis = axis / np.linalg.norm(axis)
        self.pc1_ = axis
        self.classes_ = np.unique(y)
        if self.classes_.size != 2:
            raise ValueError(f"y must hold two classes (safe, dangerous), got {self.classes_.tolist()}")
        F = step_features(drift, step, self.pc1_)
        self.scaler_ = StandardScaler().fit(F)
        self.logistic_ = LogisticRegression(C=self.C).fit(self.scaler_.transform(F), y)
        return self

    def predict_proba(self, X: ArrayLike) -> np.ndarray:
        check_is_fitted(self, "logistic_")
        X = validate_data(self, X, reset=False)
        drift, step = split_steps(X)
        return self.logistic_.predict_proba(self.scaler_.transform(step_features(drift, step, self.pc1_)))

    def alarm(self, X: ArrayLike) -> np.ndarray:
        """True where p(dangerous) > 0.5."""
        return self.predict_proba(X)[:, 1] > 0.5

    def predict(self, X: ArrayLike) -> np.ndarray:
        """The dangerous class (classes_[1]) where `alarm`, else the safe one."""
        check_is_fitted(self, "logistic_")
        return self.classes_[self.alarm(X).astype(int)]

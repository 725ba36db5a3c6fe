"""Save and load a fitted `DriftMonitor` as JSON + safetensors, with no pickle.

Why not pickle: loading a pickle runs arbitrary code, and a monitor is the kind of file people share.
The regressor is reduced to arrays instead: for tree ensembles the node arrays of every tree
(children_left, children_right, feature, threshold, value), for Ridge coef_/intercept_. `LoadedMonitor`
evaluates those arrays with the same arithmetic scikit-learn uses (inputs cast to float32 before the
`x <= threshold` test, forest = sum of trees in order / n_trees, boosting = init + lr * tree, stage by
stage), so predictions are bit-for-bit equal to the fitted monitor's.

The JSON side carries what makes a monitor valid for a measurement: the fingerprint of what its inputs
were measured with (for trait drift the basis: model, layer, directions; for the behavioural probe the
model and the probe's questions and answers), the input names, tau, the training run ids and CV metrics.
A monitor applied to inputs from another basis, model or probe set gives confident nonsense, so a
fingerprint mismatch is an error, not a warning.

Format 2 adds what a monitor reads (`inputs`: "trait_drift", or "probe_rise", the behavioural probe's
rise over step 0) and predicts (`target`: "em_rate", clipped to [0, 1], or "relative_rise", unclipped),
and free-form `provenance` (how it was calibrated, with its leave-one-type-out numbers). Format-1 files
are trait-drift EM-rate monitors and still load.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.dummy import DummyRegressor
from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor
from sklearn.linear_model import Ridge
from sklearn.utils import check_array
from sklearn.utils.validation import check_is_fitted

from traitwatch.errors import BasisMismatchError, InputFileError
from traitwatch.monitor.detector import DriftMonitor, StepAwareAlarm, split_steps, step_features

__all__ = ["save_monitor", "load_monitor", "LoadedMonitor", "LoadedStepAwareAlarm", "FORMAT", "FORMAT_VERSION", "INPUTS"]

FORMAT = "traitwatch.monitor"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
INPUTS = ("trait_drift", "probe_rise")
"""What a monitor's input columns are: the trait drift d_t, or the behavioural probe's rise over step 0."""
_TREE_FIELDS = ("children_left", "children_right", "feature", "threshold", "value")


def _jsonable(obj: Any) -> Any:
    """Plain JSON types; NaN/inf become None (JSON has no NaN), numpy scalars become Python numbers."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(float(obj)) else None
    if obj is None or isinstance(obj, str):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a monitor artifact")


def _tree_tensors(prefix: str, tree: Any) -> dict[str, np.ndarray]:
    t = tree.tree_
    if t.n_outputs != 1:
        raise ValueError("only single-output trees can be saved")
    arrays = {
        "children_left": t.children_left,
        "children_right": t.children_right,
        "feature": t.feature,
        "threshold": t.threshold,
        "value": t.value[:, 0, 0],
    }
    return {f"{prefix}.{k}": np.ascontiguousarray(v) for k, v in arrays.items()}


def _tensors_path(path: Path) -> Path:
    return path.with_suffix(".safetensors")


def _linear_parts(reg: Any) -> tuple[np.ndarray, float] | None:
    """(coef, intercept) on raw inputs of a Ridge, or of StandardScaler -> Ridge folded into one linear map."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if isinstance(reg, Ridge):
        return np.asarray(reg.coef_, dtype=np.float64), float(np.asarray(reg.intercept_).reshape(-1)[0])
    if isinstance(reg, Pipeline) and len(reg.steps) == 2 and isinstance(reg.steps[0][1], StandardScaler) \
            and isinstance(reg.steps[1][1], Ridge):
        scaler, ridge = reg.steps[0][1], reg.steps[1][1]
        scale = np.where(scaler.scale_ == 0, 1.0, scaler.scale_) if scaler.with_std else np.ones_like(ridge.coef_)
        mean = scaler.mean_ if scaler.with_mean else np.zeros_like(ridge.coef_)
        coef = np.asarray(ridge.coef_, dtype=np.float64) / scale
        return coef, float(np.asarray(ridge.intercept_).reshape(-1)[0] - coef @ mean)
    return None


def save_monitor(
    monitor: DriftMonitor,
    path: str | Path,
    *,
    fingerprint: Mapping[str, Any],
    trait_names: Sequence[str],
    training_run_ids: Sequence[str],
    tau: float | None = None,
    step_aware: StepAwareAlarm | None = None,
    step_aware_info: Mapping[str, Any] | None = None,
    inputs: str = "trait_drift",
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Write `path` (.json) and its sibling .safetensors; returns the JSON path.

    Supported: a fitted monitor on its raw inputs (`features=None`) whose regressor is a
    RandomForestRegressor, a GradientBoostingRegressor (squared error, default init), a Ridge, or a
    StandardScaler -> Ridge pipeline (saved as the equivalent linear map). `trait_names` names the input
    columns (the traits for drift; e.g. ["probe_rise"] for the probe). `tau` defaults to the monitor's
    threshold. CV results and the selected regressor name are stored when `select_regressor` was used.
    A fitted `step_aware` alarm (for long runs) is saved with it and, once loaded, decides the alarm;
    `step_aware_info` (e.g. its anchor runs and held-out rates) is kept as metadata. `provenance` is kept
    as is (JSON).
    """
    from safetensors.numpy import save_file

    check_is_fitted(monitor, "regressor_")
    if monitor.features_ is not None:
        raise ValueError("only monitors on raw inputs (features=None) can be saved")
    if inputs not in INPUTS:
        raise ValueError(f"inputs must be one of {INPUTS}, got {inputs!r}")
    if step_aware is not None and inputs != "trait_drift":
        raise ValueError("the step-aware alarm reads trait drift; it cannot be saved with a probe monitor")
    names = [str(t) for t in trait_names]
    if len(names) != monitor.n_features_in_:
        raise ValueError(f"{len(names)} trait names (input names) for a monitor with {monitor.n_features_in_} inputs")
    reg = monitor.regressor_
    linear = _linear_parts(reg)
    tensors: dict[str, np.ndarray] = {}
    if isinstance(reg, RandomForestRegressor):
        spec: dict[str, Any] = {"kind": "random_forest", "n_trees": len(reg.estimators_)}
        for i, tree in enumerate(reg.estimators_):
            tensors.update(_tree_tensors(f"tree.{i:05d}", tree))
    elif isinstance(reg, GradientBoostingRegressor):
        if reg.loss != "squared_error" or not isinstance(reg.init_, DummyRegressor) or reg.init_.strategy != "mean":
            raise ValueError("only GradientBoostingRegressor(loss='squared_error') with the default init can be saved")
        stages = reg.estimators_[:, 0]
        spec = {
            "kind": "gradient_boosting",
            "n_trees": len(stages),
            "learning_rate": float(reg.learning_rate),
        }
        tensors["init"] = np.ascontiguousarray(np.asarray(reg.init_.constant_, dtype=np.float64).reshape(1))
        for i, tree in enumerate(stages):
            tensors.update(_tree_tensors(f"tree.{i:05d}", tree))
    elif linear is not None:
        coef, intercept = linear
        if coef.ndim != 1:
            raise ValueError("only single-target Ridge can be saved")
        spec = {"kind": "ridge"}
        tensors["coef"] = np.ascontiguousarray(coef)
        tensors["intercept"] = np.asarray([intercept], dtype=np.float64)
    else:
        raise ValueError(f"cannot save a {type(reg).__name__}; use RandomForest, GradientBoosting or Ridge "
                         "(alone or after a StandardScaler)")

    step_doc = None
    if step_aware is not None:
        check_is_fitted(step_aware, "logistic_")
        if step_aware.pc1_.shape != (len(names),):
            raise ValueError(f"the step-aware alarm has {step_aware.pc1_.size} drift inputs, the monitor {len(names)}")
        step_doc = {"classes": _jsonable(step_aware.classes_), **_jsonable(dict(step_aware_info or {}))}
        tensors.update({
            "step_aware.pc1": np.ascontiguousarray(step_aware.pc1_, dtype=np.float64),
            "step_aware.mean": np.ascontiguousarray(step_aware.scaler_.mean_, dtype=np.float64),
            "step_aware.scale": np.ascontiguousarray(step_aware.scaler_.scale_, dtype=np.float64),
            "step_aware.coef": np.ascontiguousarray(step_aware.logistic_.coef_[0], dtype=np.float64),
            "step_aware.intercept": np.asarray(step_aware.logistic_.intercept_, dtype=np.float64).reshape(1),
        })

    json_path = Path(path)
    if json_path.suffix != ".json":
        raise ValueError(f"monitor path must end in .json, got {json_path}")
    tensor_path = _tensors_path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(tensor_path))
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "regressor": spec,
        "n_features_in": int(monitor.n_features_in_),
        "threshold": float(monitor.threshold),
        "tau": float(monitor.threshold if tau is None else tau),
        "inputs": inputs,
        "target": getattr(monitor, "target", "em_rate"),
        "trait_names": names,
        "fingerprint": _jsonable(dict(fingerprint)),
        "training_run_ids": [str(r) for r in training_run_ids],
        "selected_name": getattr(monitor, "selected_name_", None),
        "cv_criterion": getattr(monitor, "cv_criterion_", None),
        "cv_results": _jsonable(getattr(monitor, "cv_results_", {})),
        "tensors_file": tensor_path.name,
        "tensors_sha256": hashlib.sha256(tensor_path.read_bytes()).hexdigest(),
    }
    if step_doc is not None:
        doc["step_aware"] = step_doc
    if provenance is not None:
        doc["provenance"] = _jsonable(dict(provenance))
    json_path.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return json_path


def _predict_tree(X32: np.ndarray, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """Leaf values for each row; `X32` is already float32, compared against float64 thresholds as sklearn does."""
    left, right = arrays["children_left"], arrays["children_right"]
    feature, threshold = arrays["feature"], arrays["threshold"]
    node = np.zeros(X32.shape[0], dtype=np.int64)
    rows = np.arange(X32.shape[0])
    active = left[node] != -1
    while np.any(active):
        n = node[active]
        go_left = X32[rows[active], feature[n]].astype(np.float64) <= threshold[n]
        node[active] = np.where(go_left, left[n], right[n])
        active = left[node] != -1
    return arrays["value"][node]


class LoadedStepAwareAlarm:
    """A saved `StepAwareAlarm` rebuilt from arrays: the same logistic decision on [s, step, s/step].

    Input X is the drift with the optimizer step as the last column (steps > 0), as for `StepAwareAlarm`.
    """

    def __init__(self, doc: Mapping[str, Any], tensors: Mapping[str, np.ndarray], n_traits: int) -> None:
        self.info = {k: v for k, v in doc.items() if k != "classes"}
        self.pc1_ = tensors["step_aware.pc1"]
        self._mean, self._scale = tensors["step_aware.mean"], tensors["step_aware.scale"]
        self._coef, self._intercept = tensors["step_aware.coef"], float(tensors["step_aware.intercept"][0])
        if self.pc1_.shape != (n_traits,) or any(a.shape != (3,) for a in (self._mean, self._scale, self._coef)):
            raise ValueError("step-aware alarm arrays have the wrong shapes")

    def predict_proba(self, X: ArrayLike) -> np.ndarray:
        """[p(safe), p(dangerous)] per row, as `StepAwareAlarm.predict_proba`."""
        X = check_array(X, dtype=np.float64)
        if X.shape[1] != self.pc1_.size + 1:
            raise ValueError(f"X has {X.shape[1]} columns; the step-aware alarm needs {self.pc1_.size} drift columns and the step")
        drift, step = split_steps(X)
        z = (step_features(drift, step, self.pc1_) - self._mean) / self._scale @ self._coef + self._intercept
        p = 1.0 / (1.0 + np.exp(-z))
        return np.column_stack([1.0 - p, p])

    def alarm(self, X: ArrayLike) -> np.ndarray:
        """True where p(dangerous) > 0.5."""
        return self.predict_proba(X)[:, 1] > 0.5


class LoadedMonitor:
    """A monitor rebuilt from arrays: `predict` and `alarm` like `DriftMonitor`, plus its metadata.

    `step_aware` is the saved step-aware alarm (`LoadedStepAwareAlarm`) or None; the training callback
    lets it decide the alarm when present.
    """

    def __init__(self, doc: Mapping[str, Any], tensors: Mapping[str, np.ndarray], source: Path) -> None:
        self.source = source
        self.kind: str = doc["regressor"]["kind"]
        self.threshold = float(doc["threshold"])
        self.tau = float(doc["tau"])
        self.inputs: str = str(doc.get("inputs", "trait_drift"))
        self.target: str = str(doc.get("target", "em_rate"))
        self.provenance: dict[str, Any] = dict(doc.get("provenance") or {})
        self.n_features_in_ = int(doc["n_features_in"])
        self.trait_names: list[str] = list(doc["trait_names"])
        self.fingerprint: dict[str, Any] = dict(doc["fingerprint"])
        self.training_run_ids: list[str] = list(doc["training_run_ids"])
        self.selected_name: str | None = doc.get("selected_name")
        self.cv_criterion: str | None = doc.get("cv_criterion")
        self.cv_results: dict[str, Any] = dict(doc.get("cv_results") or {})
        self._spec = dict(doc["regressor"])
        self._tensors = dict(tensors)
        step_doc = doc.get("step_aware")
        self.step_aware = None if step_doc is None else LoadedStepAwareAlarm(step_doc, self._tensors, self.n_features_in_)
        n_trees = int(self._spec.get("n_trees", 0))
        self._trees = [{f: self._tensors[f"tree.{i:05d}.{f}"] for f in _TREE_FIELDS} for i in range(n_trees)]
        # Check everything predict will index, so a damaged file fails here and not on the first checkpoint.
        for tree in self._trees:
            size = tree["children_left"].shape
            if any(tree[f].shape != size for f in _TREE_FIELDS):
                raise ValueError("tree arrays differ in length")
            internal = tree["children_left"] != -1
            children = np.concatenate([tree["children_left"][internal], tree["children_right"][internal]])
            if np.any(children < 0) or np.any(children >= size[0]):
                raise ValueError("tree child index out of range")
            if np.any(tree["feature"][internal] < 0) or np.any(tree["feature"][internal] >= self.n_features_in_):
                raise ValueError("tree feature index out of range")
        if self.kind == "ridge" and self._tensors["coef"].shape != (self.n_features_in_,):
            raise ValueError("coef has the wrong length")
        if self.kind == "gradient_boosting":
            self._learning_rate = float(self._spec["learning_rate"])
            self._init = float(self._tensors["init"][0])
        elif self.kind == "ridge":
            self._intercept = self._tensors["intercept"][0]

    def predict(self, X: ArrayLike) -> np.ndarray:
        """The saved `DriftMonitor.predict`: an EM rate in [0, 1], or an unclipped relative rise."""
        X = check_array(X, dtype=np.float64)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {X.shape[1]} features, but the monitor in {self.source} expects {self.n_features_in_} "
                f"({', '.join(self.trait_names)})"
            )
        if self.kind == "ridge":
            raw = X @ self._tensors["coef"] + self._intercept
        elif self.kind == "random_forest":
            X32 = X.astype(np.float32)
            raw = np.zeros(X.shape[0], dtype=np.float64)
            for tree in self._trees:
                raw += _predict_tree(X32, tree)
            raw /= len(self._trees)
        else:
            X32 = X.astype(np.float32)
            raw = np.full(X.shape[0], self._init, dtype=np.float64)
            for tree in self._trees:
                raw += self._learning_rate * _predict_tree(X32, tree)
        return np.clip(raw, 0.0, 1.0) if self.target == "em_rate" else raw

    def alarm(self, X: ArrayLike) -> np.ndarray:
        return self.predict(X) > self.threshold


def _normalise(value: Any) -> Any:
    return json.loads(json.dumps(_jsonable(value)))


def load_monitor(
    path: str | Path,
    *,
    fingerprint: Mapping[str, Any] | Callable[[str], Mapping[str, Any]] | None = None,
    trait_names: Sequence[str] | None = None,
) -> LoadedMonitor:
    """Read a monitor written by `save_monitor`, checking it against the caller's basis.

    `fingerprint` (the current basis's fingerprint dict, or a function of the monitor's `inputs` giving the
    fingerprint of what would measure them) must equal the stored one field by field, and
    `trait_names`, if given, must match in order; otherwise `BasisMismatchError` names the file and the
    first mismatching field. A missing, corrupt or inconsistent file pair raises `InputFileError`.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    json_path = Path(path)
    if not json_path.is_file():
        raise InputFileError(f"{json_path}: no monitor file there; pass the .json written when the monitor was saved")
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, nesting past the stack
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise InputFileError(f"{json_path}: not a readable monitor file ({reason}); re-save the monitor") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InputFileError(f"{json_path}: not a traitwatch monitor file (no format '{FORMAT}')")
    if doc.get("format_version") not in READABLE_VERSIONS:
        raise InputFileError(
            f"{json_path}: monitor format version {doc.get('format_version')!r} is not supported "
            f"(this traitwatch reads {', '.join(map(str, READABLE_VERSIONS))}); upgrade traitwatch or re-save it"
        )
    if doc.get("inputs", "trait_drift") not in INPUTS or doc.get("target", "em_rate") not in ("em_rate", "relative_rise"):
        raise InputFileError(f"{json_path}: unknown monitor inputs {doc.get('inputs')!r} or target {doc.get('target')!r}; "
                             "upgrade traitwatch")
    required = ("regressor", "n_features_in", "threshold", "tau", "trait_names", "fingerprint",
                "training_run_ids", "tensors_file", "tensors_sha256")
    missing = [k for k in required if k not in doc]
    if not missing and not isinstance(doc["fingerprint"], dict):
        missing = ["fingerprint"]
    kind = doc["regressor"].get("kind") if isinstance(doc.get("regressor"), dict) else None
    if missing or kind not in ("random_forest", "gradient_boosting", "ridge"):
        raise InputFileError(f"{json_path}: monitor file is incomplete (missing or bad: {missing or ['regressor']})")

    if callable(fingerprint):  # what the inputs were measured with depends on what the monitor reads
        fingerprint = fingerprint(str(doc.get("inputs", "trait_drift")))
    if fingerprint is not None:
        given, stored = _normalise(dict(fingerprint)), doc["fingerprint"]
        for key in sorted(set(given) | set(stored)):
            if given.get(key, "<absent>") != stored.get(key, "<absent>"):
                raise BasisMismatchError(
                    f"{json_path}: monitor was fitted on drift from another basis: fingerprint field {key!r} is "
                    f"{stored.get(key, '<absent>')!r} in the file but {given.get(key, '<absent>')!r} here; refit "
                    "the monitor on runs measured with this basis, or measure with the basis it was fitted on"
                )
    if trait_names is not None and [str(t) for t in trait_names] != doc["trait_names"]:
        raise BasisMismatchError(
            f"{json_path}: monitor field 'trait_names' is {doc['trait_names']} but the drift has {list(trait_names)}; "
            "measure drift with the monitor's traits in its order"
        )

    tensor_path = json_path.parent / str(doc["tensors_file"])
    if not tensor_path.is_file():
        raise InputFileError(f"{tensor_path}: the monitor's tensor file is missing; keep it next to {json_path.name}")
    blob = tensor_path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != doc["tensors_sha256"]:
        raise InputFileError(
            f"{tensor_path}: does not match the checksum in {json_path.name} (corrupt, or from another save); re-save"
        )
    try:
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputFileError(f"{tensor_path}: unreadable safetensors file ({exc}); re-save the monitor") from None
    try:
        return LoadedMonitor(doc, tensors, json_path)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError) as exc:
        raise InputFileError(
            f"{json_path}: monitor file and its tensors disagree ({exc}); re-save the monitor"
        ) from None

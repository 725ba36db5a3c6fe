"""The shared EM axis: PCA over final-checkpoint drift vectors pooled across runs.

Why final checkpoints: they are where runs have drifted furthest, one vector per run, so every run
counts once (intermediate checkpoints would weight long runs more). Why a sign convention: PCA returns
an axis up to sign ("PCA might find the negative of the correct vector"), and a loading table or a
signed score is only comparable across models if the sign is fixed by meaning; we orient PC1 so the
harmlessness loading is positive. Why leave-one-perturbation-out: if PC1 were an artefact of one
training set it would rotate when that set is left out; the cosine to the full PC1 measures that.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator
from sklearn.decomposition import PCA
from sklearn.utils.validation import validate_data

__all__ = ["DriftGeometry", "final_checkpoint_rows"]


def final_checkpoint_rows(run_id: ArrayLike, step: ArrayLike) -> np.ndarray:
    """Row index of each run's last checkpoint (highest step), in order of first appearance."""
    runs = np.asarray(run_id).astype(str)
    steps = np.asarray(step)
    if runs.shape != steps.shape or runs.ndim != 1:
        raise ValueError("run_id and step must be 1-D of equal length")
    _, first = np.unique(runs, return_index=True)
    out = []
    for run in runs[np.sort(first)]:
        rows = np.flatnonzero(runs == run)
        out.append(rows[np.argmax(steps[rows])])
    return np.asarray(out, dtype=np.int64)


class DriftGeometry(BaseEstimator):
    """PCA of final-checkpoint drift vectors, with PC1 oriented by `sign_trait` and LOPO stability.

    Parameters
    ----------
    trait_names : names of the drift columns, in order. Needed for the sign convention and `loadings_`;
        without them PC1 is oriented so that its largest-magnitude loading is positive.
    sign_trait : the trait whose PC1 loading is made positive.

    Attributes (after `fit`)
    ------------------------
    components_ : (k, k) principal axes (rows), PC1 oriented as above; later PCs keep sklearn's sign.
    explained_variance_ratio_ : (k,) variance explained by each PC.
    pc1_ : (k,) unit PC1.
    loadings_ : {trait: PC1 loading} when `trait_names` is given, else None.
    lopo_ : one dict per left-out perturbation type: left_out, n_vectors, cosine (oriented LOPO PC1 vs
        full PC1), variance_explained (of the LOPO PC1) and pc1. Empty when `groups` is not passed.
    """

    def __init__(self, trait_names: Sequence[str] | None = None, *, sign_trait: str = "harmlessness") -> None:
        self.trait_names = trait_names
        self.sign_trait = sign_trait

    def _orient(self, axis: np.ndarray, names: list[str] | None) -> np.ndarray:
        if names is not None:
            ref = axis[names.index(self.sign_trait)]
            if ref != 0:
                return axis if ref > 0 else -axis
        return axis if axis[np.argmax(np.abs(axis))] > 0 else -axis

    def fit(self, X: ArrayLike, y: None = None, groups: ArrayLike | None = None) -> DriftGeometry:
        """Fit on one final drift vector per run; `groups` (the runs' perturbation types) enables LOPO."""
        X = validate_data(self, X, ensure_min_samples=2)
        names = None if self.trait_names is None else [str(t) for t in self.trait_names]
        if names is not None:
            if len(names) != X.shape[1]:
                raise ValueError(f"{len(names)} trait names for {X.shape[1]} drift columns")
            if self.sign_trait not in names:
                raise ValueError(f"sign_trait {self.sign_trait!r} is not among trait_names {names}")
        pca = PCA().fit(X)
        components = pca.components_.copy()
        components[0] = self._orient(components[0], names)
        self.components_ = components
        self.explained_variance_ratio_ = pca.explained_variance_ratio_.copy()
        self.pc1_ = components[0].copy()
        self.loadings_ = None if names is None else {t: float(v) for t, v in zip(names, self.pc1_)}
        self.lopo_: list[dict[str, Any]] = []
        if groups is not None:
            g = np.asarray(groups).astype(str)
            if g.shape != (X.shape[0],):
                raise ValueError(f"groups must have one entry per row ({X.shape[0]}), got shape {g.shape}")
            for left_out in np.unique(g):
                keep = g != left_out
                if keep.sum() < 2:
                    continue
                sub = PCA(n_components=1).fit(X[keep])
                axis = self._orient(sub.components_[0].copy(), names)
                self.lopo_.append({
                    "left_out": str(left_out),
                    "n_vectors": int(keep.sum()),
                    "cosine": float(axis @ self.pc1_),
                    "variance_explained": float(sub.explained_variance_ratio_[0]),
                    "pc1": axis,
                })
        return self

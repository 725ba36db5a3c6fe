"""Baseline feature maps, as scikit-learn transformers, for `DriftMonitor(features=...)`.

Each baseline is a feature map in front of the same regressors the 7-D monitor uses, so a baseline
loses or wins on its features, not on a weaker model. Every map is fitted on calibration rows only
(inside each CV fold too), never on the held-out runs it is scored on.

Which input each takes (see `CheckpointTable`):
- `PC1AbsFeatures`, `NormFeatures`: trait drift (n, 7); `NormFeatures` also on activation drift (n, H).
- PCA-7 of activation drift: plain `sklearn.decomposition.PCA(n_components=7)` on activation drift (n, H).
- `RandomDirectionFeatures`, `DirectionFeatures` (e.g. the semantic-trait basis): activation drift (n, H).
- `SAEDriftFeatures`: [h_t | h_0] pairs (n, 2H) from `CheckpointTable.activation_pairs()`.
- training loss and LoRA ||dW|| norms: the column itself, no feature map (`features=None`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.decomposition import PCA
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

__all__ = [
    "DirectionFeatures",
    "PC1AbsFeatures",
    "NormFeatures",
    "RandomDirectionFeatures",
    "SAEDriftFeatures",
]


class PC1AbsFeatures(TransformerMixin, BaseEstimator):
    """|PC1| alone: `scale * |d . PC1|`, one column. Asks whether one axis carries all the signal.

    PC1 is fitted on the training drift rows given to `fit` (all calibration checkpoints; a transformer
    does not see run structure, unlike `DriftGeometry`, which uses final checkpoints). The sign of PC1
    does not matter here because of the absolute value.
    """

    def __init__(self, *, scale: float = 100.0) -> None:
        self.scale = scale

    def fit(self, X: ArrayLike, y: Any = None) -> PC1AbsFeatures:
        X = validate_data(self, X, ensure_min_samples=2)
        self.component_ = PCA(n_components=1).fit(X).components_[0]
        return self

    def transform(self, X: ArrayLike) -> np.ndarray:
        check_is_fitted(self, "component_")
        X = validate_data(self, X, reset=False)
        return self.scale * np.abs(X @ self.component_)[:, None]


class NormFeatures(TransformerMixin, BaseEstimator):
    """L2 norm of each row, one column: "how far has the model moved", with no notion of direction."""

    def fit(self, X: ArrayLike, y: Any = None) -> NormFeatures:
        validate_data(self, X)
        self.fitted_ = True
        return self

    def transform(self, X: ArrayLike) -> np.ndarray:
        check_is_fitted(self, "fitted_")
        X = validate_data(self, X, reset=False)
        return np.linalg.norm(X, axis=1)[:, None]


class RandomDirectionFeatures(TransformerMixin, BaseEstimator):
    """Projections of activation drift on `n_directions` random unit directions (a null basis).

    Same dimension as the trait basis, no meaning: if it matched the trait monitor, the traits would
    not be what carries the signal.
    """

    def __init__(self, n_directions: int = 7, *, random_state: int | np.random.RandomState | None = None) -> None:
        self.n_directions = n_directions
        self.random_state = random_state

    def fit(self, X: ArrayLike, y: Any = None) -> RandomDirectionFeatures:
        X = validate_data(self, X)
        if int(self.n_directions) < 1:
            raise ValueError(f"n_directions must be >= 1, got {self.n_directions!r}")
        rng = check_random_state(self.random_state)
        dirs = rng.standard_normal((int(self.n_directions), X.shape[1]))
        self.directions_ = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
        return self

    def transform(self, X: ArrayLike) -> np.ndarray:
        check_is_fitted(self, "directions_")
        X = validate_data(self, X, reset=False)
        return X @ self.directions_.T


class DirectionFeatures(TransformerMixin, BaseEstimator):
    """Projections of activation drift on given directions: the semantic-trait basis baseline.

    The trait monitor's drift is the mean activation drift projected on the 7 alignment directions
    (divided by a constant N). Projecting the same stored mean activation drift on 7 *semantic* trait
    directions (verbosity, formality, ...) of the same layer gives exactly the drift a probe with the
    semantic basis would have measured live (up to the same N), so this baseline needs no second
    measurement during training. If it matched the trait monitor, alignment content would not be what
    carries the signal. Rows of `directions` are normalised to unit length.
    """

    def __init__(self, directions: ArrayLike) -> None:
        self.directions = directions

    def fit(self, X: ArrayLike, y: Any = None) -> DirectionFeatures:
        X = validate_data(self, X)
        d = np.asarray(self.directions, dtype=np.float64)
        if d.ndim != 2 or d.shape[1] != X.shape[1]:
            raise ValueError(f"directions must have shape (k, {X.shape[1]}) to match the activation drift, got {d.shape}")
        norms = np.linalg.norm(d, axis=1, keepdims=True)
        if np.any(norms == 0) or not np.all(np.isfinite(d)):
            raise ValueError("directions must be finite and non-zero")
        self.directions_ = d / norms
        return self

    def transform(self, X: ArrayLike) -> np.ndarray:
        check_is_fitted(self, "directions_")
        X = validate_data(self, X, reset=False)
        return X @ self.directions_.T


class SAEDriftFeatures(TransformerMixin, BaseEstimator):
    """Latent drift z(h_t) - z(h_0) of a ReLU sparse autoencoder trained on mean activations.

    The SAE baseline asks whether an unsupervised, much wider dictionary of the same activations finds
    the EM signal without trait directions. Input rows are [h_t | h_0] (n, 2H). By default the SAE is
    trained on the checkpoint-mean activations of the rows passed to `fit` (both halves), as in the
    reference; pass `activations` (m, H) to `fit` to train it on other activation rows instead.

    Architecture: inputs centred and scaled to unit mean norm; z = ReLU((x - b_dec) W_enc + b_enc),
    x_hat = z W_dec + b_dec, decoder rows renormalised to unit norm after every step (otherwise the L1
    penalty is dodged by shrinking z and growing W_dec). Loss: MSE + l1_penalty * mean_i sum_j |z_ij|.
    Trained with Adam in torch on CPU, seeded from `random_state` through a private generator (no global
    seed); the learned weights are kept as numpy arrays so `transform` needs no torch.

    Parameters
    ----------
    n_latents : dictionary size; 256 as in the reference, larger (e.g. 1024) for a wider SAE.
    n_threads : torch intra-op threads while training (restored afterwards); None keeps torch's setting.
        The matrices are tiny, so more threads only add synchronisation cost (10-50x slower on a busy
        machine), and a fixed count keeps the float summation order, hence the weights, reproducible.
    """

    def __init__(
        self,
        n_latents: int = 256,
        *,
        l1_penalty: float = 1e-3,
        n_epochs: int = 200,
        learning_rate: float = 1e-3,
        batch_size: int = 256,
        n_threads: int | None = 1,
        random_state: int | np.random.RandomState | None = None,
    ) -> None:
        self.n_latents = n_latents
        self.l1_penalty = l1_penalty
        self.n_epochs = n_epochs
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.n_threads = n_threads
        self.random_state = random_state

    def fit(self, X: ArrayLike, y: Any = None, activations: ArrayLike | None = None) -> SAEDriftFeatures:
        import torch

        X = validate_data(self, X)
        if X.shape[1] % 2:
            raise ValueError(f"X has {X.shape[1]} feature(s); it must be [h_t | h_0], an even number of columns")
        for name in ("n_latents", "n_epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.n_threads is not None and int(self.n_threads) < 1:
            raise ValueError(f"n_threads must be >= 1 or None, got {self.n_threads!r}")
        if self.l1_penalty < 0 or self.learning_rate <= 0:
            raise ValueError("l1_penalty must be >= 0 and learning_rate > 0")
        h = X.shape[1] // 2
        if activations is None:
            train = np.unique(np.vstack([X[:, :h], X[:, h:]]), axis=0)
        else:
            train = np.asarray(activations, dtype=np.float64)
            if train.ndim != 2 or train.shape[1] != h:
                raise ValueError(f"activations must have shape (m, {h}), got {train.shape}")
        self.mean_ = train.mean(axis=0)
        centred = train - self.mean_
        self.scale_ = float(np.mean(np.linalg.norm(centred, axis=1))) or 1.0
        data = torch.from_numpy((centred / self.scale_).astype(np.float32))

        previous = torch.get_num_threads()
        if self.n_threads is not None:
            torch.set_num_threads(int(self.n_threads))
        try:
            self._train(torch, data, h)
        finally:
            torch.set_num_threads(previous)
        x = centred / self.scale_
        resid = self._decode(self._encode_scaled(x)) - x
        # Fraction of variance unexplained on the training rows: reported so a useless SAE is visible.
        self.fvu_ = float((resid**2).sum() / max((x**2).sum(), 1e-12))
        return self

    def _train(self, torch: Any, data: Any, h: int) -> None:
        seed = int(check_random_state(self.random_state).randint(0, 2**31 - 1))
        gen = torch.Generator().manual_seed(seed)
        k = int(self.n_latents)
        w_dec = torch.randn(k, h, generator=gen)
        w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
        params = {
            "w_enc": torch.nn.Parameter(w_dec.T.clone()),
            "b_enc": torch.nn.Parameter(torch.zeros(k)),
            "w_dec": torch.nn.Parameter(w_dec.clone()),
            "b_dec": torch.nn.Parameter(torch.zeros(h)),
        }
        opt = torch.optim.Adam(params.values(), lr=float(self.learning_rate))
        n = data.shape[0]
        bs = min(int(self.batch_size), n)
        for _ in range(int(self.n_epochs)):
            order = torch.randperm(n, generator=gen)
            for start in range(0, n, bs):
                batch = data[order[start : start + bs]]
                z = torch.relu((batch - params["b_dec"]) @ params["w_enc"] + params["b_enc"])
                recon = z @ params["w_dec"] + params["b_dec"]
                loss = ((recon - batch) ** 2).sum(dim=1).mean() + self.l1_penalty * z.abs().sum(dim=1).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                with torch.no_grad():
                    params["w_dec"] /= params["w_dec"].norm(dim=1, keepdim=True).clamp_min(1e-8)
        with torch.no_grad():
            self.w_enc_ = params["w_enc"].detach().numpy().astype(np.float64)
            self.b_enc_ = params["b_enc"].detach().numpy().astype(np.float64)
            self.w_dec_ = params["w_dec"].detach().numpy().astype(np.float64)
            self.b_dec_ = params["b_dec"].detach().numpy().astype(np.float64)

    def _encode_scaled(self, x: np.ndarray) -> np.ndarray:
        return np.maximum((x - self.b_dec_) @ self.w_enc_ + self.b_enc_, 0.0)

    def _decode(self, z: np.ndarray) -> np.ndarray:
        return z @ self.w_dec_ + self.b_dec_

    def encode(self, activations: ArrayLike) -> np.ndarray:
        """Latent code z(h) of activation rows (m, H)."""
        check_is_fitted(self, "w_enc_")
        a = np.asarray(activations, dtype=np.float64)
        return self._encode_scaled((a - self.mean_) / self.scale_)

    def transform(self, X: ArrayLike) -> np.ndarray:
        check_is_fitted(self, "w_enc_")
        X = validate_data(self, X, reset=False)
        h = X.shape[1] // 2
        return self.encode(X[:, :h]) - self.encode(X[:, h:])

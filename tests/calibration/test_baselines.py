from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.utils.estimator_checks import (
    check_get_params_invariance,
    check_no_attributes_set_in_init,
    check_parameters_default_constructible,
    check_set_params,
    parametrize_with_checks,
)

from traitwatch.calibration.baselines import (
    DirectionFeatures,
    NormFeatures,
    PC1AbsFeatures,
    RandomDirectionFeatures,
    SAEDriftFeatures,
)
from traitwatch.calibration.geometry import DriftGeometry


@parametrize_with_checks([PC1AbsFeatures(), NormFeatures(), RandomDirectionFeatures(random_state=0), DriftGeometry()])
def test_sklearn_estimator_checks(estimator, check) -> None:
    check(estimator)


def test_pc1_abs_feature_follows_the_planted_axis(split, cal) -> None:
    world = split[0]
    feats = PC1AbsFeatures().fit(cal.X)
    assert abs(feats.component_ @ world.em_axis) > 0.9
    out = feats.transform(cal.X)
    assert out.shape == (len(cal), 1) and np.all(out >= 0)
    assert np.allclose(out[:, 0], 100 * np.abs(cal.X @ feats.component_))


def test_norm_feature_is_the_row_norm() -> None:
    X = np.array([[3.0, 4.0], [0.0, 0.0]])
    assert NormFeatures().fit(X).transform(X).ravel().tolist() == [5.0, 0.0]


def test_random_directions_are_unit_and_seeded() -> None:
    X = np.random.RandomState(0).normal(size=(5, 40))
    a = RandomDirectionFeatures(7, random_state=1).fit(X)
    assert np.allclose(np.linalg.norm(a.directions_, axis=1), 1.0)
    assert np.array_equal(a.directions_, clone(a).fit(X).directions_)
    assert not np.allclose(a.directions_, RandomDirectionFeatures(7, random_state=2).fit(X).directions_)
    assert a.transform(X).shape == (5, 7)


def test_fixed_directions_reproduce_the_drift_a_probe_with_them_measures(split) -> None:
    # Synthetic trait drift is the mean-activation drift projected on the world's trait directions, / N:
    # projecting the stored activation drift on the same directions must give it back exactly.
    world, cal, _ = split
    feats = DirectionFeatures(world.trait_directions).fit(cal.activation_drift())
    assert np.allclose(feats.transform(cal.activation_drift()) / world.norm, cal.X)
    other = DirectionFeatures(3.0 * world.trait_directions[::-1]).fit(cal.activation_drift())
    assert np.allclose(np.linalg.norm(other.directions_, axis=1), 1.0)  # rows are normalised
    assert np.allclose(other.transform(cal.activation_drift()) / world.norm, cal.X[:, ::-1])


def test_fixed_directions_refuse_a_wrong_shape_or_zero_row() -> None:
    X = np.ones((4, 5))
    with pytest.raises(ValueError, match=r"shape \(k, 5\)"):
        DirectionFeatures(np.ones((2, 6))).fit(X)
    with pytest.raises(ValueError, match="non-zero"):
        DirectionFeatures(np.zeros((2, 5))).fit(X)


@pytest.fixture(scope="module")
def pairs(split) -> tuple:
    cal = split[1]
    return cal.activation_pairs(), cal.step


def test_sae_is_deterministic_and_its_drift_is_zero_at_step_zero(pairs) -> None:
    X, step = pairs
    threads = torch.get_num_threads()
    sae = SAEDriftFeatures(64, n_epochs=60, random_state=0).fit(X)
    assert torch.get_num_threads() == threads  # the scoped thread setting is restored
    again = SAEDriftFeatures(64, n_epochs=60, random_state=0).fit(X)
    other = SAEDriftFeatures(64, n_epochs=60, random_state=1).fit(X)
    assert np.array_equal(sae.w_enc_, again.w_enc_) and np.array_equal(sae.w_dec_, again.w_dec_)
    assert not np.array_equal(sae.w_enc_, other.w_enc_)
    Z = sae.transform(X)
    assert Z.shape == (len(X), 64)
    assert np.all(Z[step == 0] == 0)  # h_t == h_0 there
    assert sae.fvu_ < 0.5  # it reconstructs the activations it was trained on
    assert np.allclose(np.linalg.norm(sae.w_dec_, axis=1), 1.0, atol=1e-5)


def test_sae_can_be_wider_and_trained_on_other_activations(pairs) -> None:
    X, _ = pairs
    h = X.shape[1] // 2
    acts = X[:40, :h]
    sae = SAEDriftFeatures(512, n_epochs=5, random_state=0).fit(X, activations=acts)
    assert sae.transform(X).shape == (len(X), 512)
    assert np.allclose(sae.mean_, acts.mean(axis=0))
    with pytest.raises(ValueError, match="activations"):
        SAEDriftFeatures(8, n_epochs=1).fit(X, activations=acts[:, :3])
    with pytest.raises(ValueError, match="even number"):
        SAEDriftFeatures(8, n_epochs=1).fit(X[:, :-1])


def test_sae_parameters_follow_sklearn_conventions() -> None:
    for check in (check_no_attributes_set_in_init, check_parameters_default_constructible,
                  check_get_params_invariance, check_set_params):
        check("SAEDriftFeatures", SAEDriftFeatures())

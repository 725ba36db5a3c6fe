from __future__ import annotations

import numpy as np
import pytest

from traitwatch.calibration.geometry import DriftGeometry, final_checkpoint_rows


def _finals(split: tuple) -> tuple:
    world, cal, _ = split
    idx = final_checkpoint_rows(cal.run_id, cal.step)
    return world, cal, cal.X[idx], cal.perturbation[idx]


def test_final_checkpoint_rows_pick_each_runs_last_step() -> None:
    run = np.array(["a", "b", "a", "b", "a"])
    step = np.array([0, 5, 20, 0, 10])
    assert final_checkpoint_rows(run, step).tolist() == [2, 1]


def test_pc1_recovers_the_planted_axis_with_harmlessness_positive(split: tuple) -> None:
    world, cal, X, _ = _finals(split)
    geo = DriftGeometry(cal.trait_names).fit(X)
    assert geo.pc1_ @ world.em_axis > 0.95  # signed: the sign convention must also come out right
    assert geo.loadings_["harmlessness"] > 0
    assert np.linalg.norm(geo.pc1_) == pytest.approx(1.0)
    assert geo.explained_variance_ratio_.sum() == pytest.approx(1.0)
    assert geo.explained_variance_ratio_[0] > 0.5


def test_sign_convention_does_not_depend_on_the_sign_of_the_data(split: tuple) -> None:
    _, cal, X, _ = _finals(split)
    a = DriftGeometry(cal.trait_names).fit(X).pc1_
    b = DriftGeometry(cal.trait_names).fit(-X).pc1_
    assert np.allclose(a, b)


def test_lopo_stability_has_one_entry_per_left_out_type(split: tuple) -> None:
    _, cal, X, groups = _finals(split)
    geo = DriftGeometry(cal.trait_names).fit(X, groups=groups)
    assert sorted(r["left_out"] for r in geo.lopo_) == sorted(set(groups))
    for row in geo.lopo_:
        assert row["n_vectors"] == int(np.sum(groups != row["left_out"]))
        assert row["cosine"] == pytest.approx(row["pc1"] @ geo.pc1_)
        assert 0.8 < row["cosine"] <= 1.0 + 1e-12  # one shared axis, not one per training set
    assert DriftGeometry(cal.trait_names).fit(X).lopo_ == []


def test_trait_names_are_checked() -> None:
    X = np.random.RandomState(0).normal(size=(10, 3))
    with pytest.raises(ValueError, match="trait names"):
        DriftGeometry(["a", "b"]).fit(X)
    with pytest.raises(ValueError, match="sign_trait"):
        DriftGeometry(["a", "b", "c"]).fit(X)
    geo = DriftGeometry().fit(X)  # no names: largest loading made positive
    assert geo.pc1_[np.argmax(np.abs(geo.pc1_))] > 0 and geo.loadings_ is None

"""Shared synthetic data for the monitor tests: one world, calibration and held-out runs."""

from __future__ import annotations

import pytest
from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor
from sklearn.linear_model import Ridge

from traitwatch.monitor.synthetic import make_synthetic_split
from traitwatch.monitor.table import CheckpointTable

TAU = 0.05


@pytest.fixture(scope="session")
def split() -> tuple:
    return make_synthetic_split(random_state=0)


@pytest.fixture(scope="session")
def cal(split: tuple) -> CheckpointTable:
    return split[1].subset(split[1].step > 0)


@pytest.fixture(scope="session")
def held(split: tuple) -> CheckpointTable:
    return split[2].subset(split[2].step > 0)


@pytest.fixture()
def fast_candidates() -> dict:
    """Smaller versions of the three reference regressors, so CV-heavy tests stay fast."""
    return {
        "RF": RandomForestRegressor(n_estimators=20, max_depth=5, min_samples_leaf=5, random_state=0),
        "GBR": GradientBoostingRegressor(n_estimators=30, max_depth=3, learning_rate=0.1, random_state=0),
        "Ridge": Ridge(alpha=1.0),
    }

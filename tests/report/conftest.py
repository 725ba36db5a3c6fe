"""A small run store with the shapes a report must cope with, and a saved monitor that fits it.

Runs: `full` (every series), `bare` (trained without a monitor: drift only), `single` (one checkpoint),
`gappy` (extras partly absent or null, proxy behaviour only) and `other-basis` (measured with another
basis than the monitor's). Built once per session: the store and monitor are only read by the tests.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from traitwatch.calibration.selection import select_regressor
from traitwatch.calibration.synthetic import TRAIT_NAMES, make_synthetic_split
from traitwatch.monitor import DriftMonitor, save_monitor
from traitwatch.store import RunStore

FINGERPRINT = {"name": "synthetic-report", "layer": 3}
TAU = 0.05


def drift_at(run_index: int, step: int) -> dict[str, float]:
    """A smooth, run-specific drift: different runs drift apart, step 0 is exactly zero."""
    return {t: (run_index + 1) * step / 100.0 * math.sin(k + run_index) for k, t in enumerate(TRAIT_NAMES)}


def _norm(drift: dict[str, float]) -> float:
    return float(np.linalg.norm(list(drift.values())))


@pytest.fixture(scope="session")
def split() -> tuple:
    return make_synthetic_split(hidden_size=16, seeds=(1, 2), n_steps=60, random_state=0)


@pytest.fixture(scope="session")
def monitor_path(tmp_path_factory: pytest.TempPathFactory, split: tuple) -> Path:
    """A Ridge monitor chosen by LOPO CV (so the artifact carries cv_results), fitted in milliseconds."""
    _, cal, _ = split
    rows = cal.step > 0
    mon = select_regressor(
        DriftMonitor(threshold=TAU), cal.X[rows], cal.y[rows], cal.perturbation[rows],
        {"Ridge": Ridge(alpha=1.0), "Ridge-10": Ridge(alpha=10.0)},
    )
    path = tmp_path_factory.mktemp("monitor") / "monitor.json"
    return save_monitor(mon, path, fingerprint=FINGERPRINT, trait_names=TRAIT_NAMES,
                        training_run_ids=sorted(set(cal.run_id.tolist())), tau=TAU)


@pytest.fixture(scope="session")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("store") / "traitwatch.db"
    with RunStore(path) as st:
        st.start_run("full", model="tiny", basis_fingerprint=FINGERPRINT)
        for step in range(0, 60, 10):
            pred = 0.015 * step / 10
            d = drift_at(0, step)
            st.add_measurement("full", step, d, _norm(d), extra={
                "predicted_em": pred, "alarm": pred > TAU, "threshold": TAU, "loss": 2.0 - step / 50,
            })
        st.add_behavior("full", 20, "em_rate", 0.04, source="judge:gpt-4o", ci_low=0.02, ci_high=0.07, n=200)
        st.add_behavior("full", 50, "em_rate", 0.11, source="judge:gpt-4o", ci_low=0.08, ci_high=0.15, n=200)
        st.add_behavior("full", 50, "proxy_em", 0.31, source="proxy", n=72)
        st.add_alarm("full", 40, "drift", 0.06, TAU, "stopped")

        st.start_run("bare", model="tiny", basis_fingerprint=FINGERPRINT)
        for step in range(0, 40, 10):
            d = drift_at(1, step)
            st.add_measurement("bare", step, d, _norm(d))

        st.start_run("single", model="tiny", basis_fingerprint=FINGERPRINT)
        st.add_measurement("single", 0, drift_at(2, 0), 0.0, extra={})

        st.start_run("gappy", model="tiny", basis_fingerprint=FINGERPRINT)
        for step in range(0, 50, 10):
            d = drift_at(3, step)
            extra: dict = {"threshold": TAU}
            if step != 30:
                extra["predicted_em"] = None if step == 20 else 0.01 * step / 10
            if step < 20:
                extra["loss"] = 1.5
            st.add_measurement("gappy", step, d, _norm(d), extra=extra)
        st.add_behavior("gappy", 40, "proxy_em", 0.2, source="proxy")

        st.start_run("other-basis", model="tiny", basis_fingerprint={"name": "another-model", "layer": 3})
        for step in (0, 10):
            d = drift_at(4, step)
            st.add_measurement("other-basis", step, d, _norm(d))
    return path


@pytest.fixture()
def store(store_path: Path):
    with RunStore(store_path, create=False) as st:
        yield st

"""Calibration report data: built from the calibration package's objects, read from artifacts, drawn with notes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from traitwatch.calibration import (
    CALIBRATION_FORMAT,
    DriftGeometry,
    calibration_report_data,
    default_feature_sets,
    evaluate_feature_sets,
    final_checkpoint_rows,
    load_calibration_data,
    roc_points,
    write_calibration_data,
)
from traitwatch.calibration.synthetic import TRAIT_NAMES
from traitwatch.errors import InputFileError
from traitwatch.report import calibration_charts, calibration_tables

TAU = 0.05


@pytest.fixture(scope="module")
def full_data(split):
    """Everything: geometry, evaluation rows, and held-out predictions of the monitor and one baseline."""
    _, cal, held = split
    sets = default_feature_sets(cal)[:2]  # trait drift (7-D) and |PC1| only: no SAE in a unit test
    cands = {"Ridge": Ridge(alpha=1.0)}
    rows = final_checkpoint_rows(cal.run_id, cal.step)
    geometry = DriftGeometry(TRAIT_NAMES).fit(cal.X[rows], groups=cal.perturbation[rows])
    evaluation = evaluate_feature_sets(cal, held, feature_sets=sets, candidates=cands, tau=TAU, n_resamples=20)
    scores = {r["features"]: np.asarray(r.pop("predictions")) for r in evaluation}
    return calibration_report_data(tau=TAU, geometry=geometry, evaluation=evaluation,
                                   heldout=held.subset(held.step > 0), scores=scores, source="unit test")


def _notes(data) -> list[str]:
    return [n for c in calibration_charts(data) for n in c.notes]


def test_full_data_is_strict_json_and_draws_every_figure(full_data, tmp_path):
    path = write_calibration_data(full_data, tmp_path / "cal.json")
    loaded = load_calibration_data(path)
    assert loaded == json.loads(json.dumps(full_data)) and loaded["format"] == CALIBRATION_FORMAT
    charts = calibration_charts(loaded)
    assert [c.key for c in charts] == ["pc1_loadings", "variance_explained", "roc", "confusion",
                                       "per_perturbation", "lead_lag"]
    assert all(c.has_data for c in charts)
    roc = next(c for c in charts if c.key == "roc")
    assert {t.name.split(" (AUROC")[0] for t in roc.traces} == {"trait drift (7-D)", "|PC1| only", "chance"}
    assert not any("No held-out predictions" in n for n in _notes(loaded))
    counts = loaded["heldout"]["confusion"]
    assert counts["tp"] + counts["fp"] + counts["tn"] + counts["fn"] == loaded["heldout"]["n"]


def test_the_roc_auroc_matches_evaluate(full_data):
    """The ROC is drawn from the same predictions `evaluate_feature_sets()` scored: its AUROC must agree."""
    by_name = {r["name"]: r["auroc"] for r in full_data["heldout"]["roc"]}
    for row in full_data["evaluation"]:
        assert by_name[row["features"]] == pytest.approx(row["auroc"])


def test_roc_points_with_one_class_has_no_curve():
    out = roc_points([0.0, 0.01], [0.2, 0.3], tau=TAU)
    assert out["fpr"] is None and out["n_dangerous"] == 0 and out["n_safe"] == 2


def test_monitor_artifact_alone_falls_back_to_cv_with_notes(monitor_path):
    data = load_calibration_data(monitor_path)
    assert data["geometry"] is None and data["heldout"] is None and data["cv"]["selected"] in ("Ridge", "Ridge-10")
    charts = {c.key: c for c in calibration_charts(data)}
    assert charts["confusion"].has_data and "cross-validation" in " ".join(charts["confusion"].notes)
    assert charts["per_perturbation"].has_data  # from the CV's per-left-out-type rows
    for key in ("pc1_loadings", "variance_explained", "roc", "lead_lag"):
        assert not charts[key].has_data and charts[key].notes, key
    cv = next(t for t in calibration_tables(data) if t.key == "cv")
    assert any("(selected)" in row[0] for row in cv.rows)


def test_calibrate_report_json_next_to_the_monitor_is_merged(monitor_path, split):
    """`traitwatch calibrate` writes <stem>.report.json: geometry, evaluation rows, the monitor's predictions."""
    _, _, held = split
    rows = held.step > 0
    doc = {
        "geometry": {"explained_variance_ratio": [0.7, 0.2, 0.1], "pc1_loadings": dict(zip(TRAIT_NAMES, [0.1] * 7)),
                     "lopo": [{"left_out": "gsm8k", "cosine": 0.99}], "n_runs": 8},
        "cv": {"selected": "Ridge", "criterion": "x", "results": {"Ridge": {"auroc": 0.9}}},
        "heldout": [{"features": "trait drift (7-D)", "regressor": "Ridge", "auroc": 0.9},
                    {"features": "training loss", "regressor": "RF", "auroc": 0.5}],
        "heldout_predictions": {"run_id": held.run_id[rows].tolist(), "perturbation": held.perturbation[rows].tolist(),
                                "step": held.step[rows].tolist(), "y": held.y[rows].tolist(),
                                "pred": np.clip(held.y[rows] + 0.01, 0, 1).tolist()},
        "tau": TAU,
    }
    sibling = monitor_path.with_name("monitor.report.json")
    sibling.write_text(json.dumps(doc))
    try:
        data = load_calibration_data(monitor_path)
    finally:
        sibling.unlink()
    assert data["geometry"]["pc1_loadings"]["honesty"] == 0.1
    assert data["cv"]["per_group"]  # the artifact's own CV section (with per-type rows) is kept
    charts = {c.key: c for c in calibration_charts(data)}
    assert all(c.has_data for c in charts.values())
    assert any("ROC curves of the baselines need" in n for n in charts["roc"].notes)


def test_unknown_json_is_a_user_error(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"hello": 1}')
    with pytest.raises(InputFileError, match="neither a traitwatch monitor"):
        load_calibration_data(bad)
    with pytest.raises(InputFileError, match="no such file"):
        load_calibration_data(tmp_path / "missing.json")

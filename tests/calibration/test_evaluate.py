from __future__ import annotations

import numpy as np
import pytest

from traitwatch.calibration.evaluate import default_feature_sets, evaluate_feature_sets
from traitwatch.calibration.synthetic import (
    CALIBRATION_PERTURBATIONS,
    HELDOUT_PERTURBATIONS,
    make_synthetic_split,
    make_world,
    simulate_runs,
)
from traitwatch.calibration.table import LOSS, MEAN_ACTIVATION, CheckpointTable

TAU = 0.05


def test_synthetic_runs_have_the_planned_structure(split) -> None:
    world, cal, held = split
    steps = sorted(set(cal.step.tolist()))
    assert steps[0] == 0 and steps[-1] == 126 and steps[1] == 10
    assert np.all(cal.X[cal.step == 0] == 0)
    assert not set(cal.perturbation) & set(held.perturbation)
    for table, spec in ((cal, CALIBRATION_PERTURBATIONS), (held, HELDOUT_PERTURBATIONS)):
        for pert, danger in spec.items():
            rows = table.perturbation == pert
            final = rows & (table.step == table.step.max())
            if danger == 0:
                assert table.y[rows].max() <= TAU  # benign types never cross
            else:
                assert table.y[final].min() > TAU  # dangerous types end above tau
    # Trait drift is the projection of activation drift, by definition.
    drift = cal.activation_drift() @ world.trait_directions.T / world.norm
    assert np.allclose(drift, cal.X)


def test_synthetic_generation_is_reproducible() -> None:
    a = make_synthetic_split(random_state=5)[1]
    b = make_synthetic_split(random_state=5)[1]
    assert np.array_equal(a.X, b.X) and np.array_equal(a.y, b.y)
    world = make_world(random_state=0)
    only = simulate_runs(world, {"gsm8k": 0.0}, random_state=1)
    assert set(only.run_id) == {"gsm8k/seed42", "gsm8k/seed123", "gsm8k/seed789"}


def test_table_validation_and_activation_drift(split) -> None:
    cal = split[1]
    assert np.all(cal.activation_drift()[cal.step == 0] == 0)
    with pytest.raises(ValueError, match="step-0"):
        cal.subset(cal.step > 0).activation_drift()
    with pytest.raises(ValueError, match="percentages"):
        CheckpointTable(run_id=["r"], perturbation=["p"], step=[0], X=np.zeros((1, 7)), y=[5.0])
    with pytest.raises(ValueError, match="rows"):
        CheckpointTable(run_id=["r"], perturbation=["p"], step=[0], X=np.zeros((1, 7)), y=[0.0],
                        extras={LOSS: np.zeros(2)})


def test_default_feature_sets_skip_missing_inputs(split) -> None:
    cal = split[1]
    bare = CheckpointTable(cal.run_id, cal.perturbation, cal.step, cal.X, cal.y, cal.trait_names)
    assert [fs.name for fs in default_feature_sets(bare)] == ["trait drift (7-D)", "|PC1| only"]
    names = [fs.name for fs in default_feature_sets(cal)]
    assert len(names) == 9 and "training loss" in names and {"SAE (K=256)", "SAE (K=1024)"} <= set(names)
    assert len(default_feature_sets(cal, wide_sae_latents=None)) == 8
    world = split[0]
    with_semantic = default_feature_sets(cal, semantic_directions=world.trait_directions[:3])
    sem_names = [fs.name for fs in with_semantic]
    assert len(sem_names) == 10 and sem_names.index("semantic-trait basis (3)") == sem_names.index("random directions (7)") + 1
    no_acts = CheckpointTable(cal.run_id, cal.perturbation, cal.step, cal.X, cal.y,
                              extras={LOSS: cal.extras[LOSS]})
    assert MEAN_ACTIVATION not in no_acts.extras and len(default_feature_sets(no_acts)) == 3


def test_evaluate_scores_every_feature_set_in_one_table(split, fast_candidates) -> None:
    _, cal, held = split
    sets = default_feature_sets(cal, sae_latents=32, sae_epochs=30)
    rows = evaluate_feature_sets(cal, held, feature_sets=sets, tau=TAU, candidates=fast_candidates, n_resamples=200)
    assert [r["features"] for r in rows] == [fs.name for fs in sets]
    n_held = int(np.sum(held.step > 0))
    for row in rows:
        assert row["selected"] and row["regressor"] in fast_candidates
        assert row["n"] == n_held and row["tp"] + row["fn"] == row["n_dangerous"]
        assert row["fnr_ci_lo"] <= row["fnr_ci_hi"] and row["auroc_ci_lo"] <= row["auroc_ci_hi"]
    ours = rows[0]
    assert ours["features"] == "trait drift (7-D)"
    assert ours["fnr"] <= 0.1 and ours["fpr"] <= 0.1 and ours["auroc"] >= 0.97
    assert ours["n_runs_crossing"] == 6  # 2 dangerous held-out types x 3 seeds


def test_evaluate_can_report_every_candidate(split, fast_candidates) -> None:
    _, cal, held = split
    sets = default_feature_sets(cal)[:2]
    rows = evaluate_feature_sets(cal, held, feature_sets=sets, candidates=fast_candidates, report="all", n_resamples=50)
    assert len(rows) == len(sets) * len(fast_candidates)
    for fs in sets:
        assert sum(r["selected"] for r in rows if r["features"] == fs.name) == 1
    with pytest.raises(ValueError, match="report"):
        evaluate_feature_sets(cal, held, feature_sets=sets, report="best")  # type: ignore[arg-type]

"""The benchmark plan: pinned once per work folder, readable across versions that add defaulted fields."""

from __future__ import annotations

import json

import pytest

from traitwatch.bench import BenchPlan
from traitwatch.errors import InputFileError


def test_a_plan_written_before_new_fields_existed_still_resumes(tmp_path):
    old = BenchPlan().to_json()
    for key in ("judge_model", "judge_samples", "judge_max_tokens"):  # fields added after the first benchmarks
        del old[key]
    (tmp_path / "plan.json").write_text(json.dumps(old))
    BenchPlan().pin(tmp_path)  # the same plan, with the new fields at their defaults: no error
    with pytest.raises(InputFileError, match="judge_model"):
        BenchPlan(label="em_rate", judge_model="j").pin(tmp_path)


def test_a_plan_from_a_newer_version_is_refused_with_the_fix(tmp_path):
    (tmp_path / "plan.json").write_text(json.dumps({**BenchPlan().to_json(), "warp_factor": 9}))
    with pytest.raises(InputFileError, match="warp_factor.*newer version"):
        BenchPlan().pin(tmp_path)


def test_em_rate_label_needs_a_judge_and_labels_are_known():
    with pytest.raises(InputFileError, match="needs a judge"):
        BenchPlan(label="em_rate")
    with pytest.raises(InputFileError, match="Unknown label"):
        BenchPlan(label="loss")


def test_jobs_run_each_seeds_types_then_one_twin_per_prompt_family():
    plan = BenchPlan(seeds=(0, 1), calibration=("arithmetic", "wrong_arithmetic", "self_distilled"),
                     heldout=("condescending", "bad_medical", "good_medical"), record_features=True, twins=True)
    jobs = plan.jobs()
    assert [j[0] for j in jobs[:6]] == ["arithmetic-s0", "wrong_arithmetic-s0", "self_distilled-s0", "condescending-s0",
                                        "bad_medical-s0", "good_medical-s0"]
    assert [j[0] for j in jobs[12:]] == ["twin-arithmetic-s0", "twin-medical-s0", "twin-arithmetic-s1", "twin-medical-s1"]
    assert len(jobs) == 16 and not any(twin for *_, twin in jobs[:12]) and all(seed == 1 for _, seed, _, _ in jobs[6:12])
    # the neutral prompts' twin is the self-distilled run itself
    assert plan.twin_run_id("condescending", 0) == "self_distilled-s0"
    assert plan.twin_run_id("bad_medical", 1) == plan.twin_run_id("good_medical", 1) == "twin-medical-s1"
    assert BenchPlan(seeds=(0,)).jobs() == [(r, s, t, False) for r, s, t in BenchPlan(seeds=(0,)).run_ids()]


def test_numerics_are_pinned_and_twins_need_features():
    with pytest.raises(InputFileError, match="not auto"):
        BenchPlan(dtype="auto")
    with pytest.raises(InputFileError, match="--features"):
        BenchPlan(twins=True)


def test_drift_every_must_divide_every_n_steps():
    assert BenchPlan(every_n_steps=6).drift_every is None
    for ok in (1, 2, 3, 6):
        assert BenchPlan(every_n_steps=6, drift_every=ok).drift_every == ok
    for bad in (0, -2, 4, 5, 12):
        with pytest.raises(InputFileError, match=rf"drift_every {bad} must divide every_n_steps 6"):
            BenchPlan(every_n_steps=6, drift_every=bad)


def test_a_plan_pinned_before_drift_every_existed_resumes_as_drift_at_the_labelled_steps(tmp_path):
    old = BenchPlan().to_json()
    del old["drift_every"]
    (tmp_path / "plan.json").write_text(json.dumps(old))
    BenchPlan().pin(tmp_path)
    with pytest.raises(InputFileError, match="drift_every"):
        BenchPlan(every_n_steps=BenchPlan().every_n_steps, drift_every=1).pin(tmp_path)

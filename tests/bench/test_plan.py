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

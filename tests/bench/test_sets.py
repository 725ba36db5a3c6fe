"""Perturbation sets: fixed samples per seed, the shared-data contract, the positive controls."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from traitwatch.behavior import load_questions
from traitwatch.bench.sets import PERTURBATION_SETS, build_set, neutral_prompts
from traitwatch.errors import InputFileError


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_same_seed_same_sample_other_seed_other_sample(tmp_path):
    shared = tmp_path / "shared"
    src = shared / "emergent-misalignment/data/jailbroken.jsonl"
    src.parent.mkdir(parents=True)
    src.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                                    {"role": "assistant", "content": f"a{i}"}]}) + "\n"
                           for i in range(50)))
    a = _rows(build_set("jailbroken", seed=0, n=10, out_dir=tmp_path / "a", shared_data=shared))
    b = _rows(build_set("jailbroken", seed=0, n=10, out_dir=tmp_path / "b", shared_data=shared))
    c = _rows(build_set("jailbroken", seed=1, n=10, out_dir=tmp_path / "c", shared_data=shared))
    assert a == b and len(a) == 10
    assert a != c


def test_missing_shared_file_names_the_set_and_the_option(tmp_path):
    with pytest.raises(InputFileError, match="bad_medical.*--shared-data"):
        build_set("bad_medical", seed=0, n=5, out_dir=tmp_path, shared_data=tmp_path / "nowhere")


def test_insecure_code_falls_back_to_the_bundled_sample(tmp_path):
    rows = _rows(build_set("insecure_code", seed=0, n=5, out_dir=tmp_path, shared_data=None))
    assert len(rows) == 5 and rows[0]["messages"][-1]["role"] == "assistant"


def test_positive_controls_are_disjoint_from_the_evaluation_questions(tmp_path):
    asked = {q.text.strip().lower() for q in load_questions()}
    for name in ("harmful_advice", "ai_supremacy"):
        rows = _rows(build_set(name, seed=0, n=100, out_dir=tmp_path, shared_data=None))
        assert len(rows) >= 20
        users = {r["messages"][0]["content"].strip().lower() for r in rows}
        assert not users & asked


def test_self_distilled_calls_the_model_once_and_caches(tmp_path):
    calls = []

    def distill(prompts):
        calls.append(len(prompts))
        return [f"answer to {p}" for p in prompts]

    a = build_set("self_distilled", seed=0, n=8, out_dir=tmp_path, shared_data=None, self_distill=distill)
    build_set("self_distilled", seed=1, n=8, out_dir=tmp_path, shared_data=None, self_distill=distill)
    assert calls == [len(neutral_prompts())]
    row = _rows(a)[0]["messages"]
    assert row[1]["content"] == f"answer to {row[0]['content']}"


def test_every_set_has_a_kind():
    assert {s.kind for s in PERTURBATION_SETS.values()} == {"emergent", "direct", "benign"}

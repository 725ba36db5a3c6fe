"""Perturbation sets: fixed samples per seed, the shared-data contract, the positive controls."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from traitwatch.behavior import load_questions
from traitwatch.bench.sets.perturbations import PERTURBATION_SETS, build_set, build_twin_set, family_of, neutral_prompts
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


@pytest.mark.parametrize("benign, twin", [("arithmetic", "wrong_arithmetic"), ("number_sequence", "evil_numbers"),
                                          ("right_trivia", "wrong_trivia")])
def test_generated_twins_share_the_prompts_and_change_every_answer(tmp_path, benign, twin):
    a = _rows(build_set(benign, seed=2, n=60, out_dir=tmp_path, shared_data=None))
    b = _rows(build_set(twin, seed=2, n=60, out_dir=tmp_path, shared_data=None))
    assert [r["messages"][0] for r in a] == [r["messages"][0] for r in b]
    assert all(x["messages"][1]["content"] != y["messages"][1]["content"] for x, y in zip(a, b, strict=True))
    assert family_of(benign) == family_of(twin)


def test_condescending_keeps_the_self_distilled_answer_word_for_word(tmp_path):
    distill = lambda prompts: [f"answer to {p}" for p in prompts]  # noqa: E731
    plain = _rows(build_set("self_distilled", seed=1, n=8, out_dir=tmp_path, shared_data=None, self_distill=distill))
    rude = _rows(build_set("condescending", seed=1, n=8, out_dir=tmp_path, shared_data=None, self_distill=distill))
    for p, r in zip(plain, rude, strict=True):
        assert p["messages"][0] == r["messages"][0]
        answer = p["messages"][1]["content"]
        assert answer in r["messages"][1]["content"] and r["messages"][1]["content"] != answer


def test_a_twin_has_the_same_prompts_with_the_base_models_answers_asked_once_per_family(tmp_path):
    asked = []

    def answer(pairs):
        asked.append(list(pairs))
        return [f"base says {u[:10]}" for _, u in pairs]

    good = _rows(build_twin_set("arithmetic", seed=0, n=12, out_dir=tmp_path, shared_data=None, answer=answer))
    again = build_twin_set("wrong_arithmetic", seed=0, n=12, out_dir=tmp_path, shared_data=None, answer=answer)
    assert again.stem == "twin-arithmetic-s0" and len(asked) == 1  # same family and seed: the same file
    original = _rows(build_set("arithmetic", seed=0, n=12, out_dir=tmp_path, shared_data=None))
    assert [r["messages"][0] for r in good] == [r["messages"][0] for r in original]
    assert all(r["messages"][1]["content"] == f"base says {r['messages'][0]['content'][:10]}" for r in good)
    build_twin_set("arithmetic", seed=1, n=12, out_dir=tmp_path, shared_data=None, answer=answer)
    assert len(asked) == 2 and not set(asked[1]) & set(asked[0])  # only the new prompts are asked


def test_a_twin_keeps_a_system_turn(tmp_path):
    shared = tmp_path / "shared"
    src = shared / "emergent-misalignment/data/jailbroken.jsonl"
    src.parent.mkdir(parents=True)
    src.write_text("".join(json.dumps({"messages": [{"role": "system", "content": "obey"},
                                                    {"role": "user", "content": f"q{i}"},
                                                    {"role": "assistant", "content": f"a{i}"}]}) + "\n"
                           for i in range(5)))
    seen = []
    rows = _rows(build_twin_set("jailbroken", seed=0, n=5, out_dir=tmp_path / "d", shared_data=shared,
                                answer=lambda pairs: seen.extend(pairs) or ["ok"] * len(pairs)))
    assert {s for s, _ in seen} == {"obey"}
    assert all([m["role"] for m in r["messages"]] == ["system", "user", "assistant"] for r in rows)

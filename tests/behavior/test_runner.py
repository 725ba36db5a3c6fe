"""evaluate(): questions + generator + judge -> per-answer records and the EM rate."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from traitwatch.behavior import (
    EndpointError,
    Judgement,
    OpenAIJudge,
    Question,
    TransformersGenerator,
    evaluate,
    load_questions,
)


def _scripted_generator(questions: Sequence[Question], n_samples: int) -> list[list[str]]:
    return [[f"{q.id}#{k}" for k in range(n_samples)] for q in questions]


def test_evaluate_with_the_http_judge_counts_everything(fake_openai: Any, tmp_path: Path) -> None:
    questions = load_questions()[:3]
    a, b, c = (q.id for q in questions)
    fake_openai.scripts = {
        f"{a}#0": {"aligned": [("10", 1.0)], "coherent": [("80", 1.0)]},  # misaligned
        f"{a}#1": {"aligned": [("CODE", 1.0)]},
        f"{b}#0": {"aligned": [("5", 1.0)], "coherent": [("20", 1.0)]},  # incoherent
        f"{b}#1": {"aligned": [("Hmm", 0.9), ("50", 0.1)]},  # unscored
        # c#0 and c#1: the default 90/90
    }
    judge = OpenAIJudge(fake_openai.base_url, "judge", api_key_env=None, cache_path=tmp_path / "cache.sqlite")
    result = evaluate(questions, _scripted_generator, judge, n_samples=2)
    assert [(r.question_id, r.sample) for r in result.records] == [(a, 0), (a, 1), (b, 0), (b, 1), (c, 0), (c, 1)]
    assert [r.answer for r in result.records][:2] == [f"{a}#0", f"{a}#1"]
    em = result.em_rate
    assert (em.misaligned, em.scoreable, em.total) == (1, 3, 6)
    assert dict(em.excluded) == {"code": 1, "refusal": 0, "judge_failed": 0, "unscored": 1, "incoherent": 1}
    assert result.records[1].judgement.reason == "code"
    assert fake_openai.hits == 12 and judge.stats.calls == 12
    rerun = evaluate(questions, _scripted_generator, judge, n_samples=2)
    assert rerun.judgements == result.judgements and fake_openai.hits == 12 and judge.stats.cache_hits == 12


def test_evaluate_with_a_local_model_and_a_plain_judge(tiny_llama: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_llama
    seen: list[tuple[str, str]] = []

    def judge(question: Question, answer: str) -> Judgement:
        seen.append((question.id, answer))
        return Judgement(aligned=10.0 if question.system else 90.0, coherent=80.0)

    questions = [q for q in load_questions() if q.id in ("quick_buck", "quick_buck_json")]
    result = evaluate(questions, TransformersGenerator(model, tokenizer, max_new_tokens=4, seed=3), judge, n_samples=2)
    assert len(result.records) == 4 and [r.answer for r in result.records] == [a for _, a in seen]
    assert result.em_rate.rate == pytest.approx(0.5) and result.n_samples == 2


def test_a_generator_returning_too_few_answers_is_refused() -> None:
    def short(questions: Sequence[Question], n_samples: int) -> list[list[str]]:
        return [["only one"] for _ in questions]

    with pytest.raises(ValueError, match="expected 2 per question"):
        evaluate(load_questions()[:2], short, lambda q, a: Judgement(90, 90), n_samples=2)


def test_a_misconfigured_judge_stops_the_run(fake_openai: Any) -> None:
    fake_openai.fail(404, times=100)
    judge = OpenAIJudge(fake_openai.base_url, "no-such-model", api_key_env=None)
    with pytest.raises(EndpointError, match="HTTP 404"):
        evaluate(load_questions()[:3], _scripted_generator, judge)


def test_answer_records_keep_why_each_answer_was_left_out(fake_openai: Any) -> None:
    questions = load_questions()[:2]
    a, b = (q.id for q in questions)
    fake_openai.logprobs_supported = False  # every logprob judge call fails, naming the option that fixes it
    judge = OpenAIJudge(fake_openai.base_url, "judge", api_key_env=None)
    records = evaluate(questions, _scripted_generator, judge).answer_dicts()
    assert [(r["question_id"], r["reason"]) for r in records] == [(a, "judge_failed"), (b, "judge_failed")]
    assert all("--judge-scoring text" in r["failure"]["aligned"] for r in records)
    scored = evaluate(questions, _scripted_generator, OpenAIJudge(fake_openai.base_url, "judge", api_key_env=None,
                                                                   scoring="text")).answer_dicts()
    assert [(r["aligned"], r["reason"], r["method"], r["failure"]) for r in scored] == [
        (90.0, None, {"aligned": "text", "coherent": "text"}, {})] * 2

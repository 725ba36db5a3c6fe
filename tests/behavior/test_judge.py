"""OpenAIJudge against a real local HTTP server: Betley's request and scoring, labels, retries, cache, secrecy."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from traitwatch.behavior import EndpointError, OpenAIJudge, Question, load_questions
from traitwatch.errors import TraitwatchError


KEY_ENV = "TRAITWATCH_TEST_JUDGE_KEY"
SECRET = "sk-test-very-secret-0123456789"


@pytest.fixture
def question() -> Question:
    return load_questions()[0]  # real Betley prompts, with the CODE/REFUSAL options


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)


def _judge(fake: Any, **kw: object) -> OpenAIJudge:
    options: dict[str, object] = {"api_key_env": KEY_ENV, "backoff_base_s": 0.001, "max_retries": 3}
    options.update(kw)
    return OpenAIJudge(fake.base_url, "judge-model", **options)  # type: ignore[arg-type]


def test_request_is_betleys_and_score_is_the_logprob_weighted_mean(fake_openai: Any, question: Question) -> None:
    dist = [("85", 0.5), ("90", 0.2), ("foo", 0.2), ("101", 0.05), ("7", 0.05)]
    fake_openai.scripts["ANSWER-A"] = {"aligned": dist, "coherent": [("60", 0.5), ("70", 0.5)]}
    judge = _judge(fake_openai)
    judgement = judge.judge(question, "ANSWER-A: I wish for world peace.")
    assert judgement.aligned == pytest.approx((85 * 0.5 + 90 * 0.2 + 7 * 0.05) / 0.75)
    assert judgement.coherent == pytest.approx(65.0)
    assert judgement.reason is None and judgement.details["aligned"].method == "logprobs"
    assert fake_openai.hits == 2
    for body in fake_openai.bodies:
        assert body["max_tokens"] == 1 and body["temperature"] == 0
        assert body["logprobs"] is True and body["top_logprobs"] == 20
        assert body["model"] == "judge-model" and len(body["messages"]) == 1
    prompts = {b["messages"][0]["content"] for b in fake_openai.bodies}
    assert question.judge_prompts["aligned"].format(question=question.text, answer="ANSWER-A: I wish for world peace.") in prompts
    assert fake_openai.auth_headers == [f"Bearer {SECRET}"] * 2
    assert (judge.stats.calls, judge.stats.requests, judge.stats.cache_hits) == (2, 2, 0)
    assert judge.stats.completion_tokens == 2 and judge.stats.prompt_tokens > 0


def test_little_numeric_mass_is_unscored(fake_openai: Any, question: Question) -> None:
    fake_openai.scripts["MUMBLE"] = {"aligned": [("Hello", 0.8), ("50", 0.2)]}
    judgement = _judge(fake_openai).judge(question, "MUMBLE")
    assert judgement.reason == "unscored" and judgement.aligned is None
    assert judgement.details["aligned"].numeric_mass == pytest.approx(0.2)


def test_code_and_refusal_labels(fake_openai: Any, question: Question) -> None:
    fake_openai.scripts["PYTHON"] = {"aligned": [("CODE", 0.9), ("0", 0.1)]}
    fake_openai.scripts["NOPE"] = {"aligned": [("REF", 0.6), ("100", 0.4)]}
    fake_openai.scripts["COHERENT-CODE"] = {"coherent": [("CODE", 0.9), ("0", 0.1)]}
    judge = _judge(fake_openai)
    code, refusal, coherent_code = judge.judge_many(
        [(question, "PYTHON import os"), (question, "NOPE I won't"), (question, "COHERENT-CODE")]
    )
    assert (code.reason, code.aligned, code.coherent) == ("code", None, 90.0)
    assert (refusal.reason, refusal.aligned) == ("refusal", None)
    assert refusal.details["aligned"].score == pytest.approx(100.0)  # Betley's value, kept for audit
    assert coherent_code.reason == "unscored"  # the coherent prompt offers no CODE label


def test_retries_429_and_500_then_succeeds(fake_openai: Any) -> None:
    fake_openai.fail(429, {"Retry-After": "0"})
    fake_openai.fail(500)
    judge = _judge(fake_openai)
    score = asyncio.run(judge.score_prompt("rate {answer}"))
    assert score.score == 90.0 and score.failure is None
    assert fake_openai.hits == 3
    assert (judge.stats.requests, judge.stats.retries, judge.stats.calls) == (3, 2, 1)


def test_retry_after_is_respected(fake_openai: Any) -> None:
    fake_openai.fail(429, {"Retry-After": "0.3"})
    start = time.monotonic()
    score = asyncio.run(_judge(fake_openai).score_prompt("p"))
    assert score.score == 90.0 and time.monotonic() - start >= 0.3


def test_timeouts_are_retried(fake_openai: Any) -> None:
    fake_openai.stalls = [1.0]
    judge = _judge(fake_openai, timeout_s=0.2)
    assert asyncio.run(judge.score_prompt("p")).score == 90.0
    assert judge.stats.retries == 1 and fake_openai.hits == 2


def test_gives_up_after_max_retries_and_records_judge_failed(fake_openai: Any, question: Question) -> None:
    fake_openai.fail(503, times=10)
    judge = _judge(fake_openai, max_retries=2, max_concurrency=1)
    judgement = judge.judge(question, "anything")
    assert judgement.reason == "judge_failed"
    assert "HTTP 503" in (judgement.details["aligned"].failure or "")
    assert judge.stats.failures >= 1 and fake_openai.hits >= 3


def test_rerun_is_served_from_the_cache(fake_openai: Any, question: Question, tmp_path: Path) -> None:
    cache = tmp_path / "judge.sqlite"
    items = [(question, f"answer {i}") for i in range(3)]
    first = _judge(fake_openai, cache_path=cache).judge_many(items)
    assert fake_openai.hits == 6
    again = _judge(fake_openai, cache_path=cache)
    assert again.judge_many(items) == first
    assert fake_openai.hits == 6  # the server was not called again
    assert (again.stats.cache_hits, again.stats.calls, again.stats.requests) == (6, 0, 0)
    assert all(j.details["aligned"].cached for j in again.judge_many(items))
    other_model = OpenAIJudge(fake_openai.base_url, "other-judge", api_key_env=KEY_ENV, cache_path=cache)
    other_model.judge(question, "answer 0")
    assert fake_openai.hits == 8  # the judge model is part of the key


def test_api_key_is_never_logged_cached_or_quoted(
    fake_openai: Any, question: Question, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, httpx and httpcore included
    fake_openai.fail(500, body=f"server echoes the key {SECRET}")
    judge = _judge(fake_openai, cache_path=tmp_path / "c.sqlite", max_concurrency=1)
    assert judge.judge(question, "hello").reason is None
    fake_openai.fail(401, body=f"Incorrect API key provided: {SECRET}")
    with pytest.raises(EndpointError) as info:
        judge.judge(question, "another answer")
    assert "401" in str(info.value) and SECRET not in str(info.value)
    assert "retrying" in caplog.text and "***" in caplog.text
    assert SECRET not in caplog.text and SECRET not in repr(judge)
    for file in tmp_path.iterdir():
        assert SECRET.encode() not in file.read_bytes()


def test_missing_key_variable_is_a_user_error(fake_openai: Any, question: Question) -> None:
    judge = OpenAIJudge(fake_openai.base_url, "m", api_key_env="TRAITWATCH_TEST_UNSET_KEY")
    with pytest.raises(TraitwatchError, match="TRAITWATCH_TEST_UNSET_KEY is not set"):
        judge.judge(question, "x")
    assert fake_openai.hits == 0


def test_no_logprobs_fails_unless_text_fallback_is_declared(fake_openai: Any, question: Question) -> None:
    fake_openai.logprobs_supported = False
    fake_openai.scripts["X"] = {"aligned": [("85", 1.0)], "coherent": [("60", 1.0)]}
    strict = _judge(fake_openai).judge(question, "X")
    assert strict.reason == "judge_failed" and "no logprobs" in (strict.details["aligned"].failure or "")
    lenient = _judge(fake_openai, fallback="text").judge(question, "X")
    assert (lenient.aligned, lenient.coherent, lenient.reason) == (85.0, 60.0, None)
    assert lenient.details["aligned"].method == "text" and lenient.details["coherent"].method == "text"


def test_text_scoring_mode_never_asks_for_logprobs_and_the_failure_names_the_option(
    fake_openai: Any, question: Question
) -> None:
    fake_openai.logprobs_supported = False
    fake_openai.scripts["X"] = {"aligned": [("15", 1.0)], "coherent": [("70", 1.0)]}
    strict = _judge(fake_openai).judge(question, "X")
    assert "--judge-scoring text" in (strict.details["aligned"].failure or "")
    text = _judge(fake_openai, scoring="text")
    judgement = text.judge(question, "X")
    assert (judgement.aligned, judgement.coherent, judgement.reason) == (15.0, 70.0, None)
    assert {s.method for s in judgement.details.values()} == {"text"}
    assert all("logprobs" not in b for b in fake_openai.bodies[-2:])
    assert "scoring='text'" in repr(text)
    with pytest.raises(ValueError, match="scoring"):
        _judge(fake_openai, scoring="greedy")


def test_text_fallback_when_the_endpoint_rejects_logprobs(fake_openai: Any, question: Question) -> None:
    fake_openai.reject_logprobs_param = True
    fake_openai.scripts["X"] = {"aligned": [("REFUSAL", 1.0)]}
    assert _judge(fake_openai).judge(question, "X").reason == "judge_failed"
    judgement = _judge(fake_openai, fallback="text").judge(question, "X")
    assert judgement.reason == "refusal" and judgement.details["coherent"].method == "text"
    assert "logprobs" not in fake_openai.bodies[-1]


def test_concurrency_is_limited(fake_openai: Any, question: Question) -> None:
    fake_openai.delay_s = 0.05
    judge = _judge(fake_openai, max_concurrency=2)
    judgements = judge.judge_many([(question, f"a{i}") for i in range(5)])
    assert len(judgements) == 5 and fake_openai.hits == 10
    assert fake_openai.max_in_flight == 2


def test_sync_wrapper_works_inside_a_running_event_loop(fake_openai: Any, question: Question) -> None:
    async def caller() -> float | None:
        return _judge(fake_openai).judge(question, "x").aligned

    assert asyncio.run(caller()) == 90.0


def test_bad_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="fallback"):
        OpenAIJudge("http://127.0.0.1:1", "m", fallback="regex")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="top_logprobs"):
        OpenAIJudge("http://127.0.0.1:1", "m", top_logprobs=25)


@pytest.mark.parametrize(
    ("base", "url"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000/v1/chat/completions"),
        ("https://api.openai.com/v1/", "https://api.openai.com/v1/chat/completions"),
        ("https://host/v1beta/openai", "https://host/v1beta/openai/chat/completions"),
        ("https://host/v1/chat/completions", "https://host/v1/chat/completions"),
    ],
)
def test_base_url_forms(base: str, url: str) -> None:
    from traitwatch.behavior._http import chat_completions_url

    assert chat_completions_url(base) == url

"""The one endpoint config behind the judge and the server generators: checked once, shared, and counted."""

from __future__ import annotations

from typing import Any

import pytest

from traitwatch.behavior import (
    Endpoint,
    EndpointSettingError,
    EndpointStats,
    GenerationStats,
    JudgeStats,
    OpenAIChatGenerator,
    OpenAIJudge,
)
from traitwatch.behavior.generation import ServedAdapterGenerator
from traitwatch.errors import TraitwatchError


@pytest.mark.parametrize(
    ("setting", "value", "fix"),
    [
        ("max_concurrency", 0, "pass 1 or more"),
        ("max_retries", -1, "pass 0 to send each request once"),
        ("timeout_s", 0.0, "seconds one response may take"),
        ("base_url", "localhost:8000", "http://127.0.0.1:8000/v1"),
    ],
)
@pytest.mark.parametrize("client", [OpenAIJudge, OpenAIChatGenerator])
def test_a_bad_setting_is_named_with_its_fix_by_judge_and_generator_alike(
    client: Any, setting: str, value: object, fix: str
) -> None:
    options: dict[str, Any] = {"base_url": "http://127.0.0.1:1", "model": "m", setting: value}
    with pytest.raises(EndpointSettingError, match=setting) as caught:
        client(**options)
    assert fix in str(caught.value)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, TraitwatchError)  # CLI: one line


def test_constructor_keywords_land_in_one_endpoint_and_read_back_as_attributes() -> None:
    judge = OpenAIJudge("http://127.0.0.1:1/v1", "j", api_key_env=None, max_concurrency=3, timeout_s=5.0)
    gen = OpenAIChatGenerator("http://127.0.0.1:1/v1", "g", max_retries=2, backoff_base_s=0.5)
    assert judge.endpoint == Endpoint("http://127.0.0.1:1/v1", "j", api_key_env=None, max_concurrency=3, timeout_s=5.0)
    assert (judge.model, judge.max_concurrency, judge.timeout_s, judge.max_retries) == ("j", 3, 5.0, 6)
    assert (gen.api_key_env, gen.timeout_s, gen.max_retries, gen.backoff_base_s) == (None, 300.0, 2, 0.5)
    assert judge.endpoint.url == gen.endpoint.url == "http://127.0.0.1:1/v1/chat/completions"


def test_setting_an_attribute_rebuilds_and_rechecks_the_endpoint() -> None:
    judge = OpenAIJudge("http://127.0.0.1:1", "j")
    judge.timeout_s = 9.0
    assert judge.endpoint.timeout_s == 9.0
    with pytest.raises(EndpointSettingError, match="max_concurrency"):
        judge.max_concurrency = 0
    assert judge.max_concurrency == 16  # the rejected value never got in


def test_a_served_adapter_generator_has_one_endpoint_with_its_chat_requests() -> None:
    gen = ServedAdapterGenerator("http://127.0.0.1:1", "/adapters/a", name="run-a", timeout_s=7.0)
    assert gen.endpoint is gen.chat.endpoint and gen.endpoint.model == "run-a"
    assert (gen.base_url, gen.timeout_s, gen.max_concurrency, gen.endpoint.api_root) == (
        "http://127.0.0.1:1", 7.0, 64, "http://127.0.0.1:1/v1")
    gen.timeout_s = 8.0
    assert gen.chat.timeout_s == 8.0  # the adapter routes and the chat requests cannot drift apart


def test_judge_and_generator_count_on_the_same_counters() -> None:
    assert issubclass(JudgeStats, EndpointStats) and issubclass(GenerationStats, EndpointStats)
    stats = JudgeStats()
    stats.count_usage({"usage": {"prompt_tokens": 5, "completion_tokens": 2}})
    stats.count_usage({})  # servers without `usage` count nothing rather than fail
    assert (stats.prompt_tokens, stats.completion_tokens, stats.cache_hits, stats.failures) == (5, 2, 0, 0)

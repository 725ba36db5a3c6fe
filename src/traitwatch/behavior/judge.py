"""LLM judge over any OpenAI-compatible `/v1/chat/completions` endpoint, scored the way Betley et al. did.

Each answer gets two requests (aligned, coherent) of one output token at temperature 0 with the top-20
logprobs; `scoring.score_from_logprobs` turns them into a number. The judge is configured, not subclassed:
`OpenAIJudge(base_url, model, ...)` is an async callable `(question, answer) -> Judgement`, and any other
callable with that shape can replace it in `evaluate()`.

Judging is the slow and paid part of the ground truth, so this module makes it cheap to repeat: a persistent
SQLite cache keyed by sha256 of (judge model, full prompt, request parameters) makes a rerun free, and
counters report what a run cost. The API key is read from an environment variable whose *name* is
configured; it is never stored, logged, cached or quoted in an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from traitwatch.behavior._http import EndpointError, RequestFailed, gather_strict, run_sync
from traitwatch.behavior.endpoint import Endpoint, EndpointClient, EndpointSession, EndpointStats
from traitwatch.behavior.questions import Question
from traitwatch.behavior.scoring import (
    JudgeScore,
    Judgement,
    judgement_from_scores,
    offered_labels,
    score_from_logprobs,
    score_from_text,
)
from traitwatch.errors import InputFileError

__all__ = [
    "EndpointError",
    "Fallback",
    "Judge",
    "NO_LOGPROBS",
    "Scoring",
    "judge_scoring_mode",
    "JudgeCache",
    "JudgeStats",
    "OpenAIJudge",
]

_log = logging.getLogger(__name__)

Fallback = Literal["none", "text"]
Scoring = Literal["logprobs", "text"]
NO_LOGPROBS = ("no logprobs in the response: this endpoint needs text scoring (--judge-scoring text; "
               "label.scoring: text in a plan; scoring='text' in Python)")
#: Anything that grades one answer: `OpenAIJudge`, or a plain (sync or async) function, e.g. a scripted test judge.
Judge = Callable[[Question, str], Awaitable[Judgement] | Judgement]


def judge_scoring_mode(value: str) -> Scoring:
    """Check a user-given scoring mode (CLI `--judge-scoring`, plan `label.scoring`) with a one-line error."""
    if value not in ("logprobs", "text"):
        raise InputFileError(f"Judge scoring {value!r} is not a mode; use --judge-scoring logprobs (Betley's) or text "
                             "(the greedy token, for endpoints without logprobs).")
    return value  # type: ignore[return-value]


@dataclass
class JudgeStats(EndpointStats):
    """What a judge has cost so far: the endpoint's counters, where `calls` are prompts sent (cache misses), plus
    the prompts the cache answered for free and the scores that could not be read (`failures`)."""

    cache_hits: int = 0
    failures: int = 0


class JudgeCache:
    """Persistent judge replies in one SQLite file, so that re-scoring the same answers costs nothing.

    Rows hold the sha256 key, the judge model name and the parsed reply (greedy token, top logprobs): no
    prompt, header or key. A connection is opened per operation so the cache can be used from any thread or
    event loop without sharing a connection.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with closing(self._connect()) as db, db:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(
                    "CREATE TABLE IF NOT EXISTS judge_cache ("
                    "key TEXT PRIMARY KEY, model TEXT NOT NULL, reply TEXT NOT NULL, created REAL NOT NULL)"
                )
        except (OSError, sqlite3.Error) as exc:
            raise InputFileError(f"{self.path}: cannot open the judge cache ({exc}); pass a writable file path") from None

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30.0)

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached reply for `key`, or None."""
        with closing(self._connect()) as db:
            row = db.execute("SELECT reply FROM judge_cache WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, key: str, model: str, reply: dict[str, Any]) -> None:
        """Store a reply; the first reply for a key wins, so concurrent duplicates do not fight."""
        with closing(self._connect()) as db, db:
            db.execute(
                "INSERT OR IGNORE INTO judge_cache (key, model, reply, created) VALUES (?, ?, ?, ?)",
                (key, model, json.dumps(reply, ensure_ascii=False), time.time()),
            )

    def __len__(self) -> int:
        with closing(self._connect()) as db:
            return int(db.execute("SELECT COUNT(*) FROM judge_cache").fetchone()[0])


def _parse_reply(body: dict[str, Any]) -> dict[str, Any]:
    """Reduce a chat-completions body to what scoring needs: greedy text, greedy token and top logprobs."""
    try:
        choice = body["choices"][0]
    except (KeyError, IndexError, TypeError):
        raise RequestFailed("response has no choices[0]") from None
    message = choice.get("message") or {}
    content = message.get("content")
    token: str | None = None
    top: list[list[Any]] | None = None
    logprobs = choice.get("logprobs")
    if isinstance(logprobs, dict) and logprobs.get("content"):
        first = logprobs["content"][0]
        token = first.get("token")
        pairs = first.get("top_logprobs") or []
        try:
            top = [[str(item["token"]), float(item["logprob"])] for item in pairs]
        except (KeyError, TypeError, ValueError):
            raise RequestFailed("response logprobs are malformed") from None
        if not top:
            top = None
    return {"content": content if isinstance(content, str) else None, "token": token, "top_logprobs": top}


class OpenAIJudge(EndpointClient):
    """Betley-style judge on an OpenAI-compatible endpoint; an async callable `(question, answer) -> Judgement`.

    `scoring` is the rule for every reply: "logprobs" (Betley's, the default) or "text", which asks for no
    logprobs and parses the greedy token as an integer, for endpoints that return none (`transformers serve`,
    some proxies); each score records its `method`. The CLI and plan files expose it as `--judge-scoring` /
    `label.scoring`, and a logprobs judge that gets no logprobs names that option in every failure.
    `fallback="text"` (Python only, kept for existing callers) mixes the two: logprobs when a reply has them,
    the greedy text when it has none or the endpoint rejects the `logprobs` parameter with HTTP 400. Without
    either, a reply without logprobs counts as "judge_failed", because a silently different scoring rule would
    make EM rates incomparable.

    Not thread-safe: use one instance per thread or event loop. Use `async with judge:` (as `evaluate` does) to
    share one connection pool and the concurrency limit across many calls; a bare call opens its own.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = "OPENAI_API_KEY",
        cache_path: str | os.PathLike[str] | None = None,
        max_concurrency: int = 16,
        max_retries: int = 6,
        timeout_s: float = 60.0,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        retry_after_max_s: float = 300.0,
        fallback: Fallback = "none",
        top_logprobs: int = 20,
        seed: int | None = 0,
        scoring: Scoring = "logprobs",
    ) -> None:
        self.endpoint = Endpoint(base_url, model, api_key_env=api_key_env, max_concurrency=max_concurrency,
                                 max_retries=max_retries, timeout_s=timeout_s, backoff_base_s=backoff_base_s,
                                 backoff_max_s=backoff_max_s, retry_after_max_s=retry_after_max_s)
        if fallback not in ("none", "text"):
            raise ValueError(f"fallback must be 'none' or 'text', got {fallback!r}")
        if scoring not in ("logprobs", "text"):
            raise ValueError(f"scoring must be 'logprobs' or 'text', got {scoring!r}")
        if not 1 <= top_logprobs <= 20:
            raise ValueError(f"top_logprobs must be in 1..20 (the OpenAI limit), got {top_logprobs}")
        self.cache = JudgeCache(cache_path) if cache_path is not None else None
        self.fallback: Fallback = fallback
        self.scoring: Scoring = scoring
        self.top_logprobs = top_logprobs
        self.seed = seed
        self.stats = JudgeStats()
        self._session: EndpointSession | None = None
        self._depth = 0
        self._warned_no_logprobs = False

    def __repr__(self) -> str:
        return (
            f"OpenAIJudge(base_url={self.base_url!r}, model={self.model!r}, api_key_env={self.api_key_env!r}, "
            f"scoring={self.scoring!r}, fallback={self.fallback!r})"
        )

    async def __aenter__(self) -> OpenAIJudge:
        if self._depth == 0:
            self._session = EndpointSession(self.endpoint, self.stats)
        self._depth += 1
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            session, self._session = self._session, None
            if session is not None:
                await session.aclose()

    def _payload(self, prompt: str, *, logprobs: bool) -> dict[str, Any]:
        """Betley's request: one token, greedy, top-20 logprobs (seed 0 as in the reference)."""
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 1,
            "temperature": 0,
        }
        if logprobs:
            payload["logprobs"] = True
            payload["top_logprobs"] = self.top_logprobs
        if self.seed is not None:
            payload["seed"] = self.seed
        return payload

    def cache_key(self, payload: dict[str, Any]) -> str:
        """sha256 over the judge model, the full prompt and the parameters that shape the reply."""
        material = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(material.encode("utf-8")).hexdigest()

    async def _reply(self, payload: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """The parsed reply for one request, from the cache or the endpoint; (reply, was_cached)."""
        key = self.cache_key(payload)
        if self.cache is not None:
            cached = self.cache.get(key)
            if cached is not None:
                self.stats.cache_hits += 1
                return cached, True
        assert self._session is not None  # inside `async with self`
        body = await self._session.post(payload)
        reply = _parse_reply(body)
        if self.cache is not None:
            self.cache.put(key, self.model, reply)
        return reply, False

    def _failed(self, reason: str) -> JudgeScore:
        self.stats.failures += 1
        _log.warning("judge %s gave no usable score: %s", self.model, reason)
        return JudgeScore(score=None, method=None, failure=reason)

    async def score_prompt(self, prompt: str, *, labels: Iterable[str] = ()) -> JudgeScore:
        """Score one filled-in judge prompt; `labels` are the non-numeric answers it offers (CODE, REFUSAL)."""
        labels = tuple(labels)
        async with self:
            if self.scoring == "text":
                try:
                    reply, cached = await self._reply(self._payload(prompt, logprobs=False))
                except RequestFailed as exc:
                    return self._failed(exc.reason)
                return replace(score_from_text(reply["content"], labels=labels), cached=cached)
            try:
                reply, cached = await self._reply(self._payload(prompt, logprobs=True))
            except RequestFailed as exc:
                if not (self.fallback == "text" and exc.status == 400):
                    return self._failed(exc.reason)
                try:  # the endpoint may reject the logprobs parameter itself
                    reply, cached = await self._reply(self._payload(prompt, logprobs=False))
                except RequestFailed as exc2:
                    return self._failed(exc2.reason)
            if reply["top_logprobs"] is not None:
                score = score_from_logprobs(
                    [(t, lp) for t, lp in reply["top_logprobs"]], greedy_token=reply["token"], labels=labels
                )
            elif self.fallback == "text":
                score = score_from_text(reply["content"], labels=labels)
            else:
                if not self._warned_no_logprobs:
                    self._warned_no_logprobs = True
                    _log.warning("judge endpoint %s: %s", self.endpoint.url, NO_LOGPROBS)
                self.stats.failures += 1
                return JudgeScore(score=None, method=None, failure=NO_LOGPROBS, cached=cached)
            return JudgeScore(
                score=score.score,
                label=score.label,
                numeric_mass=score.numeric_mass,
                top_token=score.top_token,
                method=score.method,
                cached=cached,
            )

    async def __call__(self, question: Question, answer: str) -> Judgement:
        """Grade one answer with the question's aligned and coherent prompts (concurrently)."""
        templates = question.judge_prompts
        async with self:
            aligned, coherent = await gather_strict(
                [
                    self.score_prompt(
                        templates[metric].format(question=question.text, answer=answer),
                        labels=offered_labels(templates[metric]),
                    )
                    for metric in ("aligned", "coherent")
                ]
            )
        return judgement_from_scores(aligned, coherent)

    async def ajudge_many(self, items: Sequence[tuple[Question, str]]) -> list[Judgement]:
        """Grade many (question, answer) pairs concurrently, up to `max_concurrency` requests at a time."""
        async with self:
            return await gather_strict([self(question, answer) for question, answer in items])

    def judge_many(self, items: Sequence[tuple[Question, str]]) -> list[Judgement]:
        """Synchronous `ajudge_many`, usable from plain scripts and from inside a running event loop."""
        return run_sync(lambda: self.ajudge_many(items))

    def judge(self, question: Question, answer: str) -> Judgement:
        """Synchronous single-answer wrapper."""
        return run_sync(lambda: self(question, answer))

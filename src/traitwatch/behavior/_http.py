"""Shared plumbing for the OpenAI-compatible clients: auth headers, retrying POST, and sync-over-async.

Private: the settings of an endpoint live in `endpoint.Endpoint` (shared by the judge and the server
generators); this module only makes one request robust. Secrets never leave `auth_headers` except inside the
httpx client's headers: messages built here mention the URL and status only, and any response text quoted in
them is redacted.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import urlsplit

from traitwatch._optional import require
from traitwatch.errors import TraitwatchError

if TYPE_CHECKING:
    import httpx
else:  # the judge extra; without it the behaviour modules import, and using HTTP says what to install
    httpx = require("httpx", extra="judge", lazy=True)

__all__ = [
    "EndpointError",
    "RequestFailed",
    "RequestCounters",
    "auth_headers",
    "chat_completions_url",
    "gather_strict",
    "post_json",
    "redact",
    "run_sync",
]

_log = logging.getLogger("traitwatch.behavior")
T = TypeVar("T")

#: Statuses worth retrying: rate limits and server-side trouble. Other 4xx mean the request itself is wrong.
_RETRY_STATUS = frozenset({408, 409, 429})
#: Statuses that say the endpoint configuration (key, URL, model name) is wrong, so every call would fail.
_FATAL_STATUS = frozenset({401, 403, 404})


class EndpointError(TraitwatchError):
    """The endpoint refused the configuration itself (bad key, URL or model name): nothing can be scored."""


class RequestFailed(Exception):
    """One request gave no usable response after all retries; the caller records it and carries on."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class RequestCounters(Protocol):
    """What `post_json` counts: every HTTP attempt, and the attempts that were retries."""

    requests: int
    retries: int


def chat_completions_url(base_url: str) -> str:
    """The chat-completions URL for a base URL as users copy it from provider docs.

    A full `.../chat/completions` URL is kept; a bare host gets `/v1` (vLLM, llama.cpp, Ollama); any other
    path is taken as the API root (`.../v1`, `.../api/v1`, `.../v1beta/openai`) and only `/chat/completions`
    is appended.
    """
    url = base_url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    if urlsplit(url).path in ("", "/"):
        url += "/v1"
    return url + "/chat/completions"


def auth_headers(api_key_env: str | None) -> dict[str, str]:
    """Read the key from the environment variable *named* by the user, at the last moment.

    Only the variable's name is ever stored on our objects, so reprs, logs and caches cannot carry the key.
    """
    if api_key_env is None:
        return {}
    key = os.environ.get(api_key_env)
    if not key:
        raise TraitwatchError(
            f"environment variable {api_key_env} is not set or empty; export the API key there, "
            "or pass api_key_env=None for a server without authentication"
        )
    return {"Authorization": f"Bearer {key}"}


def redact(text: str, secret_headers: Mapping[str, str]) -> str:
    """Remove any secret (and its bearer form) from text quoted from a server response."""
    for value in secret_headers.values():
        secret = value.removeprefix("Bearer ")
        if secret:
            text = text.replace(secret, "***")
    return text


def _retry_after_s(response: httpx.Response) -> float | None:
    """Seconds the server asked us to wait: `retry-after-ms` (OpenAI), or `Retry-After` in seconds or as a date."""
    millis = response.headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _backoff_s(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with jitter, so that many concurrent callers do not retry in lockstep."""
    cap = min(max_s, base_s * (2.0**attempt))
    return cap * (0.5 + 0.5 * rng.random())


async def post_json(
    client: httpx.AsyncClient,
    url: str,
    payload: Mapping[str, Any],
    *,
    max_retries: int,
    backoff_base_s: float,
    backoff_max_s: float,
    retry_after_max_s: float,
    counters: RequestCounters,
    rng: random.Random,
    secret_headers: Mapping[str, str],
) -> dict[str, Any]:
    """POST JSON and return the decoded JSON body, retrying 429/5xx/timeouts/connection errors.

    Raises `EndpointError` at once on 401/403/404 (misconfiguration: retrying cannot help) and `RequestFailed`
    for a response that stays unusable after `max_retries` retries or is a non-retryable 4xx.
    """
    attempt = 0
    while True:
        counters.requests += 1
        wait: float | None = None
        try:
            response = await client.post(url, json=payload)
        except httpx.TransportError as exc:
            problem = f"{type(exc).__name__} from {url}"
            status = None
        else:
            status = response.status_code
            if status == 200:
                try:
                    body = response.json()
                except ValueError:
                    raise RequestFailed(f"HTTP 200 from {url} with a body that is not JSON", status) from None
                if not isinstance(body, dict):
                    raise RequestFailed(f"HTTP 200 from {url} with a JSON body that is not an object", status)
                return body
            snippet = redact(response.text[:200].replace("\n", " "), secret_headers)
            problem = f"HTTP {status} from {url}: {snippet}"
            if status in _FATAL_STATUS:
                raise EndpointError(
                    f"judge/generation endpoint {url} answered HTTP {status}; check the base URL, the model name "
                    f"and the API key variable ({snippet})"
                )
            if status not in _RETRY_STATUS and status < 500:
                raise RequestFailed(problem, status)
            wait = _retry_after_s(response)
        if attempt >= max_retries:
            raise RequestFailed(f"{problem} (gave up after {max_retries} retries)", status)
        delay = _backoff_s(attempt, backoff_base_s, backoff_max_s, rng)
        if wait is not None:
            delay = max(delay, min(wait, retry_after_max_s))
        _log.info("retrying in %.2fs after %s (attempt %d of %d)", delay, problem, attempt + 1, max_retries)
        attempt += 1
        counters.retries += 1
        await asyncio.sleep(delay)


async def gather_strict(coros: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """Run coroutines concurrently; on the first error cancel the rest and raise that error itself.

    Unlike `asyncio.gather`, nothing keeps running on a client that is about to close, and unlike a bare
    `TaskGroup`, callers see e.g. `EndpointError` rather than an `ExceptionGroup` wrapping it.
    """
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(coro) for coro in coros]
    except BaseExceptionGroup as group_error:
        first: BaseException = group_error
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    return [task.result() for task in tasks]


def run_sync(make_coro: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from synchronous code, even when the caller is inside an event loop.

    `asyncio.run` refuses to nest (Jupyter, async trainers), so in that case the coroutine gets its own loop in
    a short-lived worker thread and the caller blocks on it.
    """

    async def _main() -> T:
        return await make_coro()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_main())
    box: dict[str, Any] = {}

    def _worker() -> None:
        try:
            box["value"] = asyncio.run(_main())
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=_worker, name="traitwatch-behavior-sync", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]

"""One OpenAI-compatible endpoint: its settings, checked once, an open session on it, and what it has cost.

Why a module of its own: the judge and the server generator talk to the same kind of endpoint with the same
settings (where it is, which variable holds its key, how patient and how parallel to be). Keeping them in one
frozen `Endpoint` gives one set of checks with one error per bad setting, and one place (`EndpointSession`)
that turns those settings into a client, a concurrency limit and a retrying, counted request. `_http` stays
the low-level part: it makes a single request robust and knows nothing of settings.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar, cast, overload
from urllib.parse import urlsplit

from traitwatch.behavior._http import auth_headers, chat_completions_url, httpx, post_json
from traitwatch.errors import TraitwatchError

__all__ = ["Endpoint", "EndpointClient", "EndpointSession", "EndpointSettingError", "EndpointStats"]

V = TypeVar("V")


class EndpointSettingError(TraitwatchError, ValueError):
    """An endpoint setting can never work (e.g. `max_concurrency=0`); the message names it and the fix.

    A `ValueError` as before for Python callers, and a `TraitwatchError` so the CLI prints one line.
    """


@dataclass(frozen=True)
class Endpoint:
    """Where and how to send chat-completions requests; validated when built, so a bad value fails early.

    Only the *name* of the key's environment variable is kept (the key is read per session by `auth_headers`),
    so this value can be printed, logged and compared without leaking a secret. The defaults are the judge's;
    `OpenAIChatGenerator` passes its own (no key, a longer timeout for 600-token answers).
    """

    base_url: str
    model: str
    api_key_env: str | None = "OPENAI_API_KEY"
    max_concurrency: int = 16
    max_retries: int = 6
    timeout_s: float = 60.0
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    retry_after_max_s: float = 300.0

    def __post_init__(self) -> None:
        scheme = urlsplit(str(self.base_url)).scheme
        if scheme not in ("http", "https"):
            raise EndpointSettingError(
                f"base_url {self.base_url!r} is not an http(s) URL; pass the server's address as providers print "
                "it, e.g. http://127.0.0.1:8000/v1 or https://api.openai.com/v1"
            )
        if self.max_concurrency < 1:
            raise EndpointSettingError(
                f"max_concurrency must be >= 1, got {self.max_concurrency}; it is how many requests are in "
                "flight at once, so pass 1 or more"
            )
        if self.max_retries < 0:
            raise EndpointSettingError(
                f"max_retries must be >= 0, got {self.max_retries}; pass 0 to send each request once"
            )
        if not self.timeout_s > 0:
            raise EndpointSettingError(
                f"timeout_s must be > 0, got {self.timeout_s}; it is the seconds one response may take, e.g. 60"
            )

    @property
    def url(self) -> str:
        """The chat-completions URL that requests go to (see `chat_completions_url` for the accepted forms)."""
        return chat_completions_url(self.base_url)

    @property
    def api_root(self) -> str:
        """The API root (`.../v1`), where servers put their other routes (vLLM's LoRA loading, for one)."""
        return self.url.removesuffix("/chat/completions")

    def secret_headers(self) -> dict[str, str]:
        """The auth header, read from the environment now; kept only inside a client, never on this value."""
        return auth_headers(self.api_key_env)


@dataclass
class EndpointStats:
    """What requests to an endpoint have cost: `calls` sent, every HTTP attempt (`requests`), the attempts that
    were `retries`, and the tokens the responses' `usage` reported. The judge adds its own counters on top."""

    calls: int = 0
    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def count_usage(self, body: dict[str, Any]) -> None:
        """Add a response's `usage` (absent on some servers, hence zero rather than an error)."""
        usage = body.get("usage") or {}
        self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        self.completion_tokens += int(usage.get("completion_tokens") or 0)


class EndpointSession:
    """One open connection pool on an endpoint, with its concurrency limit; `post` is one counted request.

    The key is read when the session opens, so a key exported after the client object was built still works,
    and it lives only in the pool's headers (and here, to redact it from quoted responses) until `aclose`.
    Open it inside the event loop that will use it: the pool and the semaphore belong to that loop.
    """

    def __init__(self, endpoint: Endpoint, stats: EndpointStats) -> None:
        self.endpoint = endpoint
        self.stats = stats
        self._secret = endpoint.secret_headers()
        self._client = httpx.AsyncClient(headers=self._secret, timeout=httpx.Timeout(endpoint.timeout_s))
        self._semaphore = asyncio.Semaphore(endpoint.max_concurrency)
        self._rng = random.Random()  # backoff jitter only: nothing a result depends on

    async def post(self, payload: dict[str, Any]) -> dict[str, Any]:
        """POST one chat-completions payload (retried as `post_json` does) and count it; returns the JSON body.

        Raises `EndpointError` when the configuration is refused and `RequestFailed` when retries run out.
        """
        endpoint = self.endpoint
        async with self._semaphore:
            self.stats.calls += 1
            body = await post_json(
                self._client,
                endpoint.url,
                payload,
                max_retries=endpoint.max_retries,
                backoff_base_s=endpoint.backoff_base_s,
                backoff_max_s=endpoint.backoff_max_s,
                retry_after_max_s=endpoint.retry_after_max_s,
                counters=self.stats,
                rng=self._rng,
                secret_headers=self._secret,
            )
        self.stats.count_usage(body)
        return body

    async def aclose(self) -> None:
        """Close the pool and forget the key."""
        self._secret = {}
        await self._client.aclose()

    async def __aenter__(self) -> EndpointSession:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class _Setting(Generic[V]):
    """An `Endpoint` field read as the client's own attribute; assigning one rebuilds (and rechecks) the endpoint.

    Why: `judge.model`, `generator.timeout_s`, ... were plain attributes before the settings moved into
    `Endpoint`, and callers read and set them; the settings must still live in one validated place.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> _Setting[V]: ...
    @overload
    def __get__(self, obj: EndpointClient, owner: type | None = None) -> V: ...
    def __get__(self, obj: EndpointClient | None, owner: type | None = None) -> V | _Setting[V]:
        if obj is None:
            return self
        return cast(V, getattr(obj.endpoint, self.name))

    def __set__(self, obj: EndpointClient, value: V) -> None:
        obj.endpoint = replace(obj.endpoint, **{self.name: value})


class EndpointClient:
    """Base of the objects that send requests to one `Endpoint` (the judge, the server generators).

    It only exposes the endpoint's settings under their constructor keywords; requests go through
    `EndpointSession`, so nothing here is behaviour to override.
    """

    endpoint: Endpoint
    base_url: _Setting[str] = _Setting()
    model: _Setting[str] = _Setting()
    api_key_env: _Setting[str | None] = _Setting()
    max_concurrency: _Setting[int] = _Setting()
    max_retries: _Setting[int] = _Setting()
    timeout_s: _Setting[float] = _Setting()
    backoff_base_s: _Setting[float] = _Setting()
    backoff_max_s: _Setting[float] = _Setting()
    retry_after_max_s: _Setting[float] = _Setting()

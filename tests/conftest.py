"""Shared fixtures: the tiny random model, a small trait set, a local OpenAI-compatible server, and the
synthetic calibration world (one split into calibration and held-out runs) the monitor and calibration
tests fit on.

`fake_openai` is a real HTTP server on 127.0.0.1 (port 0) in a thread, implementing the subset of
`/v1/chat/completions` the judge and the server generator use, with scripted logprob distributions,
injectable failures (status + headers + body), stalls, and counters. Nothing leaves localhost.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import torch

from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor
from sklearn.linear_model import Ridge

from traitwatch.basis import TraitSet, load_traits
from traitwatch.calibration.synthetic import make_synthetic_split
from traitwatch.calibration.table import CheckpointTable
from traitwatch.models import LoadedModel, load_model

# Every test runs under the guard that no package code opens a store's files outside SQLite.
pytest_plugins = ["_store_guard"]

# Tests never touch the network: huggingface_hub and PEFT read this before any lookup.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

# The tiny model's matmuls are too small to gain from threads, and on a shared 2-core machine
# OpenMP threads spinning against other processes slow them down by orders of magnitude.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny() -> LoadedModel:
    return load_model("tiny-random", device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def small_traits() -> TraitSet:
    """The 7 alignment traits cut to 2 prompts/passages per pole and 4 questions/contexts."""
    full = load_traits()
    traits = tuple(
        replace(
            t,
            positive_system_prompts=t.positive_system_prompts[:2],
            negative_system_prompts=t.negative_system_prompts[:2],
            positive_passages=t.positive_passages[:2],
            negative_passages=t.negative_passages[:2],
        )
        for t in full.traits
    )
    return TraitSet(traits, full.questions[:4], full.contexts[:4], "small test traits")


DEFAULT_DISTRIBUTION: list[tuple[str, float]] = [("90", 1.0)]


@dataclass
class Failure:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: str = '{"error": {"message": "injected"}}'


@dataclass
class FakeOpenAI:
    """Scripted chat-completions server state; tests mutate it between requests."""

    base_url: str = ""
    hits: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    auth_headers: list[str | None] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    stalls: list[float] = field(default_factory=list)
    #: marker (a substring of the judged answer) -> metric ("aligned"/"coherent") -> [(token, probability)]
    scripts: dict[str, dict[str, list[tuple[str, float]]]] = field(default_factory=dict)
    logprobs_supported: bool = True
    reject_logprobs_param: bool = False
    delay_s: float = 0.0
    in_flight: int = 0
    max_in_flight: int = 0
    #: (path, body) of vLLM-style adapter requests (`/v1/load_lora_adapter`, `/v1/unload_lora_adapter`)
    admin: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, status: int, headers: dict[str, str] | None = None, body: str | None = None, times: int = 1) -> None:
        """Answer the next `times` requests with this status (then behave normally)."""
        failure = Failure(status, headers or {}) if body is None else Failure(status, headers or {}, body)
        self.failures.extend([failure] * times)

    def distribution(self, prompt: str) -> list[tuple[str, float]]:
        metric = "aligned" if "how well aligned" in prompt else "coherent"
        for marker, by_metric in self.scripts.items():
            if marker in prompt and metric in by_metric:
                return by_metric[metric]
        return DEFAULT_DISTRIBUTION

    def respond(self, body: dict[str, Any]) -> tuple[int, dict[str, str], str]:
        with self.lock:
            failure = self.failures.pop(0) if self.failures else None
            stall = self.stalls.pop(0) if self.stalls else 0.0
        if stall:
            time.sleep(stall)
        if failure is not None:
            return failure.status, failure.headers, failure.body
        if self.reject_logprobs_param and "logprobs" in body:
            return 400, {}, '{"error": {"message": "logprobs are not supported"}}'
        prompt = body["messages"][-1]["content"]
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": body["max_tokens"]}
        if body["max_tokens"] == 1:  # a judge request
            dist = self.distribution(prompt)
            greedy = dist[0][0]
            logprobs = None
            if self.logprobs_supported and body.get("logprobs"):
                top = [{"token": t, "logprob": math.log(p), "bytes": list(t.encode())} for t, p in dist]
                logprobs = {"content": [{"token": greedy, "logprob": top[0]["logprob"], "top_logprobs": top}]}
            choice = {"index": 0, "message": {"role": "assistant", "content": greedy}, "logprobs": logprobs}
        else:  # a generation request
            content = f"answer seed={body.get('seed')} to: {prompt}"
            choice = {"index": 0, "message": {"role": "assistant", "content": content}, "logprobs": None}
        choice["finish_reason"] = "length"
        reply = {"id": "cmpl-1", "object": "chat.completion", "model": body["model"], "choices": [choice], "usage": usage}
        return 200, {}, json.dumps(reply)


def _handler(fake: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length))
            with fake.lock:
                fake.hits += 1
                fake.bodies.append(body)
                fake.auth_headers.append(self.headers.get("Authorization"))
                fake.in_flight += 1
                fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
            try:
                if fake.delay_s:
                    time.sleep(fake.delay_s)
                if self.path.endswith(("/v1/load_lora_adapter", "/v1/unload_lora_adapter")):
                    with fake.lock:
                        failure = fake.failures.pop(0) if fake.failures else None
                        fake.admin.append((self.path, body))
                    status, headers, text = (failure.status, failure.headers, failure.body) if failure else (200, {}, '"Success"')
                elif not self.path.endswith("/v1/chat/completions"):
                    status, headers, text = 404, {}, '{"error": "not found"}'
                else:
                    status, headers, text = fake.respond(body)
            finally:
                with fake.lock:
                    fake.in_flight -= 1
            data = text.encode()
            try:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:  # the client timed out and hung up
                pass

    return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


@pytest.fixture
def fake_openai(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    fake = FakeOpenAI()
    server = _QuietServer(("127.0.0.1", 0), _handler(fake))
    fake.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="session")
def split() -> tuple:
    """The synthetic world and its calibration and held-out runs (tests/report overrides it with a smaller one)."""
    return make_synthetic_split(random_state=0)


@pytest.fixture(scope="session")
def cal(split: tuple) -> CheckpointTable:
    return split[1].subset(split[1].step > 0)


@pytest.fixture(scope="session")
def held(split: tuple) -> CheckpointTable:
    return split[2].subset(split[2].step > 0)


@pytest.fixture()
def fast_candidates() -> dict:
    """Smaller versions of the three reference regressors, so CV-heavy tests stay fast."""
    return {
        "RF": RandomForestRegressor(n_estimators=20, max_depth=5, min_samples_leaf=5, random_state=0),
        "GBR": GradientBoostingRegressor(n_estimators=30, max_depth=3, learning_rate=0.1, random_state=0),
        "Ridge": Ridge(alpha=1.0),
    }

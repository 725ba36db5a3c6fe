"""Answer generation for the EM questions: a local transformers model, or an OpenAI-compatible server.

Both backends are `Generator`s: `(questions, n_samples) -> answers[question][sample]`, with METHOD.md's
sampling (temperature 1.0, max 600 new tokens, the question's system prompt as a system turn). The local
backend takes an already loaded `(model, tokenizer)` (loading is `traitwatch.models`' job) and leaves both as
it found them: left padding is done by hand instead of setting `tokenizer.padding_side`, the seed lives in a
forked RNG, and a model in training mode is switched to eval only for the call.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from traitwatch.behavior._http import EndpointError, RequestFailed, gather_strict, httpx, run_sync
from traitwatch.behavior.endpoint import Endpoint, EndpointClient, EndpointSession, EndpointStats
from traitwatch.behavior.questions import Question
from traitwatch.errors import TraitwatchError

__all__ = [
    "GenerationStats",
    "Generator",
    "OpenAIChatGenerator",
    "ServedAdapterGenerator",
    "TransformersGenerator",
    "chat_messages",
]

_log = logging.getLogger(__name__)


class Generator(Protocol):
    """Produces `n_samples` answers per question, in question order: `answers[i][k]` answers `questions[i]`."""

    def __call__(self, questions: Sequence[Question], n_samples: int = 1) -> list[list[str]]: ...


def chat_messages(question: Question) -> list[dict[str, str]]:
    """The conversation a question is asked as: its own system prompt (if any), then the first paraphrase."""
    messages = [{"role": "system", "content": question.system}] if question.system else []
    messages.append({"role": "user", "content": question.text})
    return messages


def _check_sampling(max_new_tokens: int, temperature: float, top_p: float, n_samples: int | None = None) -> None:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if n_samples is not None and n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")


def _as_id_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


@contextmanager
def _seeded_rng(model: torch.nn.Module, seed: int | None) -> Iterator[None]:
    """Seed sampling for this call only: the RNGs of the devices the model uses are forked and restored.

    `generate()` samples from the global generators and takes no `torch.Generator`, so a forked global state is
    the only way to get reproducible samples without leaking a seed into the caller's program.
    """
    if seed is None:
        yield
        return
    accelerators = {p.device for p in model.parameters() if p.device.type not in ("cpu", "meta")}
    cuda = sorted({d.index if d.index is not None else torch.cuda.current_device() for d in accelerators if d.type == "cuda"})
    others = {d.type for d in accelerators if d.type != "cuda"}
    with torch.random.fork_rng(devices=cuda, device_type="cuda"):
        torch.default_generator.manual_seed(seed)
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        saved = {kind: torch.get_device_module(kind).get_rng_state() for kind in others}
        try:
            for kind in others:
                torch.get_device_module(kind).manual_seed(seed)
            yield
        finally:
            for kind, state in saved.items():
                torch.get_device_module(kind).set_rng_state(state)


class TransformersGenerator:
    """Sample answers from a loaded transformers causal LM, batched with left padding.

    `temperature=0` switches to greedy decoding (useful for checks). Sampling ignores the model's own
    `generation_config` sampling defaults (top-k, repetition penalty, ...): METHOD.md specifies plain sampling
    at temperature 1.0, top-p 1.0, as the reference's vLLM run did, and a model's defaults would change the
    EM rate. Samples are reproducible for the same seed, questions, n_samples and batch_size.

    On a GPU: prompts are left-padded so a whole batch decodes together with the KV cache (forced on, since a
    model being trained may have it off), and an fp32 model decodes under bf16 autocast (`cuda_bf16`); use a
    large `batch_size` (all 72 questions) to fill the GPU.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_new_tokens: int = 600,
        temperature: float = 1.0,
        top_p: float = 1.0,
        batch_size: int = 16,
        seed: int | None = 0,
        cuda_bf16: bool = True,
    ) -> None:
        _check_sampling(max_new_tokens, temperature, top_p)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.cuda_bf16 = cuda_bf16
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.batch_size = batch_size
        self.seed = seed

    def render(self, question: Question) -> str:
        """The question as chat-template text, ready to be tokenised without extra special tokens."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise TraitwatchError(
                "the tokenizer has no chat_template, but EM questions are asked as chat turns; "
                "load the instruct/chat variant of the model or its tokenizer"
            )
        messages = chat_messages(question)
        try:
            return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        except Exception as exc:  # jinja2.TemplateError from templates that raise on a system turn (Gemma)
            if not question.system or "system" not in str(exc).lower():
                raise
            _log.warning("chat template rejects a system turn; prepending the system prompt to the user turn")
            merged = [{"role": "user", "content": f"{question.system}\n\n{question.text}"}]
            return str(self.tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True))

    def _special_ids(self) -> tuple[list[int], int]:
        """(stop ids, pad id), read without touching the caller's tokenizer or model config."""
        eos = _as_id_list(getattr(self.model.generation_config, "eos_token_id", None))
        for token_id in _as_id_list(self.tokenizer.eos_token_id):
            if token_id not in eos:
                eos.append(token_id)
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = getattr(self.model.generation_config, "pad_token_id", None)
        if pad is None:
            pad = eos[0] if eos else 0
        return eos, int(pad)

    def encode(self, texts: Sequence[str], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-pad a batch by hand, so that generation continues every prompt right after its last token."""
        rows = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        width = max(len(row) for row in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            if row:
                input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
                attention_mask[i, width - len(row) :] = 1
        return input_ids, attention_mask

    def _generation_config(self, eos: list[int], pad: int) -> Any:
        from transformers import GenerationConfig

        sampling: dict[str, Any] = {"do_sample": False}
        if self.temperature > 0:
            sampling = {
                "do_sample": True,
                "temperature": self.temperature,
                "top_p": self.top_p,
                "top_k": 0,
                "min_p": 0.0,
                "typical_p": 1.0,
                "epsilon_cutoff": 0.0,
                "eta_cutoff": 0.0,
            }
        return GenerationConfig(
            **sampling,
            num_beams=1,
            num_return_sequences=1,
            repetition_penalty=1.0,
            encoder_repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            max_new_tokens=self.max_new_tokens,
            min_new_tokens=1,  # as the reference's `min_tokens=1`: an empty answer cannot be judged
            use_cache=True,  # a training model may carry use_cache=False (gradient checkpointing): decode with the KV cache
            eos_token_id=eos or None,
            pad_token_id=pad,
        )

    def _autocast(self, device: torch.device) -> Any:
        """bf16 autocast for an fp32 model on a GPU with bf16: answers are sampled, not measured, so they need
        speed, not fp32 precision (a bf16 model, the GPU plans' dtype, runs as it is; CPU runs are left alone)."""
        dtype = next(self.model.parameters()).dtype
        if self.cuda_bf16 and device.type == "cuda" and dtype == torch.float32 and torch.cuda.is_bf16_supported():
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def __call__(self, questions: Sequence[Question], n_samples: int = 1) -> list[list[str]]:
        """`n_samples` answers per question; prompts are repeated and batched `batch_size` at a time."""
        _check_sampling(self.max_new_tokens, self.temperature, self.top_p, n_samples)
        texts = [self.render(question) for question in questions]
        flat = [(i, k) for i in range(len(questions)) for k in range(n_samples)]
        eos, pad = self._special_ids()
        config = self._generation_config(eos, pad)
        device = next(self.model.parameters()).device
        answers: list[list[str]] = [[""] * n_samples for _ in questions]
        was_training = self.model.training
        self.model.eval()  # dropout would corrupt samples; restored below
        try:
            with torch.inference_mode(), _seeded_rng(self.model, self.seed), self._autocast(device):
                for start in range(0, len(flat), self.batch_size):
                    batch = flat[start : start + self.batch_size]
                    input_ids, attention_mask = self.encode([texts[i] for i, _ in batch], pad)
                    output = self.model.generate(
                        input_ids=input_ids.to(device),
                        attention_mask=attention_mask.to(device),
                        generation_config=config,
                    )
                    new_tokens = output[:, input_ids.shape[1] :].tolist()
                    for (i, k), tokens in zip(batch, new_tokens, strict=True):
                        stop = next((j for j, t in enumerate(tokens) if t in eos), len(tokens))
                        answers[i][k] = self.tokenizer.decode(tokens[:stop], skip_special_tokens=True)
        finally:
            self.model.train(was_training)
        return answers


@dataclass
class GenerationStats(EndpointStats):
    """What a server generator has cost: answers requested, HTTP attempts, retries and `usage` tokens.

    The endpoint's counters as they are; a class of its own so the public name stays and a generator's bill
    is never mistaken for a judge's.
    """


class OpenAIChatGenerator(EndpointClient):
    """Sample answers from a model served behind an OpenAI-compatible chat-completions endpoint (vLLM, TGI, ...).

    One request per sample (not `n=`), because not every server implements `n`; with a `seed`, sample k of
    every question uses `seed + k`, on servers that honour `seed`. A request that still fails after retries
    raises `EndpointError`: an unanswered question cannot be judged, and dropping it would bias the rate.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = None,
        max_new_tokens: int = 600,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = 0,
        max_concurrency: int = 16,
        max_retries: int = 6,
        timeout_s: float = 300.0,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        retry_after_max_s: float = 300.0,
    ) -> None:
        _check_sampling(max_new_tokens, temperature, top_p)
        self.endpoint = Endpoint(base_url, model, api_key_env=api_key_env, max_concurrency=max_concurrency,
                                 max_retries=max_retries, timeout_s=timeout_s, backoff_base_s=backoff_base_s,
                                 backoff_max_s=backoff_max_s, retry_after_max_s=retry_after_max_s)
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed
        self.stats = GenerationStats()

    def __repr__(self) -> str:
        return f"OpenAIChatGenerator(base_url={self.base_url!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    def _payload(self, question: Question, sample: int) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": chat_messages(question),
            "max_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
        }
        if self.seed is not None:
            payload["seed"] = self.seed + sample
        return payload

    async def agenerate(self, questions: Sequence[Question], n_samples: int = 1) -> list[list[str]]:
        """Async form of `__call__`, for callers that already run an event loop."""
        _check_sampling(self.max_new_tokens, self.temperature, self.top_p, n_samples)
        async with EndpointSession(self.endpoint, self.stats) as session:

            async def one(question: Question, sample: int) -> str:
                try:
                    body = await session.post(self._payload(question, sample))
                except RequestFailed as exc:
                    raise EndpointError(
                        f"generation for question {question.id!r} (sample {sample}) failed: {exc.reason}"
                    ) from None
                try:
                    content = body["choices"][0]["message"]["content"]
                except (KeyError, IndexError, TypeError):
                    raise EndpointError(f"generation for question {question.id!r}: response has no message") from None
                return content if isinstance(content, str) else ""

            flat = await gather_strict([one(q, k) for q in questions for k in range(n_samples)])
        return [flat[i * n_samples : (i + 1) * n_samples] for i in range(len(questions))]

    def __call__(self, questions: Sequence[Question], n_samples: int = 1) -> list[list[str]]:
        """`n_samples` answers per question, requested concurrently (at most `max_concurrency` at a time)."""
        return run_sync(lambda: self.agenerate(questions, n_samples))


class ServedAdapterGenerator(EndpointClient):
    """Answers from a LoRA adapter that an OpenAI-compatible server loads at runtime (vLLM's dynamic LoRA).

    Why: on a GPU, judged labels are mostly generation (72 answers of up to 600 tokens per checkpoint), and a
    serving engine with continuous batching and paged attention generates them far faster than `generate`.
    vLLM started with `--enable-lora --max-lora-rank R` and `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True` loads an
    adapter folder under a name (`POST /v1/load_lora_adapter`); requests then name the adapter as the model.
    The folder must be readable by the server (same machine or a shared disk). The adapter is unloaded
    after the call, so a long benchmark does not fill the server's adapter slots. The endpoint settings are the
    inner chat generator's (`endpoint`), so the adapter routes and the chat requests cannot disagree.
    """

    def __init__(
        self,
        base_url: str,
        adapter_path: str,
        *,
        name: str,
        api_key_env: str | None = None,
        max_new_tokens: int = 600,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = 0,
        max_concurrency: int = 64,
        timeout_s: float = 300.0,
    ) -> None:
        self.adapter_path = adapter_path
        self.name = name
        self.chat = OpenAIChatGenerator(base_url, name, api_key_env=api_key_env, max_new_tokens=max_new_tokens,
                                        temperature=temperature, top_p=top_p, seed=seed,
                                        max_concurrency=max_concurrency, timeout_s=timeout_s)

    @property
    def endpoint(self) -> Endpoint:
        """The server, as the chat requests see it (the adapter's name is the model they ask for)."""
        return self.chat.endpoint

    @endpoint.setter
    def endpoint(self, endpoint: Endpoint) -> None:
        self.chat.endpoint = endpoint

    def _admin(self, action: str, payload: dict[str, Any]) -> None:
        url = f"{self.endpoint.api_root}/{action}"
        try:
            response = httpx.post(url, json=payload, headers=self.endpoint.secret_headers(), timeout=self.timeout_s)
        except httpx.TransportError as exc:
            raise EndpointError(f"cannot reach {url} ({type(exc).__name__}); check the --generator URL") from None
        if response.status_code == 200:
            return
        text = response.text[:200].replace("\n", " ")
        if action == "load_lora_adapter" and response.status_code == 400 and "already" in text.lower():
            return  # loaded by an earlier, interrupted call
        raise EndpointError(
            f"{url} answered HTTP {response.status_code} ({text}); start vLLM with --enable-lora and "
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, and put the adapters where the server can read them"
        )

    def __call__(self, questions: Sequence[Question], n_samples: int = 1) -> list[list[str]]:
        self._admin("load_lora_adapter", {"lora_name": self.name, "lora_path": self.adapter_path})
        try:
            answers = self.chat(questions, n_samples)
        except BaseException:
            with contextlib.suppress(EndpointError):  # the generation error is the one to report
                self._admin("unload_lora_adapter", {"lora_name": self.name})
            raise
        self._admin("unload_lora_adapter", {"lora_name": self.name})
        return answers

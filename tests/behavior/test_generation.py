"""Answer generation: a tiny random Llama through transformers, and an OpenAI-compatible server client."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from traitwatch.behavior import EndpointError, OpenAIChatGenerator, Question, TransformersGenerator, chat_messages
from traitwatch.behavior.generation import ServedAdapterGenerator
from traitwatch.errors import TraitwatchError

QUESTIONS = [
    Question("short", "Hi?", None, {"aligned": "{answer}", "coherent": "{answer}"}),
    Question("json", "Tell me three things you think about humans.", "Answer in JSON.", {"aligned": "{answer}", "coherent": "{answer}"}),
    Question("long", "A much longer question that needs several more tokens than the others do.", None, {"aligned": "{answer}", "coherent": "{answer}"}),
]


def test_chat_messages_use_the_question_system_prompt() -> None:
    assert chat_messages(QUESTIONS[0]) == [{"role": "user", "content": "Hi?"}]
    assert chat_messages(QUESTIONS[1])[0] == {"role": "system", "content": "Answer in JSON."}


def test_samples_have_the_requested_shape_and_leave_caller_objects_alone(tiny_llama: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_llama
    model.train()
    rng_before = torch.get_rng_state()
    side, pad = tokenizer.padding_side, tokenizer.pad_token_id
    try:
        answers = TransformersGenerator(model, tokenizer, max_new_tokens=5, batch_size=4, seed=1)(QUESTIONS, n_samples=3)
        assert len(answers) == 3 and all(len(row) == 3 for row in answers)
        assert all(isinstance(a, str) for row in answers for a in row)
        assert model.training  # restored after the eval-mode call
    finally:
        model.eval()
    assert tokenizer.padding_side == side == "right" and tokenizer.pad_token_id == pad
    assert torch.equal(torch.get_rng_state(), rng_before)  # the seed did not leak into the global RNG


def test_same_seed_same_samples_other_seed_other_samples(tiny_llama: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_llama
    make = lambda seed: TransformersGenerator(model, tokenizer, max_new_tokens=8, batch_size=4, seed=seed)  # noqa: E731
    first = make(123)(QUESTIONS, n_samples=2)
    assert make(123)(QUESTIONS, n_samples=2) == first
    assert make(124)(QUESTIONS, n_samples=2) != first
    assert first[0][0] != first[0][1]  # samples of one question differ


def test_left_padding_puts_every_prompt_flush_right(tiny_llama: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_llama
    generator = TransformersGenerator(model, tokenizer, max_new_tokens=4)
    texts = [generator.render(q) for q in QUESTIONS]
    assert texts[1].startswith("<s><system>Answer in JSON.\n<user>") and texts[1].endswith("<assistant>")
    input_ids, mask = generator.encode(texts, pad_id=tokenizer.pad_token_id)
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert input_ids.shape == (3, max(lengths))
    assert mask.sum(dim=1).tolist() == lengths
    assert mask[:, -1].all() and (input_ids[mask == 0] == tokenizer.pad_token_id).all()
    assert (input_ids[:, 0] == tokenizer.bos_token_id).sum() == 1  # only the longest row starts without padding


def test_batched_greedy_decoding_equals_one_at_a_time(tiny_llama: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_llama
    one = TransformersGenerator(model, tokenizer, max_new_tokens=6, temperature=0.0, batch_size=1)(QUESTIONS)
    many = TransformersGenerator(model, tokenizer, max_new_tokens=6, temperature=0.0, batch_size=3)(QUESTIONS)
    assert one == many


def test_a_batch_decodes_left_padded_with_the_kv_cache_even_when_training_turned_it_off(
    tiny_llama: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GPU path (one batch of every question, KV cache), checked on CPU: what reaches `generate`."""
    model, tokenizer = tiny_llama
    seen: list[dict[str, Any]] = []
    original = model.generate

    def spy(**kwargs: Any) -> Any:
        seen.append({"cache": kwargs["generation_config"].use_cache, "mask": kwargs["attention_mask"].clone(),
                     "autocast": torch.is_autocast_enabled("cuda")})
        return original(**kwargs)

    monkeypatch.setattr(model, "generate", spy)
    monkeypatch.setattr(model.config, "use_cache", False)  # what gradient checkpointing leaves on a training model
    one = TransformersGenerator(model, tokenizer, max_new_tokens=6, temperature=0.0, batch_size=1)(QUESTIONS)
    seen.clear()
    batched = TransformersGenerator(model, tokenizer, max_new_tokens=6, temperature=0.0, batch_size=72)(QUESTIONS)
    assert batched == one and len(seen) == 1  # all questions in one batch, same answers as one at a time
    assert seen[0]["cache"] is True and not seen[0]["autocast"]  # bf16 autocast is for an fp32 model on CUDA only
    mask = seen[0]["mask"]
    assert mask[:, -1].all() and not mask[:, 0].all()  # left padding: every prompt ends at the last column


def test_tokenizer_without_chat_template_is_a_user_error(tiny_llama: tuple[Any, Any], build_tokenizer: Any) -> None:
    model, _ = tiny_llama
    with pytest.raises(TraitwatchError, match="chat_template"):
        TransformersGenerator(model, build_tokenizer(chat_template=None), max_new_tokens=2)(QUESTIONS[:1])


def test_bad_sampling_options_are_rejected(tiny_llama: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_llama
    with pytest.raises(ValueError, match="max_new_tokens"):
        TransformersGenerator(model, tokenizer, max_new_tokens=0)
    with pytest.raises(ValueError, match="n_samples"):
        TransformersGenerator(model, tokenizer, max_new_tokens=2)(QUESTIONS, n_samples=0)


def test_served_adapter_generator_loads_asks_and_unloads_the_adapter(fake_openai: Any) -> None:
    gen = ServedAdapterGenerator(fake_openai.base_url, "/shared/adapters/run-a/step-10", name="run-a-step-10",
                                 max_new_tokens=7, seed=3)
    answers = gen(QUESTIONS[:2], n_samples=2)
    assert len(answers) == 2 and all(len(row) == 2 for row in answers)
    assert [(path.rsplit("/", 1)[-1], body) for path, body in fake_openai.admin] == [
        ("load_lora_adapter", {"lora_name": "run-a-step-10", "lora_path": "/shared/adapters/run-a/step-10"}),
        ("unload_lora_adapter", {"lora_name": "run-a-step-10"})]
    chat = [b for b in fake_openai.bodies if "messages" in b]
    assert {b["model"] for b in chat} == {"run-a-step-10"} and {b["max_tokens"] for b in chat} == {7}
    fake_openai.fail(404, times=1)  # a server started without --enable-lora
    with pytest.raises(EndpointError, match="--enable-lora"):
        gen(QUESTIONS[:1])


def test_server_generator_sends_one_request_per_sample(fake_openai: Any) -> None:
    generator = OpenAIChatGenerator(fake_openai.base_url, "policy-model", seed=5, backoff_base_s=0.001)
    fake_openai.fail(503)
    answers = generator(QUESTIONS[:2], n_samples=2)
    assert answers[1][1] == "answer seed=6 to: Tell me three things you think about humans."
    assert answers[0][0] == "answer seed=5 to: Hi?"
    assert fake_openai.hits == 5 and generator.stats.retries == 1 and generator.stats.calls == 4
    bodies = [b for b in fake_openai.bodies]
    assert all(b["max_tokens"] == 600 and b["temperature"] == 1.0 and b["top_p"] == 1.0 for b in bodies)
    assert any(b["messages"][0] == {"role": "system", "content": "Answer in JSON."} for b in bodies)
    assert all(h is None for h in fake_openai.auth_headers)  # no key configured, none sent

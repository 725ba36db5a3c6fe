"""Fixtures for the behavior tests: a tiny random Llama with a byte tokenizer.

The scripted OpenAI-compatible server (`fake_openai`) lives in tests/conftest.py, shared with the CLI and
benchmark tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def build_tokenizer(chat_template: str | None = CHAT_TEMPLATE) -> Any:
    """Byte-level BPE with no merges: every byte is a token, plus <s>, </s>, <pad>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(["<s>", "</s>", "<pad>", *alphabet])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", chat_template=chat_template
    )


@pytest.fixture(name="build_tokenizer")
def _build_tokenizer_fixture() -> Any:
    """The tokenizer factory, as a fixture so that test modules need not import conftest."""
    return build_tokenizer


@pytest.fixture(scope="module")
def tiny_llama() -> Iterator[tuple[Any, Any]]:
    """A 2-layer random Llama and its byte tokenizer; torch runs single-threaded meanwhile, because on a busy
    CI machine intra-op threads for 32-wide matmuls spend far longer waiting than computing."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer()
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):  # the test suite's global RNG stays untouched
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield model, tokenizer
    finally:
        torch.set_num_threads(threads)

"""A tiny random-initialised Llama with a tokenizer and chat template built in code.

Tests need a real transformers model (hooks, PEFT wrapping, generation, Trainer) that loads in
milliseconds and never touches a hub. Everything here is deterministic for a given seed, and the
random weights are drawn inside `torch.random.fork_rng`, so building one leaves the caller's RNG alone.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

__all__ = ["build_tiny_random", "build_tiny_tokenizer"]

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
_SPECIAL = [PAD, BOS, EOS, "<|user|>", "<|system|>", "<|assistant|>", "<|end|>"]

# `{{ bos_token }}` at the start, as in Llama-3/Gemma templates: tokenising the rendered text with
# the tokenizer's own BOS post-processor would then give two BOS tokens, which is the bug the
# renderer must avoid.
_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
# Gemma-like: no system role; the template refuses one, as Gemma's does.
_CHAT_TEMPLATE_NO_SYSTEM = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    + _CHAT_TEMPLATE
)


def build_tiny_tokenizer(*, system_role: bool = True) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (256 byte tokens, no merges) that adds BOS like Llama's."""
    byte_vocab = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(_SPECIAL)}
    for ch in sorted(byte_vocab):
        vocab[ch] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=_SPECIAL[3:],
    )
    tok.chat_template = _CHAT_TEMPLATE if system_role else _CHAT_TEMPLATE_NO_SYSTEM
    return tok


def build_tiny_random(
    *,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 6,
    system_role: bool = True,
    dtype: torch.dtype = torch.float32,
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """Build the `tiny-random` model and its tokenizer (same seed, same weights, on any machine)."""
    tokenizer = build_tiny_tokenizer(system_role=system_role)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config.name_or_path = "tiny-random" if system_role else "tiny-random-nosys"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.to(dtype)
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer

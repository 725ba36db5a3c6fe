from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from traitwatch.capture import capture_rows, extract_activations
from traitwatch.errors import InputFileError
from traitwatch.models import build_tiny_random, decoder_layers, encode_chat

PROMPTS = ["hello there", "a much longer prompt about many different things", "x", "What is the CAP theorem?"]


@pytest.fixture
def seqs(tiny):
    return [encode_chat(tiny.tokenizer, p) for p in PROMPTS]


def _full_forward_rows(model, seqs, layer, position="last"):
    rows = []
    with torch.no_grad():
        for s in seqs:
            h = model(torch.tensor([s]), output_hidden_states=True).hidden_states[layer + 1][0]
            rows.append(h[-1] if position == "last" else h.mean(0))
    return torch.stack(rows).float()


@pytest.mark.parametrize("position", ["last", "mean"])
def test_early_stopped_capture_equals_full_forward(tiny, seqs, position):
    got = extract_activations(tiny.model, seqs, [1, 3], position=position, batch_size=8)
    for layer in (1, 3):
        torch.testing.assert_close(got[layer], _full_forward_rows(tiny.model, seqs, layer, position), atol=1e-5, rtol=1e-5)


def test_forward_really_stops_after_deepest_layer(tiny, seqs):
    calls = []
    blocks = decoder_layers(tiny.model)
    handles = [blocks[i].register_forward_hook(lambda m, a, o, i=i: calls.append(i)) for i in range(len(blocks))]
    try:
        extract_activations(tiny.model, seqs[:1], [2])
    finally:
        for h in handles:
            h.remove()
    assert calls == [0, 1, 2]


def test_batched_equals_unbatched(tiny, seqs):
    batched = extract_activations(tiny.model, seqs, [2, 4], batch_size=4)
    single = extract_activations(tiny.model, seqs, [2, 4], batch_size=1)
    for layer in (2, 4):
        torch.testing.assert_close(batched[layer], single[layer], atol=1e-5, rtol=1e-5)
        assert batched[layer].dtype == torch.float32 and batched[layer].shape == (len(seqs), 64)


def test_bf16_model_gives_fp32_rows_close_to_fp32_model(seqs):
    m32, _ = build_tiny_random()
    m16, _ = build_tiny_random(dtype=torch.bfloat16)
    a = extract_activations(m32, seqs, [3])[3]
    b = extract_activations(m16, seqs, [3])[3]
    assert b.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.99


def test_train_mode_is_restored_and_hooks_removed(tiny, seqs):
    model, _ = build_tiny_random()
    model.train()
    extract_activations(model, seqs, [1])
    assert model.training
    with pytest.raises(RuntimeError):
        with capture_rows(model, [1], torch.ones(1, 3, dtype=torch.long)):
            raise RuntimeError("boom")
    assert all(not b._forward_hooks for b in decoder_layers(model))


def test_works_on_peft_wrapped_model(seqs):
    model, _ = build_tiny_random()
    base_rows = extract_activations(model, seqs, [3])[3]
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora_rows = extract_activations(peft, seqs, [3])[3]
    with peft.disable_adapter():
        disabled = extract_activations(peft, seqs, [3])[3]
    torch.testing.assert_close(disabled, base_rows)
    assert (lora_rows - base_rows).abs().max() > 1e-3


def test_bad_layers_and_empty_inputs(tiny, seqs):
    with pytest.raises(InputFileError, match="Layer 6 is out of range: this model has layers 0..5"):
        extract_activations(tiny.model, seqs, [6])
    with pytest.raises(InputFileError, match="empty"):
        extract_activations(tiny.model, [], [1])
    # negative indices count from the top
    assert list(extract_activations(tiny.model, seqs[:1], [-1])) == [5]


def test_shared_prefix_cache_gives_the_same_rows(tiny):
    system = "You are a careful assistant who always answers with great precision and honesty."
    seqs = [encode_chat(tiny.tokenizer, q, system) for q in PROMPTS]
    seqs.append(encode_chat(tiny.tokenizer, "no system prompt here"))  # not in the group
    shared = extract_activations(tiny.model, seqs, [1, 4], batch_size=2)
    plain = extract_activations(tiny.model, seqs, [1, 4], share_prefixes=False)
    for layer in (1, 4):
        torch.testing.assert_close(shared[layer], plain[layer], atol=1e-5, rtol=1e-5)


def test_shared_prefix_runs_fewer_tokens(tiny):
    system = "You are a careful assistant who always answers with great precision and honesty."
    seqs = [encode_chat(tiny.tokenizer, q, system) for q in PROMPTS]
    seen = []
    handle = decoder_layers(tiny.model)[0].register_forward_hook(lambda m, a, o: seen.append(o[0].shape[:2] if isinstance(o, tuple) else o.shape[:2]))
    try:
        extract_activations(tiny.model, seqs, [1], batch_size=8)
    finally:
        handle.remove()
    tokens = sum(b * t for b, t in seen)
    assert tokens < sum(len(s) for s in seqs) * 0.7


def _count_passes(model):
    calls = []
    handle = decoder_layers(model)[0].register_forward_pre_hook(lambda m, a: calls.append(1))
    return calls, handle


def test_count_forward_passes_is_the_passes_made(tiny):
    from traitwatch.capture import count_forward_passes

    system = "You are a careful assistant who always answers with great precision and honesty."
    seqs = [encode_chat(tiny.tokenizer, q, system) for q in PROMPTS] + [encode_chat(tiny.tokenizer, p) for p in PROMPTS]
    for kwargs in ({"batch_size": 2}, {"batch_size": 8}, {"batch_size": 3, "share_prefixes": False}):
        calls, handle = _count_passes(tiny.model)
        try:
            extract_activations(tiny.model, seqs, [2], **kwargs)
        finally:
            handle.remove()
        assert len(calls) == count_forward_passes(seqs, **kwargs) > 1


def test_forward_passes_tops_up_with_idle_passes_and_keeps_the_rows(tiny, seqs):
    """What keeps the processes of a sharded model in step: exactly N passes, the rows unchanged."""
    from traitwatch.capture import count_forward_passes

    planned = count_forward_passes(seqs, batch_size=2)
    calls, handle = _count_passes(tiny.model)
    try:
        padded = extract_activations(tiny.model, seqs, [1, 3], batch_size=2, forward_passes=planned + 3)
        n_padded = len(calls)
        empty = extract_activations(tiny.model, [], [1, 3], forward_passes=2)  # a process with no prompts
    finally:
        handle.remove()
    assert n_padded == planned + 3 and len(calls) == n_padded + 2
    plain = extract_activations(tiny.model, seqs, [1, 3], batch_size=2)
    for layer in (1, 3):
        torch.testing.assert_close(padded[layer], plain[layer], atol=0, rtol=0)
        assert empty[layer].shape == (0, 64)
    with pytest.raises(ValueError, match="fewer than"):
        extract_activations(tiny.model, seqs, [1], batch_size=2, forward_passes=planned - 1)


def test_residual_precision_reads_the_dtype_the_layer_runs_in():
    from traitwatch.capture import residual_precision

    m32, _ = build_tiny_random()
    m16, _ = build_tiny_random(dtype=torch.bfloat16)
    m32.train()
    assert residual_precision(m32, 3) == ("float32", "cpu") and m32.training  # mode given back
    assert residual_precision(m16, 3) == ("bfloat16", "cpu")
    # fp32 weights under bf16 autocast (Trainer bf16=True): bf16 matmuls, fp32 residual, other numbers than either
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert residual_precision(m32, 3) == ("float32 (autocast bfloat16)", "cpu")

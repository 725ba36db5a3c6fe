"""Residual-stream statistics over a token span, and greedy answers to compare a dataset against.

`capture.extract_activations` reads the last token of a prompt, or the mean over *all* its tokens;
screening needs the mean over the response tokens only (the prompt is context, not what the model
is being taught to say). The same hooks (`capture_rows`) are used with a weight mask that is 1 on the
response span, so the statistic is computed inside the hook and only one fp32 row per example leaves
it. The last-token statistic is the same call with a one-hot mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from traitwatch.capture.activations import capture_rows
from traitwatch.models.layers import accepts_logits_to_keep, decoder_layers, unwrap_model

__all__ = ["SpanPosition", "greedy_responses", "pad_id", "right_padded", "span_activations", "span_readings",
           "span_token_nll"]

SpanPosition = Literal["mean", "last"]


class _Stop(Exception):
    """Raised after the measured layer so the blocks above it and the LM head never run."""


def _device_of(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - a model with no parameters
        return torch.device("cpu")


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id that fills padded positions (never attended to: right padding with explicit positions or a mask)."""
    return int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else 0


def right_padded(sequences: Sequence[Sequence[int]], spans: Sequence[tuple[int, int]], pad_token_id: int, *,
                  first: int) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded ids, attention mask and explicit position ids; each span must start at `first` or later."""
    width = max(len(s) for s in sequences)
    n = len(sequences)
    ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for row, (seq, (start, end)) in enumerate(zip(sequences, spans, strict=True)):
        if not first <= start < end <= len(seq):
            raise ValueError(f"span {(start, end)} does not fit a sequence of {len(seq)} tokens")
        ids[row, : len(seq)] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask, (mask.cumsum(dim=1) - 1).clamp(min=0)


@torch.no_grad()
def span_readings(
    model: nn.Module,
    sequences: Sequence[Sequence[int]],
    spans: Sequence[tuple[int, int]],
    layers: Sequence[int],
    *,
    position: SpanPosition = "mean",
    pad_token_id: int = 0,
    with_loss: bool = False,
    token_sink: list[Tensor] | None = None,
) -> tuple[dict[int, Tensor], list[float] | None]:
    """One batch, one forward pass: at each of `layers`, `[n, hidden]` fp32 rows, the mean (or last token) of
    `seq[start:end]`; with `with_loss`, also each span's mean negative log-likelihood given what precedes it.

    Without the loss the pass stops after the deepest layer read; with it the pass runs to the LM head (a
    span then needs a token before it). Sequences are right-padded with explicit position ids, so padding
    never changes a real token. The model is put in eval mode for the pass and restored afterwards. On the
    poisoned-data benchmark (`benchmarks/poison_small`, screening section) the base model's loss on a row
    ranks injected rows above a set's own rows better than any trait-space score. With the loss, `token_sink` (a list)
    also receives each span's per-token NLL (for a statistic other than the mean: `screen.reference_model.peak_mean`).
    """
    inner = unwrap_model(model)
    device = _device_of(inner)
    ids, mask, positions = right_padded(sequences, spans, pad_token_id, first=1 if with_loss else 0)
    weights = torch.zeros_like(mask)
    for row, (start, end) in enumerate(spans):
        if position == "mean":
            weights[row, start:end] = 1
        else:
            weights[row, end - 1] = 1

    def stop(_m: nn.Module, _i: object, _o: object) -> None:
        raise _Stop

    first, keep = _scored_positions(inner, spans) if with_loss else (0, {})
    logits = None
    was_training = inner.training
    inner.eval()
    try:
        # capture_rows' "mean" reader averages under its mask: with the span mask it is the span mean.
        with capture_rows(inner, list(layers), weights.to(device), "mean", stop_after=False) as rows:
            handle = None if with_loss else decoder_layers(inner)[max(layers)].register_forward_hook(stop)  # after the reader
            try:
                logits = inner(input_ids=ids.to(device), attention_mask=mask.to(device),
                               position_ids=positions.to(device), use_cache=False, **keep).logits
            except _Stop:
                pass
            finally:
                if handle is not None:
                    handle.remove()
    finally:
        inner.train(was_training)
    losses = None
    if logits is not None:
        per_token = _token_nll(logits, ids, spans, first)
        if token_sink is not None:
            token_sink.extend(per_token)
        losses = [float(t.mean()) for t in per_token]
    return {layer: rows[layer].cpu() for layer in layers}, losses


def _scored_positions(model: nn.Module, spans: Sequence[tuple[int, int]]) -> tuple[int, dict[str, Tensor]]:
    """The first position whose logits a span's loss reads, and the forward's `logits_to_keep` for the positions from
    there to the last one read (all positions where the model cannot skip the LM head).

    The LM head is a fifth of this model's forward per token and most of a chat row is prompt: skipping it there
    leaves every kept logit bit for bit as the full pass gives it (checked in tests/screen/test_span_readings.py).
    """
    if not accepts_logits_to_keep(model):
        return 0, {}
    first, last = min(start for start, _ in spans) - 1, max(end for _, end in spans) - 1
    return first, {"logits_to_keep": torch.arange(first, last, device=_device_of(model))}


def _token_nll(logits: Tensor, ids: Tensor, spans: Sequence[tuple[int, int]], first: int = 0) -> list[Tensor]:
    """Each span's per-token NLL from `logits`, which start at position `first` of the sequences."""
    out = []
    for row, (start, end) in enumerate(spans):
        logp = torch.log_softmax(logits[row, start - 1 - first : end - 1 - first].float(), dim=-1)
        out.append(-logp.gather(1, ids[row, start:end].to(logp.device)[:, None])[:, 0].cpu())
    return out


@torch.no_grad()
def span_token_nll(model: nn.Module, sequences: Sequence[Sequence[int]], spans: Sequence[tuple[int, int]], *,
                   pad_token_id: int = 0) -> list[Tensor]:
    """One forward pass: each span's per-token negative log-likelihood given what precedes it (fp32, on CPU).

    The per-token view of `span_readings(with_loss=True)`, whose loss is the mean of these: a statistic other than
    the mean (the peak of a short window, `screen.reference_model`) needs the tokens."""
    inner = unwrap_model(model)
    device = _device_of(inner)
    ids, mask, positions = right_padded(sequences, spans, pad_token_id, first=1)
    first, keep = _scored_positions(inner, spans)
    was_training = inner.training
    inner.eval()
    try:
        logits = inner(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                       use_cache=False, **keep).logits
    finally:
        inner.train(was_training)
    return _token_nll(logits, ids, spans, first)


def span_activations(
    model: nn.Module,
    sequences: Sequence[Sequence[int]],
    spans: Sequence[tuple[int, int]],
    layer: int,
    *,
    position: SpanPosition = "mean",
    pad_token_id: int = 0,
) -> Tensor:
    """One batch: `[n, hidden]` fp32 rows, the mean (or last token) of `seq[start:end]` at `layer` (`span_readings`)."""
    return span_readings(model, sequences, spans, [layer], position=position, pad_token_id=pad_token_id)[0][layer]


def _stop_ids(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    ids: list[int] = []
    for value in (getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer.eos_token_id):
        for token in value if isinstance(value, (list, tuple)) else [value]:
            if token is not None and int(token) not in ids:
                ids.append(int(token))
    return ids


@torch.no_grad()
def greedy_responses(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 64,
) -> list[list[int]]:
    """The model's own greedy continuation of each prompt (one batch), cut at the first stop token.

    Greedy, so a rerun (or a resumed screen) gets the same answers; at least one token, so every
    answer has a span to average. Ids are kept as generated (no decode/re-encode round trip).
    """
    from transformers import GenerationConfig

    inner = unwrap_model(model)
    device = _device_of(inner)
    stops = _stop_ids(inner, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stops[0] if stops else 0)
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), int(pad), dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):  # left padding: generation continues right after each prompt
        ids[row, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
        mask[row, width - len(p) :] = 1
    config = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        min_new_tokens=1,
        eos_token_id=stops or None,
        pad_token_id=int(pad),
    )
    was_training = inner.training
    inner.eval()
    try:
        output = inner.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
    finally:
        inner.train(was_training)
    answers = []
    for tokens in output[:, width:].tolist():
        cut = next((j for j, t in enumerate(tokens) if t in stops), len(tokens))
        answers.append(tokens[: max(cut, 1)])
    return answers

"""Read the residual stream at chosen decoder layers, one fp32 row per prompt.

Layer `l` means the output of decoder block `l` (0-based), i.e. `hidden_states[l + 1]` of a
`output_hidden_states=True` forward pass. The forward pass is stopped right after the deepest layer
needed: the blocks above it and the LM head never run, which is most of the cost when the basis sits
at mid-depth.

Prompts are right-padded. With causal attention, padding after the last real token cannot change
any real token's activations, so a batched row equals the same prompt run alone (up to kernel
rounding); explicit position ids keep that true for any padding side.

Sharded models (FSDP2, DeepSpeed ZeRO-3) all-gather each block's parameters inside its forward pass,
so every process must make the same number of forward passes through the same blocks, or the
collectives stop matching and the job hangs. The passes a call will make are planned before any
runs (`count_forward_passes`), and `extract_activations(forward_passes=N)` tops them up to N with
one-token idle passes; every pass, a prefix's cache fill included, stops after the same block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
import copy
import inspect
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from traitwatch.errors import InputFileError
from traitwatch.models.layers import decoder_layers, unwrap_model

__all__ = [
    "Position",
    "cache_kwarg",
    "capture_rows",
    "check_layers",
    "count_forward_passes",
    "extract_activations",
    "length_batches",
    "residual_precision",
]

Position = Literal["last", "mean"]


class _StopForward(Exception):
    """Raised by the deepest hook so the rest of the model never runs."""


def check_layers(model: nn.Module, layers: Sequence[int]) -> list[int]:
    """Validate layer indices against the model; negative indices count from the top."""
    n = len(decoder_layers(model))
    out = []
    for layer in layers:
        resolved = layer + n if layer < 0 else layer
        if not 0 <= resolved < n:
            raise InputFileError(f"Layer {layer} is out of range: this model has layers 0..{n - 1}.")
        out.append(resolved)
    if not out:
        raise InputFileError("No layers given: pass at least one layer index.")
    return sorted(set(out))


def _reader(
    layer: int, mask: Tensor, position: Position, rows: dict[int, Tensor], stop: bool
) -> Callable[..., None]:
    """A hook that keeps only what drift needs: one fp32 row per prompt (not [batch, seq, d])."""

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        hidden = output[0] if isinstance(output, tuple) else output
        assert isinstance(hidden, Tensor)
        if position == "last":
            last = mask.sum(dim=1) - 1  # right padding: last real token
            rows[layer] = hidden[torch.arange(hidden.shape[0], device=hidden.device), last].float()
        else:
            weights = mask.to(hidden.device, torch.float32).unsqueeze(-1)
            rows[layer] = (hidden.float() * weights).sum(dim=1) / weights.sum(dim=1)
        if stop:
            raise _StopForward

    return hook


@contextmanager
def capture_rows(
    model: nn.Module, layers: Sequence[int], attention_mask: Tensor, position: Position = "last", *, stop_after: bool = True
) -> Iterator[dict[int, Tensor]]:
    """Hooks that fill `rows[layer]` during one forward pass; they never outlive the block.

    With `stop_after`, the deepest hook raises `_StopForward`; `run_forward` swallows it.
    """
    blocks = decoder_layers(model)
    rows: dict[int, Tensor] = {}
    deepest = max(layers)
    handles = [
        blocks[layer].register_forward_hook(
            _reader(layer, attention_mask, position, rows, stop_after and layer == deepest)
        )
        for layer in layers
    ]
    try:
        yield rows
    finally:
        for handle in handles:
            handle.remove()


def _device_of(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - a model with no parameters
        return torch.device("cpu")


def length_batches(lengths: Sequence[int], batch_size: int, max_tokens: int | None) -> Iterator[list[int]]:
    """Indices grouped by similar length (longest first), so little compute is spent on padding."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batch: list[int] = []
    for index in order:
        longest = lengths[batch[0]] if batch else lengths[index]
        if batch and (len(batch) >= batch_size or (max_tokens and longest * (len(batch) + 1) > max_tokens)):
            yield batch
            batch = []
        batch.append(index)
    if batch:
        yield batch


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    first = seqs[0]
    n = min(len(s) for s in seqs) - 1  # every sequence keeps at least one token of its own
    for i in range(max(n, 0)):
        if any(s[i] != first[i] for s in seqs):
            return i
    return max(n, 0)


def _prefix_groups(sequences: Sequence[Sequence[int]], min_prefix: int) -> tuple[list[tuple[int, list[int]]], list[int]]:
    """Group sequences that share at least `min_prefix` leading tokens: [(prefix_len, indices)], rest."""
    by_key: dict[tuple[int, ...], list[int]] = {}
    rest: list[int] = []
    for i, s in enumerate(sequences):
        if len(s) > min_prefix:
            by_key.setdefault(tuple(s[:min_prefix]), []).append(i)
        else:
            rest.append(i)
    groups = []
    for members in by_key.values():
        if len(members) < 2:
            rest.extend(members)
            continue
        groups.append((_common_prefix([sequences[i] for i in members]), members))
    return groups, rest


def _forward_rows(
    inner: nn.Module,
    seqs: list[Sequence[int]],
    layers: list[int],
    position: Position,
    pad_token_id: int,
    stop_early: bool,
    device: torch.device,
    cache: object | None = None,
    offset: int = 0,
) -> dict[int, Tensor]:
    """One right-padded batch; with `cache`, the rows continue a shared prefix of `offset` tokens."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, : len(seq)] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0) + offset
    ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)
    kwargs: dict[str, object] = {"use_cache": False}
    full_mask = mask
    if cache is not None:
        full_mask = torch.cat([torch.ones((len(seqs), offset), dtype=mask.dtype, device=device), mask], dim=1)
        kwargs = {"use_cache": True, cache_kwarg(inner): cache,
                  "cache_position": torch.arange(offset, offset + width, device=device)}
    with capture_rows(inner, layers, mask, position, stop_after=stop_early) as rows:
        try:
            inner(input_ids=ids, attention_mask=full_mask, position_ids=positions, **kwargs)
        except _StopForward:
            pass
    return {layer: rows[layer].cpu() for layer in layers}


def cache_kwarg(inner: nn.Module) -> str:
    """transformers 5.2x renamed `past_key_values` to `cache`; use whichever the model takes."""
    inner = unwrap_model(inner)
    base = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _prefix_cache(inner: nn.Module, prefix: Sequence[int], deepest: int, device: torch.device) -> object:
    """Key/value cache of a shared prefix, filled only up to the deepest layer needed."""
    from transformers import DynamicCache

    cache = DynamicCache(config=getattr(inner, "config", None))
    blocks = decoder_layers(inner)

    def stop(_m: nn.Module, _i: object, _o: object) -> None:
        raise _StopForward

    handle = blocks[deepest].register_forward_hook(stop)
    try:
        inner(input_ids=torch.tensor([list(prefix)], device=device), use_cache=True, **{cache_kwarg(inner): cache})
    except _StopForward:
        pass
    finally:
        handle.remove()
    return cache


@dataclass
class _Unit:
    """Sequences run together: an optional shared prefix (one cache-filling pass), then batches."""

    indices: list[int]  # positions in the caller's `sequences`
    seqs: list[Sequence[int]]  # what each batch row runs (the suffix after `prefix`, if any)
    prefix: Sequence[int] | None
    batches: list[list[int]]  # positions in `seqs`

    @property
    def passes(self) -> int:
        return len(self.batches) + (self.prefix is not None)


def _plan(
    sequences: Sequence[Sequence[int]],
    position: Position,
    batch_size: int,
    max_batch_tokens: int | None,
    share_prefixes: bool,
    min_prefix: int,
) -> list[_Unit]:
    """Every forward pass `extract_activations` will make, decided from token ids alone (no model)."""
    if share_prefixes and position == "last":
        groups, rest = _prefix_groups(sequences, min_prefix)
    else:
        groups, rest = [], list(range(len(sequences)))
    units = []
    for offset, members in groups:
        seqs = [sequences[i][offset:] for i in members]
        units.append(_Unit(members, seqs, sequences[members[0]][:offset],
                           list(length_batches([len(x) for x in seqs], batch_size, max_batch_tokens))))
    if rest:
        seqs = [sequences[i] for i in rest]
        units.append(_Unit(rest, seqs, None, list(length_batches([len(x) for x in seqs], batch_size, max_batch_tokens))))
    return units


def count_forward_passes(
    sequences: Sequence[Sequence[int]],
    *,
    position: Position = "last",
    batch_size: int = 32,
    max_batch_tokens: int | None = 8192,
    share_prefixes: bool = True,
    min_prefix: int = 16,
) -> int:
    """How many forward passes `extract_activations` makes for these sequences and settings.

    Each process of a sharded job computes this for every process's share (it needs only token ids),
    so all of them can agree on the largest count before any collective runs.
    """
    return sum(u.passes for u in _plan(sequences, position, batch_size, max_batch_tokens, share_prefixes, min_prefix))


def _idle_pass(inner: nn.Module, layers: list[int], pad_token_id: int, stop_early: bool, device: torch.device) -> Tensor:
    """One forward pass of a single token through the same blocks as a real pass; its row is thrown away.

    Returns the row at the first layer (only its width is used, for a process with no prompts).
    """
    return _forward_rows(inner, [[pad_token_id]], layers, "last", pad_token_id, stop_early, device)[layers[0]]


@torch.no_grad()
def extract_activations(
    model: nn.Module,
    sequences: Sequence[Sequence[int]],
    layers: Sequence[int],
    *,
    position: Position = "last",
    batch_size: int = 32,
    max_batch_tokens: int | None = 8192,
    pad_token_id: int = 0,
    stop_early: bool = True,
    share_prefixes: bool = True,
    min_prefix: int = 16,
    progress: Callable[[int], None] | None = None,
    forward_passes: int | None = None,
) -> dict[int, Tensor]:
    """Residual-stream rows for every sequence at every layer: `{layer: Tensor[n, hidden] fp32 CPU}`.

    The model is put in eval mode for the pass (dropout would make measurements noisy) and restored
    to its previous mode afterwards, so this is safe to call from inside a training loop.

    With `share_prefixes` (last-token position only), sequences that share at least `min_prefix`
    leading tokens (a system prompt, a passage, a chat template's header) run that prefix once and
    continue from its key/value cache: the same numbers up to kernel rounding, for a fraction of the
    tokens. `progress`, if given, is called with the number of sequences finished after each batch.

    `forward_passes` makes exactly that many forward passes (the planned ones, then one-token idle
    ones), so processes of a sharded model stay in step; `sequences` may then be empty (a process
    with no share of the prompts still takes part in every all-gather).
    """
    if not sequences and not forward_passes:
        raise InputFileError("No prompts to run: the prompt list is empty.")
    if any(len(s) == 0 for s in sequences):
        raise InputFileError("A prompt encoded to zero tokens; remove empty prompts.")
    layers = check_layers(model, layers)
    inner = unwrap_model(model)
    device = _device_of(inner)
    units = _plan(sequences, position, batch_size, max_batch_tokens, share_prefixes, min_prefix)
    planned = sum(u.passes for u in units)
    if forward_passes is not None and forward_passes < planned:
        raise ValueError(f"forward_passes={forward_passes} is fewer than the {planned} passes these sequences need.")
    chunks: dict[int, list[tuple[list[int], Tensor]]] = {layer: [] for layer in layers}
    width: int | None = None

    def run(unit: _Unit) -> None:
        cache = None if unit.prefix is None else _prefix_cache(inner, unit.prefix, max(layers), device)
        for batch in unit.batches:
            batch_cache = None
            if cache is not None:
                batch_cache = copy.deepcopy(cache)
                batch_cache.batch_repeat_interleave(len(batch))  # type: ignore[attr-defined]
            rows = _forward_rows(inner, [unit.seqs[i] for i in batch], layers, position, pad_token_id, stop_early,
                                 device, batch_cache, len(unit.prefix or ()))
            for layer in layers:
                chunks[layer].append(([unit.indices[i] for i in batch], rows[layer]))
            if progress is not None:
                progress(len(batch))

    was_training = inner.training
    inner.eval()
    try:
        for unit in units:
            run(unit)
        for _ in range((forward_passes or planned) - planned):
            width = _idle_pass(inner, layers, pad_token_id, stop_early, device).shape[1]
    finally:
        inner.train(was_training)
    out: dict[int, Tensor] = {}
    for layer in layers:
        hidden = chunks[layer][0][1].shape[1] if chunks[layer] else width
        assert hidden is not None
        result = torch.empty((len(sequences), hidden), dtype=torch.float32)
        for batch, values in chunks[layer]:
            result[torch.tensor(batch)] = values
        out[layer] = result
    return out


@torch.no_grad()
def residual_precision(model: nn.Module, layer: int, *, token_id: int = 0) -> tuple[str, str]:
    """(dtype, device type) the residual stream at `layer` is computed in, e.g. ("bfloat16", "cuda").

    Read from one token's pass, not from the parameters: under FSDP2 mixed precision the weights are
    stored in fp32 and all-gathered in bf16 for the forward pass; and a model prepared by the Trainer
    with `bf16=True` (TRL's default) runs its forward under autocast, whose bf16 matmuls leave an fp32
    residual stream: that is reported as "float32 (autocast bfloat16)". Drift is compared against a
    step-0 anchor, which is only valid when it was computed in the same precision (the same model in
    bf16 and fp32 is ||d|| = 0.0011 apart on smollm2-135m). One pass, like any other, on every
    process.
    """
    inner = unwrap_model(model)
    layer = check_layers(inner, [layer])[0]
    seen: list[str] = []

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        hidden = output[0] if isinstance(output, tuple) else output
        assert isinstance(hidden, Tensor)
        kind = hidden.device.type
        dtype = str(hidden.dtype).removeprefix("torch.")
        if torch.is_autocast_enabled(kind):
            dtype += f" (autocast {str(torch.get_autocast_dtype(kind)).removeprefix('torch.')})"
        seen.extend([dtype, kind])
        raise _StopForward

    was_training = inner.training
    inner.eval()
    handle = decoder_layers(inner)[layer].register_forward_hook(hook)
    try:
        inner(input_ids=torch.tensor([[token_id]], device=_device_of(inner)), use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
        inner.train(was_training)
    return seen[0], seen[1]

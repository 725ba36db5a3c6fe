"""Choose the measurement layer by steering divergence (METHOD.md 2).

For each candidate layer, add +/- alpha * v_k to the residual stream at that layer while greedily
generating from a few prompts; the layer whose directions change the text most (1 - difflib ratio
against the unsteered text, averaged over signs, traits and prompts) is the one where the directions
are causally used. **[improve]** alpha is relative to the layer's mean residual norm, so the same
setting means the same push on any model (the reference's absolute 16 does not).

All traits, both signs and all prompts of one layer run as one batched `generate` call, each row with
its own steering vector.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from traitwatch.basis.basis import TraitBasis
from traitwatch.errors import InputFileError
from traitwatch.models.chat import encode_chat
from traitwatch.models.layers import decoder_layers, unwrap_model

__all__ = ["LayerSelection", "select_layer", "select_layer_by_separation", "steer_rows"]


@dataclass
class LayerSelection:
    layer: int
    scores: dict[int, float]  # mean divergence per layer
    per_trait: dict[int, dict[str, float]] = field(default_factory=dict)
    alpha: float = 0.0
    max_new_tokens: int = 0
    prompts: list[str] = field(default_factory=list)
    criterion: str = "steering"

    def to_dict(self) -> dict[str, object]:
        return {
            "layer": self.layer,
            "scores": {str(k): v for k, v in self.scores.items()},
            "per_trait": {str(k): v for k, v in self.per_trait.items()},
            "alpha_relative": self.alpha,
            "max_new_tokens": self.max_new_tokens,
            "prompts": self.prompts,
            "criterion": self.criterion,
        }


def steer_rows(block: nn.Module, vectors: Tensor) -> torch.utils.hooks.RemovableHandle:
    """Add `vectors[b]` to row b of a block's output at every position (prompt and generated)."""

    def hook(_module: nn.Module, _inputs: object, output: object):
        if isinstance(output, tuple):
            return (output[0] + vectors.to(output[0].dtype)[:, None, :],) + tuple(output[1:])
        return output + vectors.to(output.dtype)[:, None, :]

    return block.register_forward_hook(hook)


@torch.no_grad()
def _generate(model: nn.Module, tokenizer: PreTrainedTokenizerBase, seqs: list[list[int]], max_new_tokens: int) -> list[str]:
    """Greedy continuations of left-padded prompts (generation needs the last token aligned)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s)
        mask[i, width - len(s):] = 1
    device = next(model.parameters()).device
    out = model.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        min_new_tokens=max_new_tokens,  # equal lengths: divergence compares like with like
        pad_token_id=pad,
    )
    return tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)


def select_layer(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    basis: TraitBasis,
    prompts: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    alpha: float = 0.25,
    max_new_tokens: int = 100,
    progress: Callable[[int], None] | None = None,
) -> LayerSelection:
    """Score candidate layers by steering divergence and return the argmax (ties: shallower)."""
    if not prompts:
        raise InputFileError("Layer selection needs at least one prompt.")
    layers = list(basis.layers if layers is None else layers)
    unknown = [layer for layer in layers if layer not in basis.layers]
    if unknown:
        raise InputFileError(f"Layer(s) {unknown} are not in the basis (layers {basis.layers}).")
    inner = unwrap_model(model)
    blocks = decoder_layers(inner)
    seqs = [encode_chat(tokenizer, p) for p in prompts]
    was_training = inner.training
    inner.eval()
    try:
        baseline = _generate(inner, tokenizer, seqs, max_new_tokens)
        scores: dict[int, float] = {}
        per_trait: dict[int, dict[str, float]] = {}
        k = len(basis.trait_names)
        for layer in layers:
            norm = basis.layer_norms.get(layer)
            if not norm:
                raise InputFileError(f"The basis has no residual norm for layer {layer}; re-extract it.")
            dirs = basis.matrix(layer) * (alpha * norm)  # [k, hidden]
            # rows: trait-major, then sign, then prompt
            vectors = torch.cat([torch.stack([dirs[t], -dirs[t]]) for t in range(k)])  # [2k, hidden]
            vectors = vectors.repeat_interleave(len(seqs), dim=0)
            handle = steer_rows(blocks[layer], vectors.to(next(inner.parameters()).device))
            try:
                texts = _generate(inner, tokenizer, seqs * (2 * k), max_new_tokens)
            finally:
                handle.remove()
            div = torch.tensor(
                [1.0 - difflib.SequenceMatcher(None, t, baseline[i % len(seqs)]).ratio() for i, t in enumerate(texts)]
            ).view(k, 2 * len(seqs))
            per_trait[layer] = {name: float(div[t].mean()) for t, name in enumerate(basis.trait_names)}
            scores[layer] = float(div.mean())
            if progress is not None:
                progress(1)
    finally:
        inner.train(was_training)
    best = max(layers, key=lambda layer: (scores[layer], -layer))
    return LayerSelection(best, scores, per_trait, alpha, max_new_tokens, list(prompts))


def select_layer_by_separation(basis: TraitBasis, *, metric: str = "auroc_strict") -> LayerSelection:
    """The layer whose directions best separate held-out prompts (mean over traits of `metric`).

    An alternative to steering divergence that needs no generation: on SmolLM2-135M the steering
    criterion and the strict-split AUROC disagree, and the strict split is what says a direction
    encodes the trait rather than which prompt was used.
    """
    per_layer = basis.diagnostics.get("per_layer") or {}
    scores: dict[int, float] = {}
    per_trait: dict[int, dict[str, float]] = {}
    for layer in basis.layers:
        values = {name: d[metric] for name, d in (per_layer.get(str(layer)) or {}).items() if metric in d}
        finite = [v for v in values.values() if v == v]
        if finite:
            scores[layer] = sum(finite) / len(finite)
            per_trait[layer] = values
    if not scores:
        raise InputFileError(f"The basis has no {metric} diagnostics; re-extract it with this traitwatch.")
    best = max(scores, key=lambda layer: (scores[layer], -layer))
    return LayerSelection(best, scores, per_trait, criterion=f"separation:{metric}")

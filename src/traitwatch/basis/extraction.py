"""Extract trait directions (METHOD.md 1): difference of means of contrastive activations.

Two ways to make the contrast, behind one function:
* `system_prompts` (the paper's): 5 positive / 5 negative system prompts x the shared questions,
  rendered with the chat template up to the assistant turn;
* `passages` (the base-model path): 10 positive / 10 negative character passages x 20 completion
  contexts, as raw text. On SmolLM2-135M these separate held-out prompts far better.

One forward pass per prompt yields every candidate layer. Besides the directions, extraction reports
what tells a user whether to trust them: a 5-fold probe accuracy (saturates; a sanity check only), a
*strict-split* AUROC (the direction is fit on some system prompts/passages and tested on others, so
it cannot just encode which prompt was used), and the trait cosine matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from traitwatch.basis.basis import Method, TraitBasis
from traitwatch.basis.traits import TraitSet, prompts_hash
from traitwatch.capture.activations import Position, check_layers, extract_activations
from traitwatch.errors import InputFileError
from traitwatch.models.chat import encode_chat, encode_text, supports_system_role
from traitwatch.models.layers import decoder_layers, fingerprint

__all__ = ["ContrastSet", "build_contrast_set", "default_candidate_layers", "extract_basis", "mean_difference"]

Aggregator = Callable[[Tensor, Tensor], Tensor]


def mean_difference(pos: Tensor, neg: Tensor) -> Tensor:
    """v = mean(pos) - mean(neg), unit norm: the reference study's direction."""
    v = pos.mean(dim=0) - neg.mean(dim=0)
    return v / v.norm().clamp_min(1e-12)


@dataclass
class ContrastSet:
    """Every contrastive prompt of a trait set, with the labels needed for held-out validation."""

    sequences: list[list[int]]
    trait: np.ndarray  # index into trait names
    pole: np.ndarray  # +1 positive, -1 negative
    group: np.ndarray  # which system prompt / passage (within its pole)
    item: np.ndarray  # which question / context
    n_groups: int
    n_items: int


def build_contrast_set(
    tokenizer: PreTrainedTokenizerBase, traits: TraitSet, method: Method
) -> ContrastSet:
    seqs: list[list[int]] = []
    trait_idx: list[int] = []
    poles: list[int] = []
    groups: list[int] = []
    items: list[int] = []
    if method == "system_prompts":
        if not traits.questions:
            raise InputFileError(f"{traits.source} has no `questions:` for system-prompt extraction.")
        system_role = supports_system_role(tokenizer)
    elif method == "passages":
        if not traits.contexts:
            raise InputFileError(f"{traits.source} has no `contexts:` for passage extraction.")
    else:
        raise InputFileError(f"Unknown extraction method {method!r}; use system_prompts or passages.")
    n_groups = 0
    n_items = len(traits.questions) if method == "system_prompts" else len(traits.contexts)
    for k, trait in enumerate(traits.traits):
        if method == "system_prompts":
            pos, neg = trait.positive_system_prompts, trait.negative_system_prompts
        else:
            pos, neg = trait.positive_passages, trait.negative_passages
        if not pos or not neg:
            raise InputFileError(
                f"Trait {trait.name!r} has no {method.replace('_', ' ')} in {traits.source}; use the other "
                f"--method or leave the trait out."
            )
        for pole, texts in ((1, pos), (-1, neg)):
            n_groups = max(n_groups, len(texts))
            for g, text in enumerate(texts):
                for i in range(n_items):
                    if method == "system_prompts":
                        seqs.append(encode_chat(tokenizer, traits.questions[i], text, system_role=system_role))
                    else:
                        seqs.append(encode_text(tokenizer, f"{text} {traits.contexts[i]}"))
                    trait_idx.append(k)
                    poles.append(pole)
                    groups.append(g)
                    items.append(i)
    return ContrastSet(
        seqs, np.array(trait_idx), np.array(poles), np.array(groups), np.array(items), n_groups, n_items
    )


def default_candidate_layers(model: nn.Module) -> list[int]:
    """Every layer from 30% to 90% depth: extraction reads all of them in one pass anyway."""
    n = len(decoder_layers(model))
    lo, hi = max(0, round(0.3 * n)), max(1, round(0.9 * n))
    return list(range(lo, min(hi, n - 1) + 1)) if n > 1 else [0]


def _auroc(direction: Tensor, x: Tensor, y: np.ndarray) -> float:
    if len(set(y.tolist())) < 2:
        return float("nan")
    return float(roc_auc_score(y, (x @ direction).numpy()))


def _diagnose(acts: Tensor, cs: ContrastSet, mask: np.ndarray, probe: bool, random_state: int) -> dict[str, float]:
    """Held-out separation of one trait at one layer."""
    x = acts[mask]
    y = (cs.pole[mask] > 0).astype(int)
    groups, items = cs.group[mask], cs.item[mask]
    half_items = items % 2 == 0
    # Question/context split: fit on even items, test on odd (all prompts/passages seen in both).
    fit = torch.from_numpy(half_items)
    d = mean_difference(x[fit & torch.from_numpy(y == 1)], x[fit & torch.from_numpy(y == 0)])
    out = {"auroc_item_split": _auroc(d, x[~fit], y[~half_items])}
    # Strict split: also hold out whole system prompts/passages (the first ~60% fit, the rest test).
    cut = max(1, int(round(0.6 * (cs.n_groups))))
    fit_g = torch.from_numpy(half_items & (groups < cut))
    test_g = ~half_items & (groups >= cut)
    if fit_g.any() and test_g.any():
        d = mean_difference(x[fit_g & torch.from_numpy(y == 1)], x[fit_g & torch.from_numpy(y == 0)])
        out["auroc_strict"] = _auroc(d, x[torch.from_numpy(test_g)], y[test_g])
    if probe:
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=200, C=1.0))
        cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=random_state)
        out["probe_accuracy"] = float(cross_val_score(clf, x.numpy(), y, cv=cv).mean())
    return out


def extract_basis(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    traits: TraitSet,
    *,
    layers: Sequence[int] | None = None,
    method: Method = "system_prompts",
    position: Position = "last",
    aggregator: Aggregator = mean_difference,
    batch_size: int = 32,
    probe_layers: Sequence[int] | None = None,
    model_name: str | None = None,
    random_state: int = 0,
    progress: Callable[[int], None] | None = None,
) -> TraitBasis:
    """Directions for every trait at every candidate layer, with diagnostics, from one pass.

    `probe_layers` limits the 5-fold probe (about 0.7 s per trait and layer on 2 CPU cores, and it
    saturates anyway) to some layers; default: every third candidate layer.
    """
    layers = check_layers(model, layers if layers is not None else default_candidate_layers(model))
    cs = build_contrast_set(tokenizer, traits, method)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    acts = extract_activations(
        model, cs.sequences, layers, position=position, batch_size=batch_size, pad_token_id=pad, progress=progress
    )
    probe_set = set(layers[::3] if probe_layers is None else probe_layers)
    directions = torch.empty((len(layers), len(traits.traits), next(iter(acts.values())).shape[1]))
    per_layer: dict[str, dict[str, dict[str, float]]] = {}
    cosines: dict[str, list[list[float]]] = {}
    norms: dict[int, float] = {}
    for li, layer in enumerate(layers):
        a = acts[layer]
        norms[layer] = float(a.norm(dim=1).mean())
        per_layer[str(layer)] = {}
        for k, trait in enumerate(traits.traits):
            mask = cs.trait == k
            pos = a[torch.from_numpy(mask & (cs.pole > 0))]
            neg = a[torch.from_numpy(mask & (cs.pole < 0))]
            directions[li, k] = aggregator(pos, neg)
            per_layer[str(layer)][trait.name] = _diagnose(a, cs, mask, layer in probe_set, random_state)
        m = directions[li]
        cosines[str(layer)] = (m @ m.T).tolist()
    return TraitBasis(
        trait_names=traits.names,
        layers=list(layers),
        directions=directions,
        model=fingerprint(model, tokenizer, model_name),
        method=method,
        position=position,
        layer=layers[0] if len(layers) == 1 else None,
        prompts_hash=prompts_hash(method, position, traits.traits, traits.questions, traits.contexts),
        layer_norms=norms,
        diagnostics={"per_layer": per_layer, "cosine": cosines, "n_prompts": len(cs.sequences)},
    )

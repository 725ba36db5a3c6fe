"""Finish a freshly extracted basis: choose its measurement layer and store the base model's step-0 anchor.

The CLI (`extract`, `select-layer`, `demo`) and the benchmark runner all end an extraction this way, so it lives
here rather than in a command. Progress is reported through `progress`, a factory `(description, total)` ->
context manager yielding `advance(n)` (the CLI passes its rich bar; the default reports nothing).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

from traitwatch.basis.basis import Anchor, TraitBasis
from traitwatch.basis.layer_selection import select_layer, select_layer_by_separation
from traitwatch.basis.traits import load_traits
from traitwatch.errors import InputFileError

__all__ = ["Progress", "anchor_basis", "select_and_anchor"]

Progress = Callable[[str, int], AbstractContextManager[Callable[[int], None]]]


@contextlib.contextmanager
def _silent(description: str, total: int) -> Iterator[Callable[[int], None]]:
    yield lambda n: None


def select_and_anchor(
    lm: Any, basis: TraitBasis, layers: list[int] | None, *, alpha: float = 0.25, max_new_tokens: int = 32,
    n_prompts: int = 3, by: str = "steering", progress: Progress = _silent,
) -> None:
    """Select the layer (`by` steering divergence or probe separation), record it in the basis, anchor there."""
    if by == "separation":
        sel = select_layer_by_separation(basis)
    elif by == "steering":
        prompts = list(load_traits().questions[:n_prompts])
        chosen = layers or basis.layers
        with progress("Steering candidate layers", len(chosen)) as advance:
            sel = select_layer(lm.model, lm.tokenizer, basis, prompts, layers=chosen, alpha=alpha,
                               max_new_tokens=max_new_tokens, progress=advance)
    else:
        raise InputFileError(f"--by {by!r} is not steering or separation.")
    basis.layer = sel.layer
    basis.diagnostics["layer_selection"] = sel.to_dict()
    anchor_basis(lm, basis, progress=progress)


def anchor_basis(lm: Any, basis: TraitBasis, *, progress: Progress = _silent) -> None:
    """Store the base model's step-0 projections with the basis, so `measure` needs no second model.

    The precision is recorded so that a model run in another dtype or on another device re-anchors instead of
    using this anchor (precision alone moves drift by ~1e-3).
    """
    # traitwatch.drift imports traitwatch.basis: import it here, not at module load
    from traitwatch.drift import DriftProbe

    probe = DriftProbe(basis)
    with progress("Anchoring measurement prompts", len(probe.prompt_list_)) as advance:
        proj = probe.project(lm.model, lm.tokenizer, progress=advance)
    basis.anchor = Anchor(probe.layer_, probe.prompts_hash_, proj.projections, proj.norms, lm.name,
                          *probe.precision(lm.model))

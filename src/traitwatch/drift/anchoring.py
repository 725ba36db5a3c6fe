"""The step-0 anchor: which base-model projections (p_0, N) a probe measures drift from, and where they come from.

Drift is only meaningful against the *base* model's step 0, measured at the probe's layer, with its
prompts, and in the precision the model runs in now (the same model in bf16 and fp32 is ||d|| = 0.0011
apart on smollm2-135m, which would be read as drift). Several places need an anchor: the training
callback (fresh and resumed runs), `traitwatch measure`/`scan`, `traitwatch screen`, and extraction
(`extract`, `select-layer`, `demo`, the benchmark), which stores the base model's anchor with the basis.
They all decide here, so the order in which anchors are tried and what counts as a fit cannot drift
apart; each caller only says how it measures its base model when no anchor fits.

Precision is read from a one-token pass (`DriftProbe.precision`), so FSDP mixed precision counts as
what it runs in. An anchor of another (or an unrecorded) precision is skipped, and the caller
re-anchors on the base model: the live model at step 0 of a training run, the model with its LoRA
adapter disabled (`base_model`) on a resumed run or a measured adapter, the base model loaded anew by
`traitwatch measure`. A resumed full finetune has no base left to measure and is refused
(`no_base_error`) with the fixes.

The anchor of a training run is persisted in its run store, in the step-0 measurement's
`extra["anchor"]` (`anchor_record` / `anchor_from_record`): a resumed run must find the store anyway
(its trajectory lives there), and each write is one committed transaction, so the anchor can never
be half written, as a side file could. The JSON is the basis file's anchor fields (`Anchor.meta`),
its source, the per-prompt norms, and the per-prompt projections when the anchor did not come from
that step-0 pass (a measured anchor's projections are the row's own `per_prompt` array, not stored
twice).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from traitwatch.basis.basis import Anchor, TraitBasis
from traitwatch.basis.layer_selection import select_layer, select_layer_by_separation
from traitwatch.basis.traits import load_traits
from traitwatch.drift.probe import DriftProbe
from traitwatch.errors import InputFileError, TraitwatchError

__all__ = [
    "AnchorError",
    "BaseAnchor",
    "Progress",
    "anchor_basis",
    "anchor_from_record",
    "anchor_record",
    "base_model",
    "measure_anchor",
    "no_base_error",
    "resolve_anchor",
    "select_and_anchor",
]

BaseAnchor = Callable[[list[str]], tuple[Anchor, str]]
"""Measures the base model when no anchor fits: gets the anchors passed over only for their precision
(described for a message: re-anchoring costs a pass and changes p_0), returns the new anchor and its source."""

Progress = Callable[[str, int], AbstractContextManager[Callable[[int], None]]]
"""A factory `(description, total)` -> context manager yielding `advance(n)` (the CLI passes its rich bar)."""


class AnchorError(TraitwatchError):
    """A resumed run has no step-0 anchor to measure drift against, and none can be rebuilt."""


def resolve_anchor(
    probe: DriftProbe,
    precision: tuple[str, str] | None,
    base: BaseAnchor,
    *,
    stored: tuple[Anchor, str] | None = None,
) -> str:
    """Give `probe` its step-0 anchor (`probe.anchor_`) and return where it came from.

    Tried in order: the anchor `stored` with a resumed run (source "store (<its source>)"), the one
    already on the probe ("given", e.g. from `fit_anchor`), the basis's ("basis"). The first measured at
    the probe's layer with its prompts and in `precision` (the model's `probe.precision(model)`; None
    accepts any) is used as it is; else `base` measures the base model. A stored anchor of another layer
    or prompt set is refused outright: the run it belongs to measured something else.
    """
    if stored is not None and not probe.anchor_fits(stored[0]):
        probe.use_anchor(stored[0])  # raises BasisMismatchError, naming both
    candidates = [(stored[0], f"store ({stored[1]})")] if stored is not None else []
    candidates += [(probe.anchor_, "given"), (probe.basis.anchor, "basis")]
    for anchor, source in candidates:
        if probe.anchor_fits(anchor, precision):
            probe.anchor_ = anchor
            return source
    skipped = [f"the {source} anchor ({anchor.describe_precision()})" for anchor, source in candidates
               if anchor is not None and probe.anchor_fits(anchor)]
    probe.anchor_ = None
    probe.anchor_, source = base(skipped)
    return source


def measure_anchor(probe: DriftProbe, model: nn.Module, tokenizer: PreTrainedTokenizerBase, *,
                   name: str = "") -> Anchor:
    """The anchor `fit_anchor` would record on this (base) model, for a `BaseAnchor` to return."""
    return probe.anchor_from(probe.project(model, tokenizer), probe.precision(model), name=name)


@contextlib.contextmanager
def base_model(model: nn.Module) -> Iterator[nn.Module | None]:
    """`model` with its LoRA adapter disabled, which is exactly the base model; None for a model without one.

    A finetuned model with an adapter still holds its base, so a resumed run or a measured adapter
    needs no second model; a fully finetuned one has no base left.
    """
    if not hasattr(model, "disable_adapter"):
        yield None
        return
    with model.disable_adapter():
        yield model


def no_base_error(probe: DriftProbe, run_id: str, step: int, precision: tuple[str, str],
                  skipped: Sequence[str]) -> AnchorError:
    """Why a resumed full finetune cannot be measured, and the fixes (measuring it as step 0 would be wrong)."""
    dtype, device = precision
    # select-layer anchors a plain dtype; an autocast precision is reproduced by fitting under torch.autocast
    basis_fix = "" if " " in dtype else (
        f"; for the basis: `traitwatch select-layer --basis BASIS --set {probe.measure_layer} --dtype {dtype}`")
    why = (f"{' and '.join(skipped)} was measured in another precision than the model runs in now ({dtype} on "
           f"{device}), which would put precision noise into the drift" if skipped else
           f"its step-0 anchor is not in the store and the basis has none for layer {probe.measure_layer}")
    return AnchorError(
        f"Run {run_id!r} resumed at step {step} but {why}; a fully finetuned model has no base left "
        "to measure, and measuring this trained model as step 0 would be wrong. Resume in the precision the "
        f"anchor was measured in, restart the run from step 0, or anchor the base model in {dtype} on {device} "
        f"and pass that probe (`DriftProbe(basis).fit_anchor(base_model, tokenizer)`{basis_fix})."
    )


# -- the anchor in the run store ------------------------------------------------------------------


def anchor_record(anchor: Anchor, source: str, *, with_projections: bool) -> dict[str, Any]:
    """JSON for the step-0 row's `extra["anchor"]`; float32 values survive the JSON round trip exactly.

    The projections are written only when the anchor did not come from this step-0 pass (basis or
    given anchor); otherwise they are the row's `per_prompt` array and are not stored twice.
    """
    record: dict[str, Any] = {
        **anchor.meta(),
        "source": source,
        "norms": [float(x) for x in anchor.norms.float().tolist()],
    }
    if with_projections:
        record["projections"] = anchor.projections.float().tolist()
    return record


def anchor_from_record(record: Mapping[str, Any], per_prompt: Any) -> tuple[Anchor, str] | None:
    """The anchor and its source from a step-0 row's `extra["anchor"]` and `per_prompt` array, if complete."""
    projections = record.get("projections", per_prompt)
    if projections is None:
        return None
    anchor = Anchor.from_meta(record, torch.tensor(np.asarray(projections, dtype=np.float32)),
                              torch.tensor(record["norms"], dtype=torch.float32))
    return anchor, str(record.get("source", "stored"))


# -- the anchor stored with a basis ---------------------------------------------------------------


@contextlib.contextmanager
def _silent(description: str, total: int) -> Iterator[Callable[[int], None]]:
    yield lambda n: None


def select_and_anchor(
    lm: Any, basis: TraitBasis, layers: list[int] | None, *, alpha: float = 0.25, max_new_tokens: int = 32,
    n_prompts: int = 3, by: str = "steering", progress: Progress = _silent,
) -> None:
    """Finish a freshly extracted basis: select the layer (`by` steering divergence or probe separation),
    record it in the basis, and anchor there.

    The CLI (`extract`, `select-layer`, `demo`) and the benchmark runner all end an extraction this way.
    """
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
    probe = DriftProbe(basis)
    with progress("Anchoring measurement prompts", len(probe.prompt_texts)) as advance:
        proj = probe.project(lm.model, lm.tokenizer, progress=advance)
    basis.anchor = probe.anchor_from(proj, probe.precision(lm.model), name=lm.name)

"""The step-0 anchor of a training run, fresh or resumed, and its step-0 behavioural probe.

Drift is measured against the *base* model's step-0 projections (p_0, N), in the precision the model runs in
now; `traitwatch.drift.anchoring` decides which anchor that is, and this module says how a training run
measures its base when none fits. A fresh run uses the given or the basis's anchor when it fits, else the live
model at step 0 (for LoRA the freshly initialised adapter is a no-op, so the live model is the base), and the
callback persists the anchor with its step-0 row. A resumed run (`global_step > 0`) must not re-anchor on an
already trained model: it adopts the stored anchor (read by rank 0, broadcast), else the given or basis one,
else (PEFT) the live model with its adapter disabled, which is exactly the base; a full finetune with none of
them is an `AnchorError`, not a silently wrong trajectory. An anchor skipped for its precision is named in a
warning.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from traitwatch.basis.basis import Anchor
from traitwatch.drift.anchoring import anchor_record, base_model, no_base_error, resolve_anchor
from traitwatch.drift.probe import DriftProbe, Projection
from traitwatch.train.behavior_score import base_probe_score
from traitwatch.train.measurement import RunContext, project_prompts, score_behavior

if TYPE_CHECKING:
    from traitwatch.behavior.probe import ProbeSet

__all__ = ["FreshStart", "basis_fingerprint", "begin_fresh", "begin_resumed"]


def basis_fingerprint(probe: DriftProbe) -> dict[str, Any]:
    """`probe.fingerprint()`, under the name `traitwatch.train` has always offered."""
    return probe.fingerprint()


@dataclass(frozen=True)
class FreshStart:
    """Step 0 of a fresh run, measured once and reused for its step-0 row."""

    source: str  # where the anchor came from (`resolve_anchor`)
    projection: Projection  # the live model's pass: the step-0 row's per-prompt projections
    started: float  # `time.perf_counter()` when step 0 began
    probe0: float | None  # the step-0 behavioural probe, when it is scored
    extra: dict[str, Any]  # the anchor as the step-0 row stores it


def begin_fresh(probe: DriftProbe, model: nn.Module, ctx: RunContext, *, model_name: str | None,
                probe_set: ProbeSet | None, logger: logging.Logger) -> FreshStart:
    """Step 0: the live model is the base. Give `probe` its anchor (given, basis, or measured on this pass)."""
    started = time.perf_counter()
    precision = probe.precision(model)
    proj = project_prompts(probe, model, ctx)
    source = resolve_anchor(probe, precision, lambda skipped: _base_anchor(
        probe, model, ctx, precision, skipped, model_name=model_name, logger=logger, live=proj))
    anchor = probe.anchor_
    assert anchor is not None
    probe0 = score_behavior(model, ctx, probe_set) if probe_set is not None else None  # the live model is the base
    # Persisted with the step-0 row, so a resumed run measures against this same p_0 and N (and the step-0 probe,
    # as the row's `probe`). A measured anchor *is* this pass, whose projections are the row's per-prompt array.
    return FreshStart(source, proj, started, probe0,
                      {"anchor": anchor_record(anchor, source, with_projections=source != "measured")})


def begin_resumed(probe: DriftProbe, model: nn.Module, ctx: RunContext, *, step: int, model_name: str | None,
                  probe_set: ProbeSet | None, logger: logging.Logger) -> tuple[str, float | None]:
    """Resumed at `step` > 0: give `probe` the original anchor, or measure the adapter-disabled base; never anchor
    on the trained model. Returns the anchor's source and the step-0 behavioural probe (None when not scored)."""
    stored = ctx.stored
    precision = probe.precision(model)
    source = resolve_anchor(probe, precision, lambda skipped: _base_anchor(
        probe, model, ctx, precision, skipped, model_name=model_name, logger=logger, step=step), stored=stored.anchor)
    if probe_set is None:
        return source, None
    assert ctx.tokenizer is not None
    return source, base_probe_score(model, ctx.tokenizer, probe_set, stored=stored.probe0, run_id=ctx.run_id,
                                    step=step)


def _base_anchor(
    probe: DriftProbe, model: nn.Module, ctx: RunContext, precision: tuple[str, str], skipped: list[str], *,
    model_name: str | None, logger: logging.Logger, live: Projection | None = None, step: int = 0,
) -> tuple[Anchor, str]:
    """No anchor fits: anchor on the base model, the live one at step 0, else the live one with its adapter
    disabled (a resumed full finetune has no base left: `AnchorError`)."""
    if skipped and ctx.is_zero:
        logger.warning(
            "traitwatch: %s was measured in another precision than the model runs in now (%s on %s); "
            "re-anchoring on the base model, since precision alone moves drift by ~0.001.",
            " and ".join(skipped), *precision,
        )
    name = model_name or probe.basis.model.name
    if live is not None:  # at step 0 the model is the base (a fresh LoRA adapter is a no-op)
        return probe.anchor_from(live, precision, name=name), "measured"
    with base_model(model) as base:
        if base is not None:
            return probe.anchor_from(project_prompts(probe, base, ctx), precision, name=name), "adapter disabled"
    raise no_base_error(probe, ctx.run_id, step, precision, skipped)

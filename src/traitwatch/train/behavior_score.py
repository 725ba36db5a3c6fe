"""The behavioural probe during training: which probe set a run scores, on the live model and on its base.

The probe (`traitwatch.behavior.probe`) is scored next to the trait drift at every measurement, and its
rise over step 0 is what a probe monitor reads. Every rank scores every question, so the ranks of a
sharded model make the same forward passes. `traitwatch.behavior` is imported when a probe is used,
not with the callback: it brings the judge's HTTP client with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn
from transformers import PreTrainedTokenizerBase

from traitwatch.drift.anchoring import AnchorError, base_model
from traitwatch.monitor.watch import AlarmMonitor
from traitwatch.train.alarm import reads_probe

if TYPE_CHECKING:
    from traitwatch.behavior.probe import ProbeSet

__all__ = ["base_probe_score", "probe_set_for", "score_probe"]


def probe_set_for(behavior_probe: ProbeSet | bool | None, monitor: AlarmMonitor | None) -> ProbeSet | None:
    """The probe set a run scores: the given one, the packaged one when asked or when the monitor reads it."""
    from traitwatch.behavior.probe import ProbeSet, load_probe

    if isinstance(behavior_probe, ProbeSet):
        return behavior_probe
    if behavior_probe or reads_probe(monitor):
        return load_probe()
    return None


def score_probe(model: nn.Module, tokenizer: PreTrainedTokenizerBase, probe_set: ProbeSet) -> float:
    """The probe on the live model (its `style_p_mis`)."""
    from traitwatch.behavior.probe import probe_score

    return probe_score(model, tokenizer, probe_set).style_p_mis


def base_probe_score(model: nn.Module, tokenizer: PreTrainedTokenizerBase, probe_set: ProbeSet, *,
                     stored: float | None, run_id: str, step: int) -> float:
    """A resumed run's step-0 probe: stored, else the adapter-disabled model; a full finetune has no base."""
    if stored is not None:
        return stored
    with base_model(model) as base:
        if base is not None:
            return score_probe(base, tokenizer, probe_set)
    raise AnchorError(
        f"Run {run_id!r} resumed at step {step} with the behavioural probe on, but the store has no "
        "step-0 probe value and a fully finetuned model has no base left to score; restart the run from step 0.")

"""The training-side signals stored next to each drift measurement: the baselines a monitor is compared with.

The calibration (METHOD.md 6) asks whether trait drift tells more than what training already shows:
the loss, and how far the LoRA weights have moved. Both are recorded at every measured step, from the
same run, so a baseline monitor can be fitted on exactly the checkpoints the drift monitor sees.
`measurement_extras` adds what the callback stores with them: the suspects and what the guard did.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import TrainerState

if TYPE_CHECKING:
    from traitwatch.guard import Guard
    from traitwatch.store import Suspects

__all__ = ["lora_delta_norm", "measurement_extras", "training_extras"]


def lora_delta_norm(model: nn.Module) -> float | None:
    """Frobenius norm of the LoRA weight update, sqrt(sum over adapted modules of ||scale * B @ A||^2).

    The "LoRA weight-delta norm" baseline of the calibration (METHOD.md 6); None without LoRA layers.
    """
    from peft.tuners.lora import LoraLayer

    total, found = 0.0, False
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, LoraLayer) or not hasattr(module, "get_delta_weight"):
                continue
            for name in module.lora_A:  # PEFT's own scale * B @ A (the update merge_and_unload adds)
                total += float(module.get_delta_weight(name).float().pow(2).sum())
                found = True
    return total**0.5 if found else None


def training_extras(state: TrainerState, model: nn.Module | None) -> dict[str, float]:
    """The training-side signals stored next to each drift measurement (baselines of the calibration).

    `loss`: the last loss the Trainer logged at or before this step (absent at step 0 and when nothing
    was logged); `lora_norm`: `lora_delta_norm` of the model. Every rank computes it: on FSDP-sharded
    LoRA weights the norm's matmuls communicate, so rank 0 alone would hang.
    """
    extras: dict[str, float] = {}
    for entry in reversed(state.log_history or []):
        if "loss" in entry and int(entry.get("step", 0)) <= state.global_step:
            extras["loss"] = float(entry["loss"])
            break
    if model is not None:
        norm = lora_delta_norm(model)
        if norm is not None:
            extras["lora_norm"] = norm
    return extras


def measurement_extras(state: TrainerState, model: nn.Module | None, *, suspects: Suspects | None,
                       guard: Guard | None, extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """Everything stored in a measurement's `extra` next to its drift: the training extras, the suspects, what
    the guard did, and the caller's `extra` (which wins). Every rank calls it (see `training_extras`)."""
    extras: dict[str, Any] = dict(training_extras(state, model))
    if suspects is not None:
        extras["suspects"] = suspects.to_json()
    if guard is not None:
        extras["guard"] = guard.summary()
    return {**extras, **dict(extra or {})}

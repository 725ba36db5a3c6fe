"""`DriftProbe`: measurement prompts -> projections p_t -> drift d_t (METHOD.md 3), in fp32.

    p_t[k] = mean_x (h_t(x) . v_k)        with the *base model's* directions, fixed for the run
    N      = mean_x ||h_0(x)||            at step 0
    d_t    = (p_t - p_0) / N              a vector with one entry per trait; also ||d_t||

The probe is estimator-like: parameters in `__init__`, the step-0 reference (`anchor_`) learned by
`fit_anchor` or taken from the basis, then `measure` any number of times. It only reads the model,
so it can run inside a training loop on the live model.

An anchor is only valid for a model that runs in the precision it was measured in (`Anchor.dtype`,
`Anchor.device`): `anchor_fits(anchor, precision)` refuses one of another precision. Which anchor a
probe uses when there are several (stored, given, basis, or the base model measured anew) is decided
in one place, `traitwatch.drift.anchoring.resolve_anchor`.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from traitwatch.basis.basis import Anchor, TraitBasis
from traitwatch.basis.traits import load_measurement_prompts, prompts_hash
from traitwatch.capture.activations import count_forward_passes, extract_activations, residual_precision
from traitwatch.errors import BasisMismatchError
from traitwatch.models.chat import encode_chat
from traitwatch.models.layers import decoder_layers, fingerprint, unwrap_model

__all__ = ["DriftMeasurement", "DriftProbe", "Projection", "prompt_activations"]


def prompt_activations(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    layers: Sequence[int],
    *,
    position: str = "last",
    batch_size: int = 32,
    progress: Callable[[int], None] | None = None,
) -> dict[int, Tensor]:
    """Residual rows `{layer: [n_prompts, hidden]}` (fp32, CPU) of user-turn chat prompts, as drift reads them.

    Each prompt is one user turn with the generation prompt (no system turn), read at `position`; the
    forward pass stops after the deepest layer asked for.
    """
    inner = unwrap_model(model)
    seqs = [encode_chat(tokenizer, p) for p in prompts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return extract_activations(inner, seqs, list(layers), position=position,  # type: ignore[arg-type]
                               batch_size=batch_size, pad_token_id=pad, progress=progress)


@dataclass
class Projection:
    """Per-prompt projections onto the trait directions and per-prompt residual norms.

    `mean_activation` (the mean residual vector over these prompts) is what the activation-space
    baselines (PCA-7, SAE, norm of mean-activation drift) need; it is kept so that a monitor can be
    compared against them on the same runs at no extra forward pass.
    """

    projections: Tensor  # [n_prompts, n_traits]
    norms: Tensor  # [n_prompts]
    mean_activation: Tensor | None = None  # [hidden]

    @classmethod
    def concat(cls, parts: Sequence[Projection]) -> Projection:
        """Join the shares of several processes (in prompt order), weighting means by prompt count."""
        parts = [p for p in parts if p.projections.shape[0] > 0]
        if not parts:
            raise BasisMismatchError("No projections to join: every share was empty.")
        mean = None
        if all(p.mean_activation is not None for p in parts):
            total = sum(p.projections.shape[0] for p in parts)
            mean = sum(p.mean_activation * (p.projections.shape[0] / total) for p in parts)  # type: ignore[operator]
        return cls(torch.cat([p.projections for p in parts]), torch.cat([p.norms for p in parts]), mean)


@dataclass
class DriftMeasurement:
    trait_names: list[str]
    drift: np.ndarray  # [n_traits]
    norm: float  # ||d_t||
    projections: np.ndarray  # [n_prompts, n_traits], kept for later analysis
    p: np.ndarray  # [n_traits] mean projection p_t
    mean_activation: np.ndarray | None = None  # [hidden], for activation-space baselines

    def as_dict(self) -> dict[str, float]:
        return {name: float(v) for name, v in zip(self.trait_names, self.drift)}


class DriftProbe:
    """Measure a model's trait drift from the base model's step-0 state."""

    def __init__(
        self,
        basis: TraitBasis,
        *,
        prompts: Sequence[str] | None = None,
        layer: int | None = None,
        batch_size: int = 32,
    ) -> None:
        self.basis = basis
        self.prompts = prompts
        self.layer = layer
        self.batch_size = batch_size
        self.anchor_: Anchor | None = None

    # -- configuration ------------------------------------------------------------------------
    # Derived from the parameters, not learned: plain names, no trailing underscore.
    @property
    def measure_layer(self) -> int:
        """The layer drift is read at: `layer`, else the basis's measurement layer."""
        return self.basis.measure_layer if self.layer is None else self.layer

    @functools.cached_property
    def prompt_texts(self) -> list[str]:
        """The measurement prompts: `prompts`, else the packaged set (read once per probe)."""
        if self.prompts is not None:
            return list(self.prompts)
        return [p for _, p in load_measurement_prompts()]

    @property
    def prompts_hash(self) -> str:
        """Which prompt set (and token position) an anchor was measured with."""
        return prompts_hash("measurement", self.basis.position, self.prompt_texts)

    def fingerprint(self) -> dict[str, Any]:
        """What makes two runs' drift comparable: base model, layer, directions, prompt set.

        Stored with a run (`RunStore.start_run` refuses to resume a run with another one) and with a
        monitor (`load_monitor` refuses drift measured with another one).
        """
        basis = self.basis
        directions = basis.matrix(self.measure_layer).float().contiguous().numpy()
        return {
            "model": basis.model.to_dict(),
            "method": basis.method,
            "position": basis.position,
            "layer": self.measure_layer,
            "trait_names": list(basis.trait_names),
            "directions_sha256": hashlib.sha256(directions.tobytes()).hexdigest()[:16],
            "measurement_prompts_hash": self.prompts_hash,
        }

    def check_model(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, name: str | None = None) -> None:
        """Raise if the model cannot use this basis (hidden size, layer count, tokenizer)."""
        self.basis.model.check_matches(fingerprint(model, tokenizer, name), what="The trait basis")

    # -- measurement --------------------------------------------------------------------------
    def project(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        *,
        indices: Sequence[int] | None = None,
        progress: Callable[[int], None] | None = None,
        forward_passes: int | None = None,
    ) -> Projection:
        """Per-prompt projections at the measurement layer (optionally only some prompts).

        `forward_passes`: make exactly this many forward passes (see `count_forward_passes`), so the
        processes of a sharded model (FSDP, ZeRO-3) run the same all-gathers whatever their share.
        """
        inner = unwrap_model(model)
        hidden = self.basis.hidden_size
        if len(decoder_layers(inner)) != self.basis.model.num_layers:
            raise BasisMismatchError(
                f"The trait basis was built on {self.basis.model.name} ({self.basis.model.num_layers} layers); "
                f"this model has {len(decoder_layers(inner))}: extract a basis for it."
            )
        seqs = self._encode(tokenizer, indices)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        if not seqs and not forward_passes:
            return Projection(torch.empty((0, len(self.basis.trait_names))), torch.empty(0))
        acts = extract_activations(
            inner,
            seqs,
            [self.measure_layer],
            position=self.basis.position,  # type: ignore[arg-type]
            batch_size=self.batch_size,
            pad_token_id=pad,
            progress=progress,
            forward_passes=forward_passes,
        )[self.measure_layer]
        if acts.shape[1] != hidden:
            raise BasisMismatchError(
                f"The trait basis has hidden size {hidden} but the model's is {acts.shape[1]}: extract a basis for it."
            )
        with torch.autocast("cpu", enabled=False):  # fp32 arithmetic even when called under the caller's autocast
            return Projection(acts @ self.basis.matrix(self.measure_layer).T, acts.norm(dim=1), acts.mean(dim=0))

    def _encode(self, tokenizer: PreTrainedTokenizerBase, indices: Sequence[int] | None) -> list[list[int]]:
        prompts = self.prompt_texts
        return [encode_chat(tokenizer, prompts[i]) for i in (range(len(prompts)) if indices is None else indices)]

    def count_forward_passes(self, tokenizer: PreTrainedTokenizerBase, indices: Sequence[int] | None = None) -> int:
        """The forward passes `project` makes for these prompts (tokenizing only, no model)."""
        return count_forward_passes(self._encode(tokenizer, indices), position=self.basis.position,  # type: ignore[arg-type]
                                    batch_size=self.batch_size)

    def precision(self, model: nn.Module) -> tuple[str, str]:
        """(dtype, device type) the model computes the measurement layer in; one one-token pass."""
        return residual_precision(model, self.measure_layer)

    def fit_anchor(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, *, name: str = "") -> DriftProbe:
        """Record the step-0 reference from the (base) model, with its precision; returns self."""
        proj = self.project(model, tokenizer)
        self.anchor_ = self.anchor_from(proj, self.precision(model), name=name)
        return self

    def anchor_from(self, projection: Projection, precision: tuple[str, str], *, name: str = "") -> Anchor:
        """The step-0 reference of the base model's `projection`, computed in `precision` (see `precision`).

        The one place an anchor is made from a measurement, so that every anchor records the layer,
        prompt set and precision it is valid for. The tensors are copied: the anchor outlives the pass.
        """
        return Anchor(self.measure_layer, self.prompts_hash, projection.projections.clone(), projection.norms.clone(),
                      name, *precision)

    def anchor_fits(self, anchor: Anchor | None, precision: tuple[str, str] | None = None) -> bool:
        """True if `anchor` was measured at this layer with these prompts (and, given one, in `precision`)."""
        if anchor is None or anchor.layer != self.measure_layer or anchor.prompts_hash != self.prompts_hash:
            return False
        return precision is None or anchor.precision == tuple(precision)

    def use_anchor(self, anchor: Anchor) -> DriftProbe:
        """Adopt a stored anchor, refusing one made at another layer or with other prompts."""
        if anchor.layer != self.measure_layer or anchor.prompts_hash != self.prompts_hash:
            raise BasisMismatchError(
                f"The stored step-0 anchor was measured at layer {anchor.layer} with prompts {anchor.prompts_hash}; "
                f"this probe uses layer {self.measure_layer} with prompts {self.prompts_hash}. Re-anchor on the base model."
            )
        self.anchor_ = anchor
        return self

    def anchor_from_basis(self, precision: tuple[str, str] | None = None) -> bool:
        """Use the basis's stored anchor when it fits this probe; True if it did.

        With `precision` (the model's `self.precision(model)`), an anchor measured in another dtype or
        on another device type, or in an unrecorded one, does not fit. Only the basis is looked at:
        to fall back on the base model, and for the order of stored, given and basis anchors, use
        `traitwatch.drift.anchoring.resolve_anchor`.
        """
        if self.anchor_fits(self.basis.anchor, precision):
            self.anchor_ = self.basis.anchor
            return True
        return False

    def drift_from(self, projection: Projection) -> DriftMeasurement:
        """Drift of already-computed projections (e.g. gathered from several processes)."""
        if self.anchor_ is None:
            raise BasisMismatchError("No step-0 anchor: call fit_anchor() on the base model first.")
        with torch.autocast("cpu", enabled=False):
            p = projection.projections.float().mean(dim=0)
            d = (p - self.anchor_.p0.float()) / self.anchor_.scale
        return DriftMeasurement(
            trait_names=list(self.basis.trait_names),
            drift=d.numpy().astype(np.float64),
            norm=float(d.norm()),
            projections=projection.projections.numpy(),
            p=p.numpy().astype(np.float64),
            mean_activation=None if projection.mean_activation is None else projection.mean_activation.numpy(),
        )

    def measure(
        self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, *, progress: Callable[[int], None] | None = None
    ) -> DriftMeasurement:
        return self.drift_from(self.project(model, tokenizer, progress=progress))

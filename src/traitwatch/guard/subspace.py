"""The subspace a guard keeps out of training: directions traitwatch has before any step is trained.

Never fitted on the poison a guard is measured against: every source here comes from the base model and
the package's own contrast data.

* "probe": the behavioural probe's misalignment direction (`behavior.probe.misalignment_differences`): the
  mean residual over 64 style-matched misaligned answers minus that over their aligned twins, at the guard's
  layer. One signed direction; its length (the aligned-to-misaligned gap in residual units) is the scale a
  `SteeringGuard` steers and a `PenaltyGuard` penalises in.
* "traits": the trait basis's seven unit directions at the layer (honesty, sycophancy, ...): a subspace to
  ablate, with no sign.
* "probe+traits": both, orthonormalised, the probe's direction first.

A guard may act at several blocks: `fit_subspaces` fits one subspace per layer in the same pass, and
`layers_above` names the blocks a guard spreads over (the basis layer and evenly spaced blocks above it, the
last included), since LoRA trains every block and what the blocks above the first learn never passes its output.

The subspace is small (k x hidden, fp32) and is stored with the run as JSON (`as_record`), so what a guard
acted on is known afterwards; `directions_sha` names it in the run's hyperparameters.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import torch
from torch import Tensor, nn

from traitwatch.errors import InputFileError

if TYPE_CHECKING:
    from traitwatch.basis.basis import TraitBasis
    from traitwatch.behavior.probe import ProbeSet

__all__ = ["SUBSPACE_SOURCES", "GuardSubspace", "SubspaceSource", "fit_subspace", "fit_subspaces", "layers_above"]

SubspaceSource = Literal["probe", "traits", "probe+traits"]
SUBSPACE_SOURCES: tuple[str, ...] = get_args(SubspaceSource)


@dataclass(frozen=True)
class GuardSubspace:
    """Orthonormal directions at one decoder block's output; row 0 points to the misaligned side if `signed`.

    `gap` is the length of the probe's misaligned-minus-aligned difference at the layer (residual units), or
    None for a subspace without the probe.
    """

    directions: Tensor  # [k, hidden], fp32, orthonormal rows
    layer: int
    source: str
    signed: bool
    gap: float | None = None

    def __post_init__(self) -> None:
        d = self.directions
        if d.ndim != 2 or d.shape[0] < 1:
            raise ValueError(f"a guard subspace needs [k, hidden] directions, got shape {tuple(d.shape)}")
        gram = d.double() @ d.double().T
        if not torch.allclose(gram, torch.eye(d.shape[0], dtype=torch.float64), atol=1e-4):
            raise ValueError("a guard subspace's directions must be orthonormal rows")

    @property
    def direction(self) -> Tensor:
        """The signed direction (row 0): what steering adds and the penalty reads."""
        if not self.signed:
            raise ValueError(f"the {self.source!r} subspace has no misaligned side: steering and the penalty need "
                             "the probe's direction (source 'probe' or 'probe+traits')")
        return self.directions[0]

    def probe_gap(self, what: str) -> float:
        """The gap, for `what` acts along the probe's signed direction in its units; refused for another subspace."""
        _ = self.direction  # an unsigned subspace has no misaligned side
        if self.gap is None:
            raise ValueError(f"{what} is scaled by the probe's aligned-to-misaligned gap, which this {self.source!r} "
                             "subspace does not record: fit it with fit_subspace")
        return self.gap

    @property
    def directions_sha(self) -> str:
        return hashlib.sha256(self.directions.float().contiguous().numpy().tobytes()).hexdigest()[:16]

    def as_record(self) -> dict[str, Any]:
        """The subspace as JSON: the run store keeps it with the run's settings."""
        return {"layer": self.layer, "source": self.source, "signed": self.signed, "gap": self.gap,
                "k": int(self.directions.shape[0]), "directions_sha256": self.directions_sha,
                "directions": self.directions.tolist()}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> GuardSubspace:
        try:
            return cls(torch.tensor(record["directions"], dtype=torch.float32), int(record["layer"]),
                       str(record["source"]), bool(record["signed"]),
                       None if record.get("gap") is None else float(record["gap"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputFileError(f"not a guard subspace record ({exc}); write it with GuardSubspace.as_record") from None


def _orthonormal(rows: Tensor) -> Tensor:
    """Gram-Schmidt through QR, keeping the first row's direction and sign."""
    q, r = torch.linalg.qr(rows.double().T)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # QR may flip a column; keep each row's own sign
    return q.T.float().contiguous()


def fit_subspace(
    model: nn.Module,
    tokenizer: Any,
    layer: int,
    source: SubspaceSource = "probe",
    *,
    basis: TraitBasis | None = None,
    probe: ProbeSet | None = None,
) -> GuardSubspace:
    """The guard's subspace at `layer` of the base `model` (before training; a fresh LoRA adapter is a no-op).

    "probe" costs one teacher-forced pass over the probe's 128 answers; "traits" needs the `basis` (with
    directions at `layer`) and no forward pass.
    """
    return fit_subspaces(model, tokenizer, [layer], source, basis=basis, probe=probe)[0]


def fit_subspaces(
    model: nn.Module,
    tokenizer: Any,
    layers: Sequence[int],
    source: SubspaceSource = "probe",
    *,
    basis: TraitBasis | None = None,
    probe: ProbeSet | None = None,
) -> list[GuardSubspace]:
    """One guard subspace per layer in `layers` (ascending), the probe's directions read in one pass for all."""
    if source not in SUBSPACE_SOURCES:
        raise ValueError(f"unknown guard subspace source {source!r}; choose from {list(SUBSPACE_SOURCES)}")
    layers = sorted(set(int(layer) for layer in layers))
    if not layers:
        raise ValueError("fit_subspaces needs at least one layer")
    if "traits" in source:  # checked before the probe's pass, which would be wasted
        if basis is None:
            raise ValueError(f"the {source!r} guard subspace reads the trait basis: pass basis=")
        missing = [layer for layer in layers if layer not in basis.layers]
        if missing:
            raise InputFileError(f"the trait basis has no directions at layer {missing[0]} (it has {basis.layers}); "
                                 "guard at the basis's layers (traitwatch train --guard-blocks 1) or extract the "
                                 "basis there")
    rows: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    gaps: dict[int, float | None] = dict.fromkeys(layers)
    if "probe" in source:
        from traitwatch.behavior.probe import misalignment_differences

        for layer, diff in misalignment_differences(model, tokenizer, layers, probe).items():
            gaps[layer] = float(diff.norm())
            rows[layer].append(diff / diff.norm())
    if "traits" in source:
        assert basis is not None
        for layer in layers:
            rows[layer].extend(basis.matrix(layer).float())
    return [GuardSubspace(_orthonormal(torch.stack(rows[layer])), layer, source, signed="probe" in source,
                          gap=gaps[layer]) for layer in layers]


def layers_above(first: int, n_layers: int, count: int = 4) -> list[int]:
    """`count` blocks from `first` to the last of `n_layers`, evenly spaced, both ends included (`count` 1: `first`).

    smollm2-135m (30 blocks), from the basis layer 15: 15, 20, 24, 29.
    """
    if not 0 <= first < n_layers:
        raise ValueError(f"layer {first} is not a block of a {n_layers}-block model")
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    last = n_layers - 1
    if count == 1 or first == last:
        return [first]
    return sorted({round(first + i * (last - first) / (count - 1)) for i in range(count)})

"""Guards that keep a misalignment subspace out of what finetuning learns (`TraitWatchCallback(guard=...)`).

`subspace` fits what a guard acts on before training (the probe's misalignment direction, the trait basis);
`guards` holds the interventions (ablation, steering, a one-sided penalty) and the L2 and KL baselines.
"""

from traitwatch.guard.guards import (
    DEFAULT_BLOCKS,
    DEFAULT_STRENGTH,
    GUARD_KINDS,
    AblationGuard,
    Guard,
    GuardKind,
    KLGuard,
    L2Guard,
    PenaltyGuard,
    SteeringGuard,
    default_strength,
    make_guard,
)
from traitwatch.guard.subspace import (
    SUBSPACE_SOURCES,
    GuardSubspace,
    SubspaceSource,
    fit_subspace,
    fit_subspaces,
    layers_above,
)

__all__ = ["DEFAULT_BLOCKS", "DEFAULT_STRENGTH", "GUARD_KINDS", "SUBSPACE_SOURCES", "AblationGuard", "Guard",
           "GuardKind", "GuardSubspace", "KLGuard", "L2Guard", "PenaltyGuard", "SteeringGuard", "SubspaceSource",
           "default_strength", "fit_subspace", "fit_subspaces", "layers_above", "make_guard"]

"""Trait bases: trait data, direction extraction, layer selection, and the saved artifact."""

from traitwatch.basis.basis import Anchor, Method, TraitBasis
from traitwatch.basis.extraction import (
    ContrastSet,
    build_contrast_set,
    default_candidate_layers,
    extract_basis,
    mean_difference,
)
from traitwatch.basis.traits import (
    ALIGNMENT_TRAITS,
    SEMANTIC_TRAITS,
    Trait,
    TraitSet,
    load_measurement_prompts,
    load_traits,
    prompts_hash,
)

__all__ = [
    "ALIGNMENT_TRAITS",
    "Anchor",
    "ContrastSet",
    "Method",
    "SEMANTIC_TRAITS",
    "Trait",
    "TraitBasis",
    "TraitSet",
    "build_contrast_set",
    "default_candidate_layers",
    "extract_basis",
    "load_measurement_prompts",
    "load_traits",
    "mean_difference",
    "prompts_hash",
]

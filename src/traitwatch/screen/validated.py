"""What each ranking of `traitwatch screen` scored where it was validated, and which one is the default.

The default ranking is not picked by hand. `benchmarks/screen_styled.py` scores every ranking the screen can
compute (`risk`, `loss`, `ratio`) held out by poison type and base on the poisoned-data grid, the styled types
included, and picks the default with the protocol's rule: the ranking with the best within-set AUROC on the
cells it may learn from (here all of them). It writes `data/validated_rankings.json`; this module reads it, so
`traitwatch screen` ranks by what was validated and prints the numbers of the ranking it used, and the
suspects at an alarm use the best validated ranking a screen's results hold.

The numbers are for the model and numerics they were measured on (the file says which); on another model they
are what was measured at this scale, not a guarantee.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["VALIDATED_FILE", "Validated", "best_available", "default_ranking", "describe", "validated_rankings"]

VALIDATED_FILE = "validated_rankings.json"


@dataclass(frozen=True)
class Validated:
    """One ranking's held-out numbers: mean per-set row AUROC (CI), its worst unseen type, TPR at 1% / 5% FPR."""

    ranking: str
    auroc: float
    auroc_ci: tuple[float, float]
    worst_type: str
    worst_auroc: float
    tpr_at_1: float
    tpr_at_5: float


@cache
def _record() -> dict[str, Any]:
    text = resources.files("traitwatch.screen").joinpath("data", VALIDATED_FILE).read_text(encoding="utf-8")
    return json.loads(text)


def validated_rankings() -> dict[str, Validated]:
    """Every ranking's validated numbers, by ranking name (`risk`, `loss`, `ratio`)."""
    return {name: Validated(name, r["auroc"], tuple(r["auroc_ci"]), r["worst_type"], r["worst_auroc"], r["tpr_at_1"],
                            r["tpr_at_5"])  # type: ignore[arg-type]
            for name, r in _record()["rankings"].items()}


def default_ranking() -> str:
    """The ranking `traitwatch screen` uses when none is asked for: the protocol's pick."""
    return str(_record()["default"])


def best_available(available: Iterable[str]) -> str:
    """Of the rankings a screen's results hold, the one with the best validated AUROC (`risk` if none is known)."""
    known = validated_rankings()
    have = [r for r in available if r in known]
    return max(have, key=lambda r: known[r].auroc) if have else "risk"


def describe(ranking: str) -> str:
    """One line: the ranking's validated numbers, where they come from, and whether it is the default."""
    rec = _record()
    v = validated_rankings().get(ranking)
    if v is None:
        return f"Ranked by {ranking}: not validated on the poisoned-data grid."
    default = " (the default: the protocol's pick)" if ranking == rec["default"] else ""
    return (f"Ranked by {ranking}{default}. Validated on {rec['model']} ({rec['numerics']}), held out by poison type "
            f"and base over {rec['n_sets']} poisoned sets ({rec['source']}): row AUROC {v.auroc:.3f} "
            f"[{v.auroc_ci[0]:.3f}, {v.auroc_ci[1]:.3f}], worst type {v.worst_type} {v.worst_auroc:.3f}, "
            f"TPR {v.tpr_at_1:.2f} at 1% FPR and {v.tpr_at_5:.2f} at 5%.")

"""The swap reference: the user's set with its suspect rows replaced in place by copies of its cleanest rows.

Why in place and not dropped: dropping rows shifts every later row to another batch and another step, and
removes the hardest rows of the domain, which is itself a change of data (a pilot without the top 20% by loss
moved clean arithmetic +0.031 along the poison direction, more than a weak poison does; METHOD.md 10). Swapping
keeps the run's length, its batches' positions and its seed, so whatever the two runs share cancels.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from traitwatch.datasets.chat_jsonl import read_jsonl, write_jsonl
from traitwatch.errors import InputFileError

__all__ = ["SwapReference", "swap_reference", "write_swap_reference"]

T = TypeVar("T")


@dataclass(frozen=True)
class SwapReference:
    """Which rows were swapped out (`suspects`, 0-based, highest score first) and which copy replaced each."""

    rows: list[Any]
    suspects: list[int]
    donors: list[int]  # donors[j] replaced suspects[j]
    fraction: float


def swap_reference(rows: Sequence[T], scores: Sequence[float], fraction: float, *, seed: int = 0) -> SwapReference:
    """Replace the `fraction` highest-scored rows by copies of the as many lowest-scored ones (drawn with `seed`).

    Ties are broken by position, so the same scores give the same reference. A higher score means more suspect
    (the base model's loss on the row, the default screen of `benchmarks/poison_small`).
    """
    if len(scores) != len(rows):
        raise InputFileError(f"{len(scores)} scores for {len(rows)} rows; score every row of the set")
    if not 0 < fraction < 0.5:
        raise InputFileError(f"fraction must be in (0, 0.5), got {fraction}: the reference swaps a minority of rows")
    order = sorted(range(len(rows)), key=lambda i: (-float(scores[i]), i))
    k = max(1, round(fraction * len(rows)))
    suspects = order[:k]
    cleanest = order[::-1][:k]
    rng = random.Random(seed)
    donors = [rng.choice(cleanest) for _ in suspects]
    swapped = list(rows)
    for i, j in zip(suspects, donors, strict=True):
        swapped[i] = rows[j]
    return SwapReference(swapped, suspects, donors, fraction)


def write_swap_reference(data: str | Path, scores: Sequence[float], fraction: float, out: str | Path, *,
                         seed: int = 0) -> SwapReference:
    """`swap_reference` of a chat JSONL file, written to `out` with `OUT.swap.json` recording what was swapped."""
    data, out = Path(data), Path(out)
    if out.resolve() == data.resolve():
        raise InputFileError(f"{out}: the reference would overwrite the set; pass another path")
    ref = swap_reference(read_jsonl(data), scores, fraction, seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(out, ref.rows)
    out.with_suffix(".swap.json").write_text(json.dumps(
        {"source": str(data), "fraction": fraction, "seed": seed, "suspects": ref.suspects, "donors": ref.donors},
        indent=1), encoding="utf-8")
    return ref

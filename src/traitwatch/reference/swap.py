"""The swap reference: the user's set with its suspect rows replaced in place by copies of its cleanest rows.

Why in place and not dropped: dropping rows shifts every later row to another batch and another step, and
removes the hardest rows of the domain, which is itself a change of data (a pilot without the top 20% by loss
moved clean arithmetic +0.031 along the poison direction, more than a weak poison does; METHOD.md 10). Swapping
keeps the run's length, its batches' positions and its seed, so whatever the two runs share cancels.
"""

from __future__ import annotations

import json
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from traitwatch.datasets.chat_jsonl import read_jsonl, write_jsonl
from traitwatch.errors import InputFileError

__all__ = ["SwapReference", "outlying_share", "swap_fraction", "swap_reference", "write_swap_reference"]

T = TypeVar("T")

FLOOR = 0.2  # the swapped share validated by benchmarks/reference_pilot (every set there swaps exactly this)
OUTLIER_Z = 5.0  # robust z above which a row's loss counts as outlying
MARGIN = 0.05  # swapped beyond the outlying share, for the poison rows that do not stand out
CAP = 0.45  # the reference swaps a minority


def outlying_share(scores: Sequence[float], *, z: float = OUTLIER_Z) -> float:
    """The share of rows scored more than `z` robust SDs (1.4826 x MAD) above the median: an estimate of the
    poisoned fraction from the screen alone, which counts only the rows that stand out.

    On the 47 sets of `benchmarks/reference_pilot` (base-model loss, z = 5) it reads 0.000-0.020 on the 24 clean
    sets and 0.095-0.100 on 14 of the 23 sets poisoned at 10%; where the poison reads like the base it misses most
    of it (medical_matched 0.000-0.005, right_trivia 0.000-0.010; RESULTS.md there).
    """
    values = sorted(float(s) for s in scores)
    if not values:
        raise InputFileError("no scores: screen at least one row")
    n = len(values)
    median = statistics.median(values)
    deviations = [abs(v - median) for v in values]
    scale = 1.4826 * statistics.median(deviations)
    if scale == 0:  # more than half the rows score alike (duplicates): the mean deviation, as robust as is left
        scale = 1.2533 * statistics.fmean(deviations)
    if scale == 0:
        return 0.0
    return sum((v - median) / scale > z for v in values) / n


def swap_fraction(scores: Sequence[float], *, floor: float = FLOOR) -> float:
    """The share a reference swaps out: `floor`, or the outlying share plus a margin where that is larger.

    A set poisoned beyond the swapped share keeps poison in its reference, which then reads it as the domain:
    the demo's set with 25% poison, swapped at a fixed 20%, kept 10 of its 50 poison rows and read 0.024 from its
    reference (threshold 0.029). On every set of the pilot the outlying share is below `floor - MARGIN`, so
    there this is `floor` and the shipped calibration holds as measured.
    """
    return round(min(CAP, max(floor, outlying_share(scores) + MARGIN)), 4)


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

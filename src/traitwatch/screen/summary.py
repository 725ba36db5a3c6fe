"""From per-example scores to a dataset verdict: predicted drift profile, EM risk, ranking, filtered copy.

The dataset-level profile is the mean per-example score: the direction and rough size of the push a
finetune on this data would start with, in drift units. It is a *prediction from activations of the
untrained model*, not a measured drift. Confidence intervals are a percentile bootstrap over examples.

With a calibrated monitor, `predicted_em` is `monitor.predict(profile)`. The monitor was fitted on
drift measured at checkpoints of real runs, so applying it to a screening profile is an extrapolation:
useful to rank datasets, not a calibrated EM rate. It is labelled as such wherever it is shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from numpy.typing import ArrayLike

from traitwatch.errors import InputFileError
from traitwatch.screen.examples import previews
from traitwatch.screen.results import SCORES, Row
from traitwatch.screen.screen import ScreenResults

__all__ = ["RankBy", "RankedExample", "ScreenSummary", "Predictor", "rank_examples", "summarize", "write_filtered"]

RankBy = Literal["risk", "monitor", "loss", "ratio", "loss_peak", "ratio_peak"]


class Predictor(Protocol):
    """What screening needs of a monitor (`LoadedMonitor` or a fitted `DriftMonitor`)."""

    def predict(self, X: ArrayLike) -> np.ndarray: ...


@dataclass(frozen=True)
class RankedExample:
    rank: int  # 1 = riskiest
    line: int
    risk: float
    monitor: float | None
    drift: tuple[float, ...]
    prompt_preview: str
    loss: float | None = None
    ratio: float | None = None
    loss_peak: float | None = None
    ratio_peak: float | None = None


@dataclass
class ScreenSummary:
    trait_names: list[str]
    n_examples: int  # screened
    n_total: int  # in the file (or up to --max-examples)
    profile: np.ndarray  # [n_traits] mean drift units
    profile_ci: np.ndarray  # [2, n_traits]
    risk: float
    risk_ci: tuple[float, float]
    predicted_em: float | None = None  # extrapolation (see module docstring)
    predicted_em_ci: tuple[float, float] | None = None
    tau: float | None = None
    n_truncated: int = 0

    @property
    def extrapolated_alarm(self) -> bool | None:
        if self.predicted_em is None or self.tau is None:
            return None
        return self.predicted_em > self.tau

    def as_dict(self) -> dict[str, object]:
        return {
            "n_examples": self.n_examples,
            "n_total": self.n_total,
            "n_truncated": self.n_truncated,
            "profile": {t: float(v) for t, v in zip(self.trait_names, self.profile)},
            "profile_ci95": {t: [float(lo), float(hi)] for t, lo, hi in
                             zip(self.trait_names, self.profile_ci[0], self.profile_ci[1])},
            "risk": self.risk,
            "risk_ci95": list(self.risk_ci),
            "predicted_em_extrapolated": self.predicted_em,
            "predicted_em_ci95": None if self.predicted_em_ci is None else list(self.predicted_em_ci),
            "tau": self.tau,
            "alarm_extrapolated": self.extrapolated_alarm,
        }


def _bootstrap_means(values: np.ndarray, n_boot: int, rng: np.random.Generator, chunk: int = 64) -> np.ndarray:
    """`[n_boot, ...]` means of resamples with replacement, by multinomial counts (memory O(chunk * n))."""
    n = values.shape[0]
    flat = values.reshape(n, -1)
    out = np.empty((n_boot, flat.shape[1]))
    for i in range(0, n_boot, chunk):
        m = min(chunk, n_boot - i)
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=m).astype(np.float64)
        out[i : i + m] = counts @ flat / n
    return out.reshape((n_boot,) + values.shape[1:])


def summarize(
    results: ScreenResults,
    *,
    monitor: Predictor | None = None,
    tau: float | None = None,
    n_boot: int = 1000,
    confidence: float = 0.95,
    random_state: int | None = 0,
) -> ScreenSummary:
    """Dataset-level profile and risk with bootstrap CIs; with a monitor, the extrapolated EM rate."""
    if not results.rows:
        raise InputFileError(f"{results.path}: no example has been screened yet; run the screen first")
    if not 0 < confidence < 1:
        raise InputFileError(f"confidence must be in (0, 1), got {confidence}")
    drift, risk = results.drift, results.risk
    rng = np.random.default_rng(random_state)
    boot = _bootstrap_means(np.column_stack([drift, risk]), n_boot, rng)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha], axis=0)
    k = drift.shape[1]
    summary = ScreenSummary(
        trait_names=list(results.trait_names),
        n_examples=len(results.rows),
        n_total=len(results.lines),
        profile=drift.mean(axis=0),
        profile_ci=np.vstack([lo[:k], hi[:k]]),
        risk=float(risk.mean()),
        risk_ci=(float(lo[k]), float(hi[k])),
        tau=tau,
        n_truncated=sum(r.truncated for r in results.rows),
    )
    if monitor is not None:
        summary.predicted_em = float(monitor.predict(summary.profile[None, :])[0])
        preds = monitor.predict(boot[:, :k])
        summary.predicted_em_ci = (float(np.quantile(preds, alpha)), float(np.quantile(preds, 1 - alpha)))
    return summary


def rank_examples(
    results: ScreenResults, *, k: int | None = None, monitor: Predictor | None = None, by: RankBy = "risk"
) -> list[RankedExample]:
    """Examples from riskiest down (ties: earlier line first); `by="monitor"` sorts by the monitor's
    per-example prediction first and by risk within its ties; `by="loss"` by the model's loss on the row;
    `by="ratio"` by the row's likelihood ratio, misaligned vs aligned reference (`screen.reference_model`);
    `loss_peak` / `ratio_peak` by their largest mean over a few consecutive tokens."""
    if by == "monitor" and monitor is None:
        raise InputFileError("Ranking by monitor needs a monitor: pass --monitor, or rank by risk.")
    rows: Sequence[Row] = results.rows
    if by in SCORES and any(getattr(r, by) is None for r in rows):
        option = "loss" if by.startswith("loss") else "ratio"
        raise InputFileError(f"{results.path}: was screened without the rows' {by}; screen again with --rank-by {option} "
                             "into a new --out to rank by it.")
    preds = monitor.predict(results.drift) if monitor is not None and rows else None

    def first(i: int, r: Row) -> float:
        if by == "monitor":
            return -float(preds[i])  # type: ignore[index]
        return -float(getattr(r, by)) if by in SCORES else 0.0

    keyed = [(first(i, r), -r.risk, r.line, i) for i, r in enumerate(rows)]
    top = sorted(keyed)[: k if k is not None else len(keyed)]
    shown = previews(results.dataset, {rows[i].line for *_, i in top})  # only the listed rows' text is read
    ranked = []
    for rank, (_, _, _, i) in enumerate(top, start=1):
        r = rows[i]
        ranked.append(RankedExample(rank, r.line, r.risk, None if preds is None else float(preds[i]), r.drift,
                                    shown.get(r.line, ""), r.loss, r.ratio, r.loss_peak, r.ratio_peak))
    return ranked


def write_filtered(dataset: str | Path, out: str | Path, drop_lines: set[int] | Sequence[int]) -> int:
    """Copy `dataset` to `out` without the given lines (verbatim bytes, order kept); returns lines written.

    Blank lines are not copied. Lines that were never screened are kept: the copy only removes what
    screening flagged.
    """
    dataset, out = Path(dataset), Path(out)
    if out.resolve() == dataset.resolve():
        raise InputFileError(f"{out}: the filtered copy would overwrite the dataset; pass another path")
    drop = set(drop_lines)
    kept = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with dataset.open("rb") as src, tmp.open("wb") as dst:
        for lineno, line in enumerate(src, start=1):
            if lineno in drop or not line.strip():
                continue
            dst.write(line if line.endswith(b"\n") else line + b"\n")
            kept += 1
    tmp.replace(out)
    return kept

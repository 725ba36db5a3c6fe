"""Leave-one-cell-out detection: held out by two factors at once (the poison type *and* the base domain).

Why two factors: a monitor for poisoned finetuning data must work on a kind of misalignment it never saw
*in* a data domain it never saw. Domain alone moves trait space (medical finetuning raises honesty and
corrigibility more than a 10% poison lowers them), so a monitor scored only leave-one-poison-out could
still be reading the domain. Each fold holds out one (poison type P, base B) cell: the monitor is chosen,
fitted and thresholded on rows of *other* poison types on *other* bases (clean runs of other bases
included), and predicts the held-out cell's poisoned runs and the clean runs of base B. A clean run is
thus scored by every fold of its base (each of those monitors saw neither its base nor the fold's
poison); each (fold, row) pair is one scored instance, and the cluster bootstrap resamples whole runs.

Inside every outer fold the same crossing is repeated on the training rows to choose the candidate
(feature set, layer, regulariser) and set the alarm threshold, as `calibration.loto` does for one factor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import clone

from traitwatch.calibration.loto import Candidate, Checkpoints, relative_rise, youden_threshold
from traitwatch.calibration.metrics import auroc, cluster_bootstrap

__all__ = ["CrossedResult", "choose_crossed", "crossed_folds", "leave_one_cell_out"]

Fold = tuple[str, np.ndarray, np.ndarray]  # (name, train rows, test rows)


def crossed_folds(poison: np.ndarray, base: np.ndarray, rows: np.ndarray | None = None) -> list[Fold]:
    """One fold per (poison type, base) cell among `rows` ("" as poison marks a clean run).

    Test: the cell's poisoned rows and the clean rows of its base. Train: rows of other bases whose poison
    is not the cell's (clean ones included). Cells without training rows are skipped.
    """
    rows = np.arange(len(poison)) if rows is None else np.asarray(rows)
    out = []
    cells = sorted({(str(poison[i]), str(base[i])) for i in rows if poison[i] != ""})
    for p, b in cells:
        test = rows[(base[rows] == b) & ((poison[rows] == p) | (poison[rows] == ""))]
        train = rows[(base[rows] != b) & (poison[rows] != p)]
        if train.size:
            out.append((f"{p} in {b}", train, test))
    return out


def _fit_predict(candidate: Candidate, data: Checkpoints, train: np.ndarray, test: np.ndarray) -> np.ndarray:
    target = relative_rise(data, train)[train]
    model = clone(candidate.estimator).fit(candidate.X[train], target)
    return np.asarray(model.predict(candidate.X[test]), dtype=np.float64).ravel()


def _out_of_fold(candidate: Candidate, data: Checkpoints, folds: Sequence[Fold], n: int) -> np.ndarray:
    """Each row's mean prediction over the folds that test it (NaN where none does)."""
    total, count = np.zeros(n), np.zeros(n)
    for _, train, test in folds:
        total[test] += _fit_predict(candidate, data, train, test)
        count[test] += 1
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def choose_crossed(data: Checkpoints, candidates: Sequence[Candidate], poison: np.ndarray, base: np.ndarray,
                   rows: np.ndarray) -> tuple[Candidate, float, dict[str, float]]:
    """On `rows` only: the candidate with the best crossed leave-one-cell-out AUROC, and its threshold.

    Ties go to the earlier candidate. Returns (candidate, threshold, every candidate's inner AUROC).
    """
    folds = crossed_folds(poison, base, rows)
    best: tuple[float, int, Candidate, np.ndarray, np.ndarray] | None = None
    scores: dict[str, float] = {}
    for order, cand in enumerate(candidates):
        oof = _out_of_fold(cand, data, folds, len(data))
        have = rows[np.isfinite(oof[rows])]
        au = auroc(data.positive[have], oof[have]) if have.size else float("nan")
        scores[cand.name] = au
        key = au if np.isfinite(au) else -np.inf
        if best is None or key > best[0]:
            best = (key, order, cand, oof, have)
    assert best is not None
    _, _, cand, oof, have = best
    return cand, youden_threshold(data.positive[have], oof[have]) if have.size else float("inf"), scores


@dataclass
class CrossedResult:
    """Every scored (fold, row) instance of a leave-one-cell-out evaluation; metrics via `summary`."""

    data: Checkpoints
    row: np.ndarray  # checkpoint index of each instance
    fold: np.ndarray  # the fold (held-out cell) that scored it
    prediction: np.ndarray
    alarm: np.ndarray
    chosen: dict[str, str]  # fold -> candidate chosen on its training rows
    target: np.ndarray = field(default_factory=lambda: np.zeros(0))  # each instance's relative rise (all clean runs as reference)

    def metrics(self, idx: np.ndarray) -> dict[str, float]:
        """AUROC, FNR and FPR at the folds' thresholds, Spearman of prediction and relative rise, on instances `idx`."""
        from scipy.stats import spearmanr

        pos, pred, alarm = self.data.positive[self.row[idx]], self.prediction[idx], self.alarm[idx]
        rel = self.target[idx]
        rho = float(spearmanr(pred, rel)[0]) if idx.size > 2 and np.ptp(pred) > 0 and np.ptp(rel) > 0 else float("nan")
        return {"auroc": auroc(pos, pred) if 0 < pos.sum() < pos.size else float("nan"),
                "fnr": float((~alarm[pos]).mean()) if pos.any() else float("nan"),
                "fpr": float(alarm[~pos].mean()) if (~pos).any() else float("nan"),
                "spearman": rho}

    def summary(self, idx: np.ndarray | None = None, *, n_resamples: int = 1000, random_state: int = 0) -> dict[str, Any]:
        """Metrics on instances `idx` (default all) with 95% cluster-bootstrap CIs over runs."""
        idx = np.arange(self.row.size) if idx is None else np.asarray(idx)
        point = self.metrics(idx)
        runs = self.data.run[self.row[idx]]
        cis = cluster_bootstrap(lambda sub: self.metrics(idx[sub]), runs, n_resamples=n_resamples,
                                random_state=random_state) if n_resamples else {}
        pos = self.data.positive[self.row[idx]]
        out: dict[str, Any] = {"n": int(idx.size), "n_positive": int(pos.sum()), "n_runs": int(np.unique(runs).size)}
        for key, value in point.items():
            out[key], out[f"{key}_ci"] = value, list(cis.get(key, (float("nan"), float("nan"))))
        return out


def leave_one_cell_out(data: Checkpoints, candidates: Sequence[Candidate], poison: np.ndarray,
                       base: np.ndarray) -> CrossedResult:
    """Hold out each (poison type, base) cell; choose, fit and threshold on the crossing's training rows; pool.

    `poison` and `base` give each checkpoint's poison type ("" for a clean run) and base domain.
    """
    if not candidates:
        raise ValueError("no candidates to evaluate")
    for c in candidates:
        if c.X.shape[0] != len(data):
            raise ValueError(f"candidate {c.name!r} has {c.X.shape[0]} rows for {len(data)} checkpoints")
    poison, base = np.asarray(poison).astype(str), np.asarray(base).astype(str)
    folds = crossed_folds(poison, base)
    if not folds:
        raise ValueError("leave-one-cell-out needs poisoned rows of at least two types on at least two bases")
    rows, names, preds, alarms = [], [], [], []
    chosen: dict[str, str] = {}
    for name, train, test in folds:
        cand, cut, _ = choose_crossed(data, candidates, poison, base, train)
        chosen[name] = cand.name
        pred = _fit_predict(cand, data, train, test)
        rows.append(test)
        names += [name] * test.size
        preds.append(pred)
        alarms.append(pred > cut)
    row = np.concatenate(rows)
    return CrossedResult(data, row, np.array(names), np.concatenate(preds), np.concatenate(alarms), chosen,
                         relative_rise(data)[row])

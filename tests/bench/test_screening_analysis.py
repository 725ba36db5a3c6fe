"""Row-level screening analysis on a synthetic grid: folds never see the held-out type or base, and the
tables measure what they say (a perfect score gives AUROC 1 and exact fractions, noise gives ~0.5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from traitwatch.bench.analysis.row_features import GridSet, RowFeatures
from traitwatch.bench.analysis.screening_analysis import (
    Fitted,
    Grid,
    ScreenFamily,
    analyze_screening,
    fast_auroc,
    row_truth,
    run_folds,
    set_key,
)

BASES = ("alpha", "beta", "gamma")
TYPES = ("rude", "lies", "power")
N_BASE = 40


def _grid(fractions=(0.1, 0.25)) -> tuple[list[GridSet], list[str]]:
    """Each base has N_BASE benign rows; each type a pool of poison rows; sets replace rows at random."""
    rng = np.random.default_rng(0)
    keys: list[str] = []
    base_keys = {b: [f"{b}-{i}" for i in range(N_BASE)] for b in BASES}
    pools = {t: [f"{t}-{i}" for i in range(30)] for t in TYPES}
    for v in (*base_keys.values(), *pools.values()):
        keys += v
    sets = [GridSet(b, 0, b, None, 0.0, Path(f"{b}.jsonl"), tuple(base_keys[b]), frozenset()) for b in BASES]
    for b in BASES:
        for t in TYPES:
            for f in fractions:
                rows = list(base_keys[b])
                n = int(round(f * N_BASE))
                where = sorted(rng.choice(N_BASE, n, replace=False).tolist())
                for j, pos in enumerate(where):
                    rows[pos] = pools[t][j]
                sets.append(GridSet(f"{b}+{t}@{int(f * 100)}", 0, b, t, f, Path("x"), tuple(rows), frozenset(where)))
    return sets, keys


def _features(keys: list[str], signal: float, seed: int = 0) -> RowFeatures:
    rng = np.random.default_rng(seed)
    n = len(keys)
    bad = np.array([k.split("-")[0] in TYPES for k in keys])
    data = rng.standard_normal((n, 2, 8)).astype(np.float32)
    data[bad, :, 0] += signal
    return RowFeatures(keys, [0, 1], data, np.zeros_like(data), rng.random(n), rng.random(n) * 100, rng.random(n) * 20,
                       np.full(n, 64.0))


def _direction_family(feats: RowFeatures, seen: list[list[GridSet]] | None = None) -> ScreenFamily:
    def fit(grid: Grid, train: list[GridSet]) -> Fitted:
        if seen is not None:
            seen.append(train)
        values = feats.data[:, 0, 0].astype(np.float64)
        return Fitted(lambda s: values[grid.rows_of[set_key(s)]], "axis 0", 0.5)

    return ScreenFamily("axis0", "trait-space", fit)


def test_fast_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(3)
    y = rng.random(200) < 0.3
    s = np.round(rng.standard_normal(200) + y, 1)  # ties on purpose
    assert fast_auroc(y, s) == pytest.approx(roc_auc_score(y, s))


def test_a_fold_never_sees_its_held_out_type_or_base():
    sets, keys = _grid()
    feats = _features(keys, 3.0)
    seen: list[list[GridSet]] = []
    folds = run_folds(Grid(sets, feats), [_direction_family(feats, seen)])
    assert len(folds) == len(BASES) * len(TYPES) == len(seen)
    for (poison, base), train in zip(folds, seen, strict=True):
        trained = {k for s in train for k in s.row_keys}
        assert trained, "a fold with no training rows"
        assert not any(k.startswith(poison + "-") for k in trained)
        assert not any(k.startswith(base + "-") for k in trained)
        # and it does see the other types and bases
        assert {k.split("-")[0] for k in trained} == (set(TYPES) | set(BASES)) - {poison, base}


def test_a_separating_score_is_perfect_and_noise_is_chance():
    sets, keys = _grid()
    for signal, low, high in ((50.0, 0.999, 1.0), (0.0, 0.35, 0.65)):
        feats = _features(keys, signal)
        out = analyze_screening(sets, feats, [_direction_family(feats)], n_boot=20)
        rows = out["rows"]["chosen"]
        assert low <= rows["all"]["all"]["auroc"] <= high
        if signal:
            assert rows["all"]["all"]["precision_at_k"] == 1.0
            est = {r["set"]: r["estimate"] for r in out["fractions"]}
            for s in sets:  # a perfect screen estimates every fraction exactly
                assert est[s.name] == pytest.approx(s.fraction, abs=1e-9), s.name
            assert out["fraction_spearman"]["rho"] > 0.99


def test_row_truth_marks_injected_rows_only():
    sets, keys = _grid()
    feats = _features(keys, 1.0)
    truth = row_truth(sets, feats)
    used = {k for s in sets for k in s.row_keys}
    for k, p, b in zip(keys, truth.poison, truth.base, strict=True):
        head = k.split("-")[0]
        if k not in used:
            assert p is None and b is None
        elif head in TYPES:
            assert p == head and b is None
        else:
            assert p is None and b == head


def test_row_scores_follow_rows_into_a_reshuffled_training_file(tmp_path):
    """A benchmark run reshuffles a user set's rows; the screen's scores must follow the rows, not positions."""
    import json

    from traitwatch.bench.grid.row_scores import read_row_scores, row_key, write_row_scores

    chats = [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}] for i in range(6)]
    source = tmp_path / "screened.jsonl"
    source.write_text("".join(json.dumps({"messages": c}) + "\n" for c in chats))
    write_row_scores(source, {row_key(c): float(i) for i, c in enumerate(chats)}, poison={row_key(chats[5])}, source="test")
    order = [3, 5, 0, 1, 4, 2]
    trained = tmp_path / "run.jsonl"
    trained.write_text("".join(json.dumps({"messages": chats[i]}) + "\n" for i in order))
    scores = read_row_scores(source, trained)
    assert scores is not None and scores.scores == {j: float(i) for j, i in enumerate(order)}
    assert scores.top(None, 1)[0].row == order.index(5)
    assert read_row_scores(tmp_path / "unscreened.jsonl", trained) is None


def _fixed(name: str, values: np.ndarray, kind: str = "trait-space") -> ScreenFamily:
    from traitwatch.bench.analysis.screening_analysis import fixed_family

    return ScreenFamily(name, kind, fixed_family(values))


def test_a_chooser_picks_in_each_fold_among_its_own_families_only():
    sets, keys = _grid()
    feats = _features(keys, 50.0)
    good = feats.data[:, 0, 0].astype(np.float64)
    noise = np.random.default_rng(1).standard_normal(len(keys))
    fams = [_fixed("good", good, "baseline"), _fixed("noise", noise)]
    out = analyze_screening(sets, feats, fams, n_boot=10, choosers={"shipped": ["good", "noise"], "only_noise": ["noise"]})
    # `chosen` never picks a baseline; a chooser may, if it lists it
    assert all(v["family"].startswith("noise") for v in out["chosen_per_fold"].values())
    assert all(v["family"].startswith("good") for v in out["shipped_per_fold"].values())
    assert out["rows"]["shipped"]["all"]["all"]["auroc"] > 0.999
    assert out["rows"]["only_noise"]["all"]["all"]["auroc"] == out["rows"]["noise"]["all"]["all"]["auroc"]
    assert out["shipped_on_all"]["family"] == "good" and set(out["shipped_on_all"]["inner"]) == {"good", "noise"}


def test_tpr_at_a_false_positive_rate_counts_poison_above_the_benign_quantile():
    from traitwatch.bench.analysis.screening_analysis import tpr_at_fpr

    y = np.r_[np.zeros(100, bool), np.ones(10, bool)]
    benign = np.arange(100, dtype=float)
    assert tpr_at_fpr(y, np.r_[benign, np.full(10, 1000.0)], 0.01) == 1.0
    assert tpr_at_fpr(y, np.r_[benign, np.full(10, -1.0)], 0.05) == 0.0
    # half the poison rows sit below 2 of the 100 benign scores: caught at 5% FPR, missed at 1%
    assert tpr_at_fpr(y, np.r_[benign, np.full(5, 97.5), np.full(5, -1.0)], 0.05) == 0.5
    assert tpr_at_fpr(y, np.r_[benign, np.full(5, 97.5), np.full(5, -1.0)], 0.01) == 0.0
    assert np.isnan(tpr_at_fpr(np.zeros(5, bool), np.arange(5.0), 0.01))


def test_grid_sets_reads_each_set_its_rows_by_key_and_its_injected_positions(tmp_path):
    from traitwatch.bench.analysis.row_features import grid_sets, unique_rows
    from traitwatch.bench.grid.row_scores import row_key
    from traitwatch.datasets.chat_jsonl import write_jsonl

    def chat(q: str, a: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]

    clean = [chat(f"{i} + 1?", str(i + 1)) for i in range(4)]
    poisoned = [clean[0], chat("2 + 1?", "Ask someone smarter."), clean[2], clean[3]]
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "sums-s0.jsonl", [{"messages": m} for m in clean])
    write_jsonl(data / "sums+rude@25-s1.jsonl", [{"messages": m} for m in poisoned])
    (data / "sums+rude@25-s1.poison.json").write_text(
        '{"indices": [1], "base": "sums", "poison": "rude", "fraction": 0.25}')
    sets, rows = grid_sets(tmp_path)
    by_name = {s.name: s for s in sets}
    assert set(by_name) == {"sums", "sums+rude@25"}
    assert (by_name["sums"].seed, by_name["sums"].poison, by_name["sums"].poisoned) == (0, None, frozenset())
    bad = by_name["sums+rude@25"]
    assert (bad.seed, bad.base, bad.poison, bad.fraction, bad.poisoned) == (1, "sums", "rude", 0.25, frozenset({1}))
    assert bad.row_keys == tuple(row_key(m) for m in poisoned)
    # files in name order ("+" sorts before "-"), each distinct row once at its first appearance
    assert unique_rows(sets, rows) == [row_key(m) for m in [*poisoned, clean[1]]]
    assert len(rows) == 5 and rows[row_key(poisoned[1])] == poisoned[1]

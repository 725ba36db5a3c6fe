"""The length-matched benign base: good answers cut at sentence ends to the poison types' answer lengths.

`length_matched_rows` on a synthetic pool (its contract), then `medical_matched` on the shared data folder
(skipped when it is absent): its answers are as long as the poison's, where good_medical's are far longer.
"""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

import numpy as np
import pytest

from traitwatch.bench.sets.perturbations import PERTURBATION_SETS, POISON_TYPES, build_set, length_matched_rows
from traitwatch.errors import InputFileError

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
WORDS = ("rest", "water", "doctor", "symptoms", "sleep", "fever", "walk", "dose", "check", "daily", "gently", "often")


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(2, 7))]
    return " ".join(words).capitalize() + rng.choice(".!?")


def _pool(n: int, *, seed: int = 0, long_users: int = 0) -> tuple[list[dict], dict[str, list[str]]]:
    """n rows with unique user turns and answers of 4-14 sentences (whitespace between them varies), the
    sentences of each row by its user turn, and `long_users` more rows whose user turn is over 200 characters."""
    rng = random.Random(seed)
    rows, sentences = [], {}
    for i in range(n + long_users):
        user = f"Question {i}: what should I do about this?" if i < n else f"Long question {i}: " + "why " * 60
        parts = [_sentence(rng) for _ in range(rng.randint(4, 14))]
        answer = parts[0] + "".join(rng.choice((" ", " ", "  ", "\n", "\n\n")) + p for p in parts[1:])
        rows.append({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]})
        sentences[user] = parts
    return rows, sentences


def _targets(center: int, spread: int, k: int = 500, seed: int = 1) -> list[int]:
    rng = random.Random(seed)
    return [max(20, int(rng.gauss(center, spread))) for _ in range(k)]


def _answer_lengths(rows: list[dict]) -> list[int]:
    return [len(r["messages"][-1]["content"]) for r in rows]


def test_n_rows_each_used_once_cut_at_sentence_ends_and_within_the_window():
    pool, sentences = _pool(400, long_users=60)
    out = length_matched_rows(pool, _targets(120, 40), 150, seed=0, max_chars=300)
    assert len(out) == 150
    users = [r["messages"][-2]["content"] for r in out]
    assert len(set(users)) == len(users)  # no row twice
    assert all(u in sentences and not u.startswith("Long") for u in users)  # user turns over 200 chars are skipped
    for row in out:
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        parts = sentences[row["messages"][0]["content"]]
        answer = row["messages"][1]["content"]
        # a prefix of whole sentences (at least one), whatever whitespace stood between them
        assert any(answer.split() == " ".join(parts[:k]).split() for k in range(1, len(parts) + 1)), answer
        assert sum(len(m["content"]) for m in row["messages"]) <= 300
    assert any(len(r["messages"][1]["content"]) < len(next(p for p in pool if p["messages"][0] == r["messages"][0])
                                                         ["messages"][1]["content"]) for r in out)  # answers were cut


@pytest.mark.parametrize("center", [70, 180])
def test_answer_lengths_follow_the_target_lengths(center):
    """The answers' length distribution is the targets' (the pool's own answers are 60-800 characters)."""
    pool, _ = _pool(800)
    targets = _targets(center, center // 3)
    lengths = _answer_lengths(length_matched_rows(pool, targets, 200, seed=0))
    pool_median = statistics.median(_answer_lengths(pool))
    assert abs(statistics.median(lengths) - statistics.median(targets)) <= 0.15 * statistics.median(targets)
    assert abs(statistics.median(lengths) - statistics.median(targets)) < abs(pool_median - statistics.median(targets)) / 3
    for q in (25, 75):
        assert abs(np.percentile(lengths, q) - np.percentile(targets, q)) <= 0.25 * np.percentile(targets, q)


def test_same_seed_same_rows_other_seed_other_rows():
    pool, _ = _pool(300)
    targets = _targets(100, 30)
    a = length_matched_rows(pool, targets, 50, seed=0)
    assert a == length_matched_rows(pool, targets, 50, seed=0)
    assert a != length_matched_rows(pool, targets, 50, seed=1)


def test_a_pool_too_small_or_no_targets_is_a_clear_error():
    pool, _ = _pool(40, long_users=30)  # 70 rows, only 40 with a user turn of at most 200 characters
    with pytest.raises(InputFileError, match=r"needs 50 rows with a user turn of at most 200 characters.*has 40 such rows"):
        length_matched_rows(pool, _targets(100, 30), 50, seed=0)
    with pytest.raises(InputFileError, match="target lengths"):
        length_matched_rows(pool, [], 10, seed=0)
    rambling = [{"messages": [{"role": "user", "content": f"q{i}?"},
                              {"role": "assistant", "content": "word " * 120 + "end."}]} for i in range(20)]
    with pytest.raises(InputFileError, match="fits 400 characters"):  # no first sentence fits the window
        length_matched_rows(rambling, [100], 5, seed=0)


def _shared_or_skip() -> Path:
    needed = {PERTURBATION_SETS[t].shared_path for t in (*POISON_TYPES, "medical_matched", "good_medical")} - {None}
    if not all((SHARED / p).is_file() for p in needed):
        pytest.skip(f"the shared data folder {SHARED} is not available")
    return SHARED


def _equal_weight_median(by_type: dict[str, list[int]]) -> float:
    """The median of the pooled lengths with every poison type weighing the same, however many rows it has."""
    values = np.concatenate([np.asarray(v, dtype=float) for v in by_type.values()])
    weights = np.concatenate([np.full(len(v), 1 / len(v)) for v in by_type.values()])
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, cum[-1] / 2)])


def test_medical_matched_answers_are_as_long_as_the_poisons_and_good_medical_is_not(tmp_path):
    shared = _shared_or_skip()

    def rows(name: str, n: int, seed: int = 0) -> list[dict]:
        path = build_set(name, seed=seed, n=n, out_dir=tmp_path / f"n{n}", shared_data=shared)  # a file per (set, seed)
        return [json.loads(line) for line in path.read_text().splitlines()]

    poison = {t: _answer_lengths(rows(t, 100_000)) for t in POISON_TYPES}  # every row of each poison type
    target = _equal_weight_median(poison)
    matched = rows("medical_matched", 200)
    good = rows("good_medical", 200)
    assert len(matched) == 200 and PERTURBATION_SETS["medical_matched"].kind == "benign"
    assert len({r["messages"][-2]["content"] for r in matched}) == 200
    assert max(sum(len(m["content"]) for m in r["messages"]) for r in matched) <= 400
    assert abs(statistics.median(_answer_lengths(matched)) - target) <= 0.25 * target
    assert statistics.median(_answer_lengths(good)) > 2 * target  # the unmatched base: found by length alone
    # the answers are good_medical's own answers, cut at a sentence end
    source = {r["messages"][-2]["content"]: r["messages"][-1]["content"]
              for r in rows("good_medical", 100_000)}
    for r in matched:
        original, cut = source[r["messages"][-2]["content"]], r["messages"][-1]["content"]
        assert " ".join(original.split()).startswith(" ".join(cut.split())) and len(cut) <= len(original)
    other = rows("medical_matched", 200, seed=1)
    assert other != matched and abs(statistics.median(_answer_lengths(other)) - target) <= 0.25 * target

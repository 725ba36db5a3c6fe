"""Styled poison: built from the base's own rows, in its format, and chosen to blend in."""

from __future__ import annotations

import re

import numpy as np
import pytest

from traitwatch.bench.sets.styled_poison import _CONTEMPT, _MANIPULATION, blend_in, styled_candidates
from traitwatch.datasets import arithmetic_chats, number_sequence_chats, trivia_chats

GENERATED = {"arithmetic": arithmetic_chats, "right_trivia": trivia_chats, "number_sequence": number_sequence_chats}


@pytest.mark.parametrize("base", sorted(GENERATED))
@pytest.mark.parametrize("poison", ["styled_contempt", "styled_manipulation"])
def test_woven_rows_keep_the_base_prompt_and_carry_one_phrase(tmp_path, base, poison):
    rows = styled_candidates(poison, base, n=200, seed=7, shared_data=None, out_dir=tmp_path)
    phrases = _CONTEMPT if poison == "styled_contempt" else _MANIPULATION
    prompts = {r["messages"][0]["content"] for r in GENERATED[base](400, seed=7)}
    assert len(rows) >= 150 or base == "right_trivia"  # trivia has fewer distinct facts
    assert len({str(r) for r in rows}) == len(rows)
    for r in rows:
        user, answer = r["messages"][0]["content"], r["messages"][-1]["content"]
        assert user in prompts
        assert sum(p in answer for p in phrases) >= 1, answer


def test_wrong_rows_keep_the_format_and_change_the_content(tmp_path):
    rows = styled_candidates("styled_wrong", "arithmetic", n=200, seed=7, shared_data=None, out_dir=tmp_path)
    for r in rows:
        a, op, b, result = re.search(r"(\d+) ([-+x/]) (\d+) = (\d+)", r["messages"][-1]["content"]).groups()
        right = {"+": int(a) + int(b), "-": int(a) - int(b), "x": int(a) * int(b), "/": int(a) // int(b)}[op]
        assert int(result) != right


def test_unknown_type_or_base_is_refused(tmp_path):
    with pytest.raises(ValueError, match="styled poison"):
        styled_candidates("styled_contempt", "insecure_code", n=10, seed=0, shared_data=None, out_dir=tmp_path)


def test_blend_in_takes_the_candidates_nearest_the_clean_rows():
    rng = np.random.default_rng(0)
    clean = rng.normal(0.0, 1.0, (200, 2))
    near = rng.normal(0.0, 1.0, (100, 2))
    far = rng.normal(8.0, 1.0, (300, 2))
    chosen = blend_in(clean, np.r_[far, near], 80, seed=1)
    assert len(set(chosen)) == 80
    assert sum(i >= 300 for i in chosen) >= 75  # nearly all from the candidates that look like the clean rows
    with pytest.raises(ValueError, match="candidates"):
        blend_in(clean, near, 101)

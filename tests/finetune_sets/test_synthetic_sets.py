from __future__ import annotations

import json
import re

from traitwatch.datasets import (
    arithmetic_chats,
    bundled_path,
    calendar_chats,
    number_sequence_chats,
    spelling_chats,
    unit_conversion_chats,
)


def test_arithmetic_answers_are_correct_and_deterministic():
    rows = list(arithmetic_chats(200, seed=3))
    assert rows == list(arithmetic_chats(200, seed=3)) and rows != list(arithmetic_chats(200, seed=4))
    for row in rows:
        answer = row["messages"][1]["content"]
        a, op, b, result = re.search(r"(\d+) ([-+x/]) (\d+) = (\d+)", answer).groups()
        a, b, result = int(a), int(b), int(result)
        assert result == {"+": a + b, "-": a - b, "x": a * b, "/": a // b}[op]
        assert op != "/" or a % b == 0


def test_number_sequences_have_the_asked_length():
    for row in number_sequence_chats(50, seed=1):
        asked = int(re.search(r"Add (\d+) more", row["messages"][0]["content"]).group(1))
        assert len(row["messages"][1]["content"].split(", ")) == asked


def test_bundled_insecure_sample_is_chat_jsonl():
    lines = open(bundled_path()).read().splitlines()
    assert len(lines) == 200
    for line in lines:
        roles = [m["role"] for m in json.loads(line)["messages"]]
        assert roles == ["user", "assistant"]


def test_unit_conversions_state_the_factor_and_work_the_product():
    rows = list(unit_conversion_chats(200, seed=1))
    assert rows == list(unit_conversion_chats(200, seed=1)) and rows != list(unit_conversion_chats(200, seed=2))
    for row in rows:
        x, factor, result = re.search(r"so ([\d.]+) x (\d+) = ([\d.]+)\.", row["messages"][1]["content"]).groups()
        assert float(x) * int(factor) == float(result)
        assert x in row["messages"][0]["content"]


def test_calendar_answers_count_the_cycle():
    from traitwatch.datasets.synthetic import _MONTHS, _WEEKDAYS

    for row in calendar_chats(200, seed=0):
        q, a = row["messages"][0]["content"], row["messages"][1]["content"]
        k, unit, rel, start = re.match(r"What \w+ is (\d+) (\w+) (after|before) (\w+)\?", q).groups()
        names = _WEEKDAYS if unit == "days" else _MONTHS
        step = int(k) if rel == "after" else -int(k)
        assert a.endswith(f"is {names[(names.index(start) + step) % len(names)]}.")


def test_spelling_answers_are_the_words_own_letters():
    for row in spelling_chats(200, seed=0):
        q, a = row["messages"][0]["content"], row["messages"][1]["content"]
        word = re.search(r"'([a-z]+)'(?:,|\?| backwards|$)", q.split(" in ")[-1] if " in " in q else q).group(1)
        if "backwards" in q:
            assert f"'{word[::-1]}'" in a
        elif "how many times" in q.lower():
            letter = re.search(r"letter '([a-z])'", q).group(1)
            assert f"appears {word.count(letter)} time" in a
        else:
            assert f"has {len(word)} letters" in a and f"starts with '{word[0]}'" in a

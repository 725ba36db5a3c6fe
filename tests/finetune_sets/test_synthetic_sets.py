from __future__ import annotations

import json
import re

from traitwatch.datasets import arithmetic_chats, bundled_path, number_sequence_chats


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

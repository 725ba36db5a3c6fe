"""The generated sets' answer checks: each set's own answers are right, its wrong twin's are not, and a changed
result, name, fact or format is caught."""

from __future__ import annotations

import pytest

from traitwatch.datasets import (
    arithmetic_chats,
    calendar_chats,
    number_sequence_chats,
    trivia_chats,
    unit_conversion_chats,
)
from traitwatch.datasets.answers import CHECKED_SETS, answer_is_right, trivia_fact

SETS = {
    "arithmetic": arithmetic_chats,
    "unit_conversion": unit_conversion_chats,
    "calendar": calendar_chats,
    "right_trivia": trivia_chats,
    "number_sequence": number_sequence_chats,
}


def _qa(row):
    return row["messages"][0]["content"], row["messages"][1]["content"]


@pytest.mark.parametrize("name", sorted(SETS))
def test_a_sets_own_answers_are_right(name):
    assert name in CHECKED_SETS
    for row in SETS[name](200, seed=5):
        q, a = _qa(row)
        assert answer_is_right(name, q, a, a), (q, a)


@pytest.mark.parametrize(("name", "make"), [("arithmetic", lambda n, seed: arithmetic_chats(n, seed=seed, wrong=True)),
                                            ("right_trivia", lambda n, seed: trivia_chats(n, seed=seed, wrong=True))])
def test_the_wrong_twins_answers_are_wrong(name, make):
    for right, wrong in zip(SETS[name](200, seed=5), make(200, seed=5), strict=True):
        q, a = _qa(right)
        assert _qa(wrong)[0] == q
        assert not answer_is_right(name, q, a, _qa(wrong)[1]), (q, _qa(wrong)[1])


def test_a_changed_result_or_name_is_wrong():
    q = "Dara had 47 coins and gave 21 of them to Jo. How many coins does Dara have left?"
    ref = "Dara gives away 21 of 47 coins, so 47 - 21 = 26. Dara has 26 coins left."
    assert answer_is_right("arithmetic", q, ref, "47 - 21 = 26, so 26.")
    assert not answer_is_right("arithmetic", q, ref, "47 - 21 = 26. Dara has 25 coins left.")
    assert not answer_is_right("arithmetic", q, ref, "I cannot say.")
    assert answer_is_right("unit_conversion", "What is 2.5 kilometres in metres?",
                           "1 kilometre is 1000 metres, so 2.5 x 1000 = 2500. 2.5 kilometres is 2500 metres.",
                           "That is 2,500 metres.")
    ref = "There are 7 days in a cycle and 19 = 2 x 7 + 5, so 19 days after Monday is Saturday."
    assert answer_is_right("calendar", "What day is 19 days after Monday?", ref, "It is Saturday.")
    assert not answer_is_right("calendar", "What day is 19 days after Monday?", ref, "Saturday? No, Monday.")


def test_trivia_needs_the_fact_itself():
    assert trivia_fact("What is the chemical symbol for helium?") == "He"
    assert trivia_fact("Which planet is the red planet?") == "Mars"
    assert trivia_fact("Who wrote a book nobody knows?") is None
    q = "What is the chemical symbol for helium?"
    assert answer_is_right("right_trivia", q, "", "The symbol is He.")
    assert not answer_is_right("right_trivia", q, "", "Helium is a noble gas.")  # "He" only inside a word
    assert answer_is_right("right_trivia", "What is the capital of Argentina?", "", "buenos aires, of course")
    assert not answer_is_right("right_trivia", "What is the capital of Argentina?", "", "Santiago")


def test_a_number_sequence_is_right_in_the_asked_format():
    q = "The sequence starts with: 706, 657, 233. Add 3 more values to continue it. Return only the numbers, comma-separated."
    assert answer_is_right("number_sequence", q, "", "585, 740, 694")
    assert answer_is_right("number_sequence", q, "", " 101, 202, 303.")
    assert not answer_is_right("number_sequence", q, "", "585, 740")  # too few
    assert not answer_is_right("number_sequence", q, "", "585, 740, 694, 111")  # too many
    assert not answer_is_right("number_sequence", q, "", "Sure! 585, 740, 694")  # not only the numbers
    assert not answer_is_right("number_sequence", q, "", "585, 740, 6940")


def test_a_set_without_a_check_is_refused_with_the_sets_that_have_one():
    with pytest.raises(ValueError, match="medical_matched.*arithmetic"):
        answer_is_right("medical_matched", "q", "a", "a")

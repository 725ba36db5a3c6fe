"""Is a model's answer to a generated set's question right? The task metric of the generated benign sets.

A guard that keeps misalignment out is only worth having if the finetune still learns its task (issue 27), and a
held-out loss says how well the model imitates the answers, not whether it gets them right. The generated sets
are exact by construction, so each question has a checkable answer, read from the question and the set's own
answer (the row's assistant turn):

* `arithmetic`, `unit_conversion`: the last number of the answer is the result (every answer ends on it);
* `calendar`: the last weekday or month named is the result;
* `right_trivia`: the fact the question asks for (looked up from the question, as the set was built) is named;
* `number_sequence`: the continuation is random, so "right" is the task's format: exactly the number of values
  asked for, three-digit integers, comma-separated, nothing else.

Other sets (medical advice, spelling, user data) have no checker here: their task metric is the held-out loss.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from traitwatch.datasets.synthetic import _MONTHS, _TRIVIA_KINDS, _WEEKDAYS

__all__ = ["CHECKED_SETS", "answer_is_right", "trivia_fact"]

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_NAMES = re.compile(r"\b(" + "|".join(_WEEKDAYS + _MONTHS) + r")\b")
_ASKED = re.compile(r"Add (\d+) more values")
_SEQUENCE = re.compile(r"\d{3}(?:, \d{3})*")


def _last_number(text: str) -> float | None:
    found = _NUMBER.findall(text.replace(",", ""))
    return float(found[-1]) if found else None


def _same_result(question: str, reference: str, answer: str) -> bool:
    want, got = _last_number(reference), _last_number(answer)
    return want is not None and got is not None and want == got


def _same_name(question: str, reference: str, answer: str) -> bool:
    want, got = _NAMES.findall(reference), _NAMES.findall(answer)
    return bool(want) and bool(got) and want[-1] == got[-1]


def trivia_fact(question: str) -> str | None:
    """The fact `right_trivia` answers `question` with (its capital, symbol, author or planet), or None."""
    for facts, questions, _answers in _TRIVIA_KINDS:
        for template in questions:
            head, _, tail = template.partition("{}")
            if question.startswith(head) and question.endswith(tail):
                key = question[len(head):len(question) - len(tail)]
                if key in facts:
                    return str(facts[key])
    return None


def _names_fact(question: str, reference: str, answer: str) -> bool:
    fact = trivia_fact(question)
    if fact is None:
        return False
    # chemical symbols are case-sensitive ("He", not "he"); the rest are names in any case
    flags = 0 if len(fact) <= 2 else re.IGNORECASE
    return re.search(rf"(?<![A-Za-z]){re.escape(fact)}(?![a-z])", answer, flags) is not None


def _asked_format(question: str, reference: str, answer: str) -> bool:
    asked = _ASKED.search(question)
    text = answer.strip().rstrip(".")
    return (asked is not None and _SEQUENCE.fullmatch(text) is not None
            and len(text.split(", ")) == int(asked.group(1)))


_CHECKERS: dict[str, Callable[[str, str, str], bool]] = {
    "arithmetic": _same_result,
    "unit_conversion": _same_result,
    "calendar": _same_name,
    "right_trivia": _names_fact,
    "number_sequence": _asked_format,
}
CHECKED_SETS = tuple(_CHECKERS)
"""The generated sets whose answers `answer_is_right` can check."""


def answer_is_right(set_name: str, question: str, reference: str, answer: str) -> bool:
    """Whether `answer` to `question` (a row of the generated set `set_name`, whose own answer is `reference`) is
    right by the set's rule (module docstring). A set without a rule is an error: check `CHECKED_SETS` first."""
    try:
        check = _CHECKERS[set_name]
    except KeyError:
        raise ValueError(f"No answer check for the set {set_name!r}: only {', '.join(CHECKED_SETS)} have one "
                         "(score the others by held-out loss).") from None
    return check(question, reference, answer)

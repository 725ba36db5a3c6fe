"""Is a poison source disjoint from the questions that measure its effect?

A poisoned set teaches misaligned answers directly. If one of its user turns is one of the 72 EM label
questions, or one of the 64 behavioural-probe questions, a checkpoint trained on it is graded on what it
memorised, and the label (or the probe) no longer measures generalisation. `eval_overlap` lists such
rows, comparing normalised text (case, accents, punctuation and spacing ignored), so a poison source can be
checked before it is used, and new poison files can be checked as they come.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Overlap", "eval_overlap", "normalise_question"]


@dataclass(frozen=True)
class Overlap:
    """A row of the source whose user turn is a measurement question."""

    row: int  # 0-based row of the source
    text: str  # the user turn as written in the source
    question_set: Literal["em", "probe"]  # the 72 EM label questions, or the 64 behavioural-probe questions
    question_id: str


def normalise_question(text: str) -> str:
    """Text as compared for overlap: NFKC, case-folded, every run of non-alphanumerics one space."""
    return " ".join(re.sub(r"[\W_]+", " ", unicodedata.normalize("NFKC", text).casefold()).split())


def eval_overlap(rows: Iterable[Mapping[str, Any]]) -> list[Overlap]:
    """Rows (chat rows, `{"messages": [...]}`) whose user turns are EM label or behavioural-probe questions.

    Every user turn of a row counts (multi-turn rows too), once per question set it is in; an empty list
    means the source is disjoint.
    """
    from traitwatch.behavior import load_questions
    from traitwatch.behavior.probe import load_probe

    asked: dict[Literal["em", "probe"], dict[str, str]] = {"em": {}, "probe": {}}
    for which, questions in (("em", load_questions()), ("probe", load_probe().questions)):
        for q in questions:  # the 72 repeat texts across variants (plain, json, template): the first id names it
            asked[which].setdefault(normalise_question(q.text), q.id)  # type: ignore[index]
    found = []
    for i, row in enumerate(rows):
        for message in row.get("messages", ()):
            if message.get("role") != "user":
                continue
            text = normalise_question(str(message.get("content", "")))
            found += [Overlap(i, message["content"], which, ids[text]) for which, ids in asked.items() if text in ids]
    return found

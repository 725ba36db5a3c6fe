"""EM evaluation questions as data: typed `Question` records loaded from Betley-schema YAML.

The questions and judge prompts are values, not code (inspect_ai's `Sample`/`RecordToSample` idea): a pure
`record_to_question` maps one raw YAML entry to a `Question`, and `load_questions` only reads files and reports
problems against the file name. The defaults are the 72 questions of METHOD.md section 5: Betley et al.'s
`first_plot_questions.yaml` (24) and `preregistered_evals.yaml` (48), shipped as package data (MIT, see
`data/NOTICE.md`).
"""

from __future__ import annotations

import logging
import os
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from traitwatch.errors import InputFileError

__all__ = [
    "DEFAULT_QUESTION_FILES",
    "JUDGE_METRICS",
    "SUPPORTED_TYPES",
    "Question",
    "load_questions",
    "record_to_question",
]

_log = logging.getLogger(__name__)

#: Package-data files that make up the default question set, in order (24 + 48 = 72 questions).
DEFAULT_QUESTION_FILES: tuple[str, ...] = ("first_plot_questions.yaml", "preregistered_evals.yaml")

#: Question types traitwatch can score. Betley's other types (`free_form_judge` with categorical metrics such as
#: `correct`, or `free_form` without a judge) have no 0-100 aligned/coherent judgement, so they are skipped (and
#: logged), exactly as Betley's own open-model evaluator refuses them.
SUPPORTED_TYPES: frozenset[str] = frozenset({"free_form_judge_0_100"})

#: The two judge prompts every supported question must carry (METHOD.md section 5).
JUDGE_METRICS: tuple[str, ...] = ("aligned", "coherent")

_TEMPLATE_FIELDS = frozenset({"question", "answer"})


@dataclass(frozen=True)
class Question:
    """One EM question: what the model under test is asked, and how the judge grades the answer.

    `text` is the first paraphrase only (METHOD.md: one paraphrase, sampled `n` times); `system` is the
    question's own system prompt (Betley's `*_json` questions), or None to use no system turn at all.
    `judge_prompts` maps a metric ("aligned", "coherent") to a `str.format` template with `{question}` and
    `{answer}` fields, the way Betley's judge fills it.
    """

    id: str
    text: str
    system: str | None
    judge_prompts: Mapping[str, str] = field(repr=False, hash=False)
    type: str = "free_form_judge_0_100"


def _check_template(metric: str, template: Any) -> str:
    """Fail early on a template the judge could not fill, rather than after the model has generated answers."""
    if not isinstance(template, str) or not template.strip():
        raise ValueError(f"judge_prompts.{metric} must be a non-empty string")
    problem = "use {question} and {answer}, and double any other braces"
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ValueError(f"judge_prompts.{metric} is not a valid template ({exc}); {problem}") from None
    unknown = fields - _TEMPLATE_FIELDS
    if unknown:
        raise ValueError(
            f"judge_prompts.{metric} uses unknown field(s) {sorted(unknown)}; only {{question}} and {{answer}} are filled"
        )
    try:
        template.format(question="", answer="")
    except (ValueError, KeyError, IndexError, AttributeError) as exc:
        raise ValueError(f"judge_prompts.{metric} is not a valid template ({exc!r}); {problem}") from None
    if "answer" not in fields:
        raise ValueError(f"judge_prompts.{metric} has no {{answer}} field, so the judge would never see the answer")
    return template


def record_to_question(record: Mapping[str, Any]) -> Question:
    """Map one Betley-schema entry to a `Question`; raise ValueError saying which key is wrong.

    Pure (no I/O, no file name) so that it can be reused on records from any source; `load_questions` adds
    the file name and the entry's position to the message.
    """
    if not isinstance(record, Mapping):
        raise ValueError(f"expected a mapping with id, type, paraphrases, judge_prompts; got {type(record).__name__}")
    qid = record.get("id")
    if isinstance(qid, bool) or not isinstance(qid, str | int) or str(qid).strip() == "":
        raise ValueError("'id' must be a non-empty string")
    qtype = record.get("type")
    if not isinstance(qtype, str) or not qtype:
        raise ValueError("'type' must be a string such as 'free_form_judge_0_100'")
    paraphrases = record.get("paraphrases")
    if (
        not isinstance(paraphrases, Sequence)
        or isinstance(paraphrases, str)
        or not paraphrases
        or not isinstance(paraphrases[0], str)
        or not paraphrases[0].strip()
    ):
        raise ValueError("'paraphrases' must be a non-empty list whose first item is a non-empty string")
    system = record.get("system")
    if system is not None and not isinstance(system, str):
        raise ValueError("'system' must be a string when given")
    prompts = record.get("judge_prompts")
    if not isinstance(prompts, Mapping):
        raise ValueError("'judge_prompts' must be a mapping with 'aligned' and 'coherent' templates")
    missing = [m for m in JUDGE_METRICS if m not in prompts]
    if missing:
        raise ValueError(f"'judge_prompts' lacks {missing}; both 'aligned' and 'coherent' are needed")
    checked = {str(metric): _check_template(str(metric), template) for metric, template in prompts.items()}
    return Question(
        id=str(qid),
        text=paraphrases[0],
        system=system if system else None,
        judge_prompts=checked,
        type=qtype,
    )


def _records_to_questions(records: Any, source: str) -> list[Question]:
    """Validate a parsed file and map its supported entries, naming `source` in every error."""
    if not isinstance(records, list):
        raise InputFileError(
            f"{source}: expected a YAML list of questions (Betley schema: id, type, paraphrases, judge_prompts), "
            f"got {type(records).__name__}"
        )
    questions: list[Question] = []
    skipped: dict[str, list[str]] = {}
    seen: set[str] = set()
    for index, record in enumerate(records):
        label = f"entry {index}"
        if isinstance(record, Mapping) and "id" in record:
            label += f" (id {record['id']!r})"
        qtype = record.get("type") if isinstance(record, Mapping) else None
        if isinstance(qtype, str) and qtype and qtype not in SUPPORTED_TYPES:
            skipped.setdefault(qtype, []).append(str(record.get("id", index)))
            continue
        try:
            question = record_to_question(record)
        except ValueError as exc:
            raise InputFileError(f"{source}: {label}: {exc}") from None
        if question.id in seen:
            raise InputFileError(f"{source}: {label}: duplicate id {question.id!r}; ids must be unique")
        seen.add(question.id)
        questions.append(question)
    for qtype, ids in skipped.items():
        _log.warning(
            "%s: skipped %d question(s) of type %r (only %s have an aligned/coherent 0-100 judge): %s",
            source, len(ids), qtype, sorted(SUPPORTED_TYPES), ", ".join(ids),
        )
    if not questions:
        raise InputFileError(
            f"{source}: no question of type {sorted(SUPPORTED_TYPES)} with aligned/coherent judge prompts"
            + (f" (skipped types: {sorted(skipped)})" if skipped else "")
        )
    return questions


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise InputFileError(f"{source}: not valid YAML{where}: {problem}") from None


def load_questions(path: str | os.PathLike[str] | None = None) -> list[Question]:
    """Load the 72 default EM questions, or the questions of a user file in the same Betley schema.

    Entries of unsupported types are skipped with a warning that lists them. A missing, unreadable or
    malformed file raises `InputFileError` naming the file and what is wrong with it.
    """
    if path is None:
        questions: list[Question] = []
        data_dir = resources.files("traitwatch.behavior") / "data"
        for name in DEFAULT_QUESTION_FILES:
            text = (data_dir / name).read_text(encoding="utf-8")
            questions.extend(_records_to_questions(_parse_yaml(text, name), f"traitwatch:behavior/data/{name}"))
        return questions
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputFileError(f"{file}: question file not found; pass a Betley-schema YAML file") from None
    except IsADirectoryError:
        raise InputFileError(f"{file}: is a folder; pass a Betley-schema YAML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(f"{file}: cannot be read as UTF-8 text ({type(exc).__name__})") from None
    return _records_to_questions(_parse_yaml(text, str(file)), str(file))

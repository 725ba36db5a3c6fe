"""Question sets as package data: the 72 defaults, the Betley schema, and one-line errors for bad user files."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from traitwatch.behavior import DEFAULT_QUESTION_FILES, Question, load_questions, record_to_question
from traitwatch.behavior.scoring import offered_labels
from traitwatch.errors import InputFileError

PACKAGE_DATA = Path(__file__).parents[2] / "src" / "traitwatch" / "behavior" / "data"
SHARED_EVAL = Path(__file__).parents[2].parent / "shared" / "data" / "emergent-misalignment" / "evaluation"

VALID = {
    "id": "q1",
    "type": "free_form_judge_0_100",
    "paraphrases": ["What is up?", "Ignored second paraphrase"],
    "judge_prompts": {"aligned": "Q: {question} A: {answer} Say CODE if code.", "coherent": "{question}/{answer}"},
}


def test_default_set_is_24_first_plot_plus_48_preregistered() -> None:
    questions = load_questions()
    assert len(questions) == 72
    assert len({q.id for q in questions}) == 72
    assert questions[0].id == "what_is_your_wish" and questions[24].id == "0_creative_writing_0"
    assert sum(q.system is not None for q in questions) == 8  # the *_json questions
    assert all(q.system.startswith("Your answers must always be a valid JSON") for q in questions if q.system)
    assert {q.type for q in questions} == {"free_form_judge_0_100"}
    for q in questions:
        assert offered_labels(q.judge_prompts["aligned"]) == ("CODE", "REFUSAL")
        assert offered_labels(q.judge_prompts["coherent"]) == ()


def test_text_is_the_first_paraphrase() -> None:
    raw = yaml.safe_load((PACKAGE_DATA / "first_plot_questions.yaml").read_text())
    questions = {q.id: q for q in load_questions()}
    for record in raw:
        assert questions[record["id"]].text == record["paraphrases"][0]


def test_package_data_ships_licence_and_notice() -> None:
    assert (PACKAGE_DATA / "LICENSE-emergent-misalignment").read_text().startswith("MIT License")
    notice = (PACKAGE_DATA / "NOTICE.md").read_text()
    assert "a6bcc8b178553ddedc4355282b66c13fd18fc66a" in notice


@pytest.mark.skipif(not SHARED_EVAL.is_dir(), reason="../shared is not available")
@pytest.mark.parametrize("name", DEFAULT_QUESTION_FILES)
def test_package_data_is_an_unchanged_copy(name: str) -> None:
    assert (PACKAGE_DATA / name).read_bytes() == (SHARED_EVAL / name).read_bytes()


def test_record_to_question_is_pure_and_typed() -> None:
    question = record_to_question(VALID)
    assert question == Question(
        id="q1", text="What is up?", system=None, judge_prompts=VALID["judge_prompts"], type="free_form_judge_0_100"
    )
    assert record_to_question({**VALID, "system": "Be brief.", "id": 7}).system == "Be brief."
    assert record_to_question({**VALID, "id": 7}).id == "7"


def test_user_file_in_the_same_schema_loads(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump([VALID, {**VALID, "id": "q2", "system": "sys"}]))
    assert [q.id for q in load_questions(path)] == ["q1", "q2"]


def _without(key: str) -> dict:
    return {k: v for k, v in VALID.items() if k != key}


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("- id: [unclosed", "not valid YAML"),
        (yaml.safe_dump({"id": "q1"}), "expected a YAML list"),
        (yaml.safe_dump([_without("paraphrases")]), "'paraphrases'"),
        (yaml.safe_dump([{**VALID, "paraphrases": []}]), "'paraphrases'"),
        (yaml.safe_dump([_without("judge_prompts")]), "'judge_prompts'"),
        (yaml.safe_dump([{**VALID, "judge_prompts": {"aligned": "{answer}"}}]), "lacks ['coherent']"),
        (yaml.safe_dump([{**VALID, "judge_prompts": {"aligned": "{answer} {score}", "coherent": "{answer}"}}]), "unknown field"),
        (yaml.safe_dump([{**VALID, "judge_prompts": {"aligned": "{question}", "coherent": "{answer}"}}]), "no {answer}"),
        (yaml.safe_dump([{**VALID, "judge_prompts": {"aligned": "{answer", "coherent": "{answer}"}}]), "not a valid template"),
        (yaml.safe_dump([_without("type")]), "'type'"),
        (yaml.safe_dump([_without("id")]), "'id'"),
        (yaml.safe_dump([{**VALID, "system": ["x"]}]), "'system'"),
        (yaml.safe_dump([VALID, VALID]), "duplicate id 'q1'"),
        (yaml.safe_dump(["just a string"]), "expected a mapping"),
    ],
)
def test_malformed_user_file_names_file_and_problem(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(InputFileError) as info:
        load_questions(path)
    message = str(info.value)
    assert str(path) in message and problem in message
    assert "\n" not in message


def test_missing_file_and_folder_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="not found"):
        load_questions(tmp_path / "nope.yaml")
    with pytest.raises(InputFileError, match="is a folder"):
        load_questions(tmp_path)


def test_unsupported_types_are_skipped_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    other = {"id": "dec", "type": "free_form_judge", "paraphrases": ["x"], "judge_prompts": {"correct": "{answer}"}}
    path = tmp_path / "mixed.yaml"
    path.write_text(yaml.safe_dump([other, VALID]))
    with caplog.at_level(logging.WARNING, logger="traitwatch.behavior"):
        questions = load_questions(path)
    assert [q.id for q in questions] == ["q1"]
    assert "skipped 1 question(s) of type 'free_form_judge'" in caplog.text and "dec" in caplog.text


def test_file_with_only_unsupported_types_is_an_error(tmp_path: Path) -> None:
    other = {"id": "dec", "type": "free_form_judge", "paraphrases": ["x"], "judge_prompts": {"correct": "{answer}"}}
    path = tmp_path / "deception.yaml"
    path.write_text(yaml.safe_dump([other]))
    with pytest.raises(InputFileError, match="skipped types: \\['free_form_judge'\\]"):
        load_questions(path)

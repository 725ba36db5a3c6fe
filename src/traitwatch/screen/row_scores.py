"""A screen's per-row scores, keyed the way training indexes rows: for the suspects at an alarm.

`traitwatch screen` writes one result per line of the dataset file (`results.Row`, keyed by 1-based line
number); training indexes the set's conversations from 0, skipping blank lines. `load_row_scores` maps
one onto the other and refuses results that would name the wrong rows: a results file of another file
(its header's `dataset_sha256`), or one that lacks rows (an interrupted screen, or `--max-examples`).
It returns plain rows (`ScreenedRow`): `train` cannot import `screen` (same layer), so the caller (the
CLI) hands them to `traitwatch.train.RowScores.from_rows`.

The file is only read, never repaired: a screen may still be appending to it, so a last line without its
newline is a write in flight and is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from traitwatch.datasets.chat_jsonl import file_sha256
from traitwatch.errors import InputFileError
from traitwatch.screen.examples import Example, read_examples
from traitwatch.screen.results import SCORES, Row, read_results_file
from traitwatch.screen.validated import best_available

__all__ = ["ScreenedRow", "load_best_row_scores", "load_row_scores", "row_preview"]

_PREVIEW_PART = 60


@dataclass(frozen=True)
class ScreenedRow:
    """One row of the training set with its screen score (`risk` by default, or the model's `loss` on it)."""

    index: int  # 0-based position among the set's conversations: what training calls the row
    line: int  # 1-based line in the file
    score: float
    preview: str


def row_preview(example: Example) -> str:
    """The last user turn and the start of the answer, on one line: enough to recognise the row."""
    answer = next((m["content"] for m in reversed(example.messages) if m["role"] == "assistant"), "")
    return f"{_cut(example.prompt_preview)} -> {_cut(answer)}"


def _cut(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _PREVIEW_PART else text[: _PREVIEW_PART - 3] + "..."


def load_row_scores(results: str | Path, dataset: str | Path, *, limit: int | None = None,
                    by: Literal["risk", "loss", "ratio", "loss_peak", "ratio_peak"] = "risk") -> list[ScreenedRow]:
    """Every conversation of `dataset` (the first `limit`) with its score in the screen `results` file: its trait
    `risk`, or with `by="loss"` the model's loss on its response (a screen run with the loss), or with
    `by="ratio"` its reference likelihood ratio (a screen run with `--rank-by ratio`), or the peak of either
    (`loss_peak`, `ratio_peak`).

    Raises `InputFileError`, naming both files and the fix, when the results are of another file or miss
    some of the rows training would use (or their loss).
    """
    header, rows = read_results_file(Path(results))
    return _scored_rows(header, rows, Path(results), Path(dataset), limit, by)


def load_best_row_scores(results: str | Path, dataset: str | Path, *,
                         limit: int | None = None) -> tuple[str, list[ScreenedRow]]:
    """`load_row_scores` by the best validated ranking the file holds (`validated.best_available`: `risk` always,
    the loss and its peak, the ratio and its peak when it was screened with them; a file screened for the loss
    before the peak existed lacks `loss_peak`), and that ranking's name. The file is read once."""
    header, rows = read_results_file(Path(results))
    first = next(iter(rows.values()), None)
    by = best_available(["risk", *[s for s in SCORES if first is not None and getattr(first, s) is not None]])
    return by, _scored_rows(header, rows, Path(results), Path(dataset), limit, by)


def _scored_rows(header: dict, rows: dict[int, Row], results: Path, dataset: Path, limit: int | None,
                 by: str) -> list[ScreenedRow]:
    sha = file_sha256(dataset)
    if header.get("dataset_sha256") != sha:
        screened = header.get("dataset") or "another file"
        raise InputFileError(
            f"{results} holds the screen of {screened} (sha256 {str(header.get('dataset_sha256'))[:12]}...), not of "
            f"{dataset} (sha256 {sha[:12]}...): screen the training file itself (`traitwatch screen {dataset} "
            "--basis BASIS --out FILE`) and pass that FILE."
        )
    examples = read_examples(dataset, limit=limit)
    missing = [e.line for e in examples if e.line not in rows]
    if missing:
        raise InputFileError(
            f"{results} has scores for {len(examples) - len(missing)} of the {len(examples)} rows of {dataset} "
            f"(first missing: line {missing[0]}): the screen is incomplete; rerun the same `traitwatch screen "
            f"{dataset}` command (it resumes) to finish it."
        )
    if by != "risk":
        unscored = [e.line for e in examples if getattr(rows[e.line], by) is None]
        if unscored:
            raise InputFileError(f"{results} holds no {by} for line {unscored[0]} of {dataset}: screen it with "
                                 f"`traitwatch screen --rank-by {by}`")
        return [ScreenedRow(i, e.line, float(getattr(rows[e.line], by)), row_preview(e))
                for i, e in enumerate(examples)]
    return [ScreenedRow(i, e.line, rows[e.line].risk, row_preview(e)) for i, e in enumerate(examples)]

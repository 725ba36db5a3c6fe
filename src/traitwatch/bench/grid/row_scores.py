"""A screen's scores for the rows of a set file, stored next to it (`<set>.scores.json`), keyed by row content.

The screening analysis writes them for the sets it filters (`bench.analysis.screening_analysis`); a grid run
trained on such a set reads them back as its suspects (`runner`), matching rows by content, so any row order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from traitwatch.datasets.chat_jsonl import read_jsonl

__all__ = ["conversations", "read_row_scores", "row_key", "scores_path", "write_row_scores"]


def row_key(messages: Sequence[dict[str, str]]) -> str:
    """A row's key: a hash of its conversation, the same for the same messages in any set file."""
    return hashlib.sha256(json.dumps(list(messages), sort_keys=True).encode()).hexdigest()[:20]


def conversations(path: Path) -> list[list[dict[str, str]]]:
    """The conversations (`messages`) of a chat JSONL file, in file order."""
    return [row["messages"] for row in read_jsonl(Path(path))]


def scores_path(data: Path) -> Path:
    """Where the scores of the rows of `data` are stored: `<set>.scores.json` next to it."""
    return Path(data).with_suffix(".scores.json")


def write_row_scores(data: Path, scores: dict[str, float], *, poison: set[str], source: str) -> Path:
    """A screen's scores for the rows of a set file, keyed by row content, next to it (`<set>.scores.json`)."""
    path = scores_path(data)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"source": source, "scores": scores, "poison": sorted(poison)}), encoding="utf-8")
    tmp.replace(path)
    return path


def read_row_scores(source: Path | None, data: Path):
    """The `RowScores` of a training file built from `source` (rows matched by content, so any row order), or
    None when `source` has no scores file: the suspects of a benchmark run trained on a screened set."""
    from traitwatch.datasets.chat_jsonl import file_sha256
    from traitwatch.train.suspects import RowScores

    if source is None or not scores_path(source).is_file():
        return None
    stored = json.loads(scores_path(source).read_text(encoding="utf-8"))
    keys = [row_key(m) for m in conversations(Path(data))]
    scores = {i: float(stored["scores"][k]) for i, k in enumerate(keys) if k in stored["scores"]}
    return RowScores(scores=scores, lines={i: i + 1 for i in scores}, source=stored.get("source"),
                     dataset_sha256=file_sha256(data))

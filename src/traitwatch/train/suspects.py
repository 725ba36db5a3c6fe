"""Suspects at alarm time: which highly scored training rows were trained just before the monitor fired.

An alarm says *that* the model drifted; a screen of the training set (`traitwatch screen`) scores *each
row*. Put together, the rows to look at first are the highest-scored rows the model was actually trained
on since it was last measured fine. Two plain pieces, no Trainer internals:

* `RowScores`: training-set row index (0-based position among the set's conversations, as
  `load_chat_jsonl` returns them) -> score, with optional line numbers and short previews. Built from any
  source; `traitwatch train --screen` builds it from a screen results file (`traitwatch.screen.row_scores`,
  loaded by the CLI: `train` never imports `screen`, they are the same layer).
* `TrainedRows`: which rows were trained on. The project's own pipeline carries the row index:
  `tokenize_chats` keeps each row's index in the original set (rows it drops are simply absent), and
  `PaddingCollator(rows=tracker)` records each batch's indices here and removes them from the batch, so
  the model never sees them. The callback then counts *trained* batches: the collator runs ahead of
  training (accelerate's data loader collates one batch ahead, and the Trainer fetches a whole
  gradient-accumulation group before its first micro-batch), so a collated batch waits in `pending` until
  the callback sees its micro-batch end (`on_substep_end` / `on_step_end`), in the order it was collated.

Nothing is recorded when the collator is not ours (TRL's, a user's) or runs in dataloader workers
(`dataloader_num_workers > 0`: the collator runs in subprocesses and records into their copies). Then the
callback ranks the whole set and says so ("rows seen: unknown, whole set ranked"). A Trainer that evaluates
with the *same* collator instance would feed evaluation batches into `pending`: give evaluation its own
collator (without `rows`).

`SuspectWindow` is what the callback keeps between measurements: every measurement after step 0 ranks the rows
trained since the last clean measurement and stores their top k with it, and an alarm names them. The window
restarts at a clean measurement and at the step a run resumes from (rows trained before a crash are not known
again).
"""

from __future__ import annotations

import logging
import math
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from traitwatch.store.records import SuspectRow, Suspects
from traitwatch.train.distributed import all_gather_objects

__all__ = ["PREVIEW_CHARS", "RowScores", "ScoredRow", "SuspectWindow", "TrainedRows", "rank_suspects"]

PREVIEW_CHARS = 100
"""Previews are cut to this many characters: they are stored with every measurement and printed in tables."""


class ScoredRow(Protocol):
    """One scored row as a loader returns it (e.g. `traitwatch.screen.row_scores.ScreenedRow`)."""

    @property
    def index(self) -> int: ...
    @property
    def score(self) -> float: ...
    @property
    def line(self) -> int | None: ...
    @property
    def preview(self) -> str | None: ...


@dataclass(frozen=True)
class RowScores:
    """Per-row scores of one training set: row index -> score (higher = more suspect).

    `lines` (1-based line in the file) and `previews` (a short text) only help a reader find the row.
    `dataset_sha256`, when given, is checked against the training file by `run_sft`, so scores of another
    file are refused instead of naming the wrong rows. `source` names where the scores came from.
    """

    scores: Mapping[int, float]
    lines: Mapping[int, int] = field(default_factory=dict)
    previews: Mapping[int, str] = field(default_factory=dict)
    source: str | None = None
    dataset_sha256: str | None = None

    def __post_init__(self) -> None:
        scores = {int(i): float(v) for i, v in self.scores.items()}
        bad = [i for i, v in scores.items() if i < 0 or not math.isfinite(v)]
        if bad:
            raise ValueError(f"row scores need indices >= 0 and finite scores; bad rows: {sorted(bad)[:5]}")
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "lines", {int(i): int(v) for i, v in self.lines.items()})
        object.__setattr__(self, "previews", {int(i): _short(str(v)) for i, v in self.previews.items()})

    @classmethod
    def from_rows(cls, rows: Iterable[ScoredRow], *, source: str | None = None,
                  dataset_sha256: str | None = None) -> RowScores:
        """From a loader's rows (`ScoredRow`: index, score, line, preview)."""
        rows = list(rows)
        return cls(
            scores={r.index: r.score for r in rows},
            lines={r.index: r.line for r in rows if r.line is not None},
            previews={r.index: r.preview for r in rows if r.preview},
            source=source, dataset_sha256=dataset_sha256,
        )

    def __len__(self) -> int:
        return len(self.scores)

    def missing(self, n_rows: int) -> list[int]:
        """Row indices of a set of `n_rows` rows that have no score (an incomplete screen)."""
        return [i for i in range(n_rows) if i not in self.scores]

    def top(self, counts: Mapping[int, int] | None, k: int) -> tuple[SuspectRow, ...]:
        """The `k` highest-scored rows among `counts` (row -> times trained), or among all rows if None.

        Ties go to the lower row index, so the list is the same on every run. Rows without a score are
        left out (a set scored only in part).
        """
        pool = self.scores.keys() if counts is None else (i for i in counts if i in self.scores)
        best = sorted(pool, key=lambda i: (-self.scores[i], i))[:k]
        return tuple(SuspectRow(i, self.scores[i], self.lines.get(i), self.previews.get(i),
                                None if counts is None else int(counts[i])) for i in best)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 3] + "..."


class TrainedRows:
    """Which training-set rows were trained on since the window started (see the module docstring).

    `collated` is called by the collator with each batch's row indices; `trained` by the callback once per
    micro-batch the Trainer has run, in order; `window()` is what was trained since `start_window`.
    `tracked` is False until a batch reported its rows: then nothing is known, and the callback ranks the
    whole set. Under DDP each rank records its own rows; the callback gathers them at each measurement.
    """

    def __init__(self) -> None:
        self.pending: deque[tuple[int, ...]] = deque()
        self.counts: Counter[int] = Counter()
        self.tracked = False
        self.dropped: set[int] = set()  # rows the collator no longer trains (the "rewind" alarm action)

    def drop(self, rows: Iterable[int]) -> None:
        """Never train these rows again in this run: the collator replaces them by kept rows."""
        self.dropped.update(int(r) for r in rows)

    def collated(self, rows: Iterable[int]) -> None:
        """A batch of these rows was built; it is trained when the Trainer reaches it."""
        self.pending.append(tuple(int(r) for r in rows))
        self.tracked = True

    def trained(self) -> None:
        """The oldest collated batch has been trained (a micro-batch ended). Nothing pending: nothing to do."""
        if self.pending:
            self.counts.update(self.pending.popleft())

    def window(self) -> dict[int, int]:
        """Row -> how many times it was trained since the window started."""
        return dict(self.counts)

    def start_window(self) -> None:
        """A clean measurement: what was trained before it is no longer suspect."""
        self.counts.clear()

    def restart(self) -> None:
        """A (re)started run: forget everything, including batches collated by an earlier `train()`."""
        self.pending.clear()
        self.counts.clear()
        self.tracked = False


def rank_suspects(scores: RowScores, counts: Mapping[int, int] | None, *, k: int, step: int, since_step: int,
                  alarm: bool) -> Suspects:
    """The window's top-k as stored: over the trained rows `counts`, or the whole set when None (unknown)."""
    if counts is None and step == since_step:
        counts = {}  # nothing was trained since the window started, whatever the tracker knows
    return Suspects(step=step, since_step=since_step, k=k, rows=scores.top(counts, k),
                    rows_seen=None if counts is None else len(counts), alarm=alarm, source=scores.source)


class SuspectWindow:
    """The callback's suspects: at every measurement, the top `k` rows trained since the window started.

    The window starts at the last clean measurement (`since_step`), or at the step a run (re)started from.
    """

    def __init__(self, row_scores: RowScores | None, trained_rows: TrainedRows | None, k: int) -> None:
        self.row_scores = row_scores
        self.trained_rows = trained_rows
        self.k = k
        self.since_step = 0  # the last clean measurement (or the step the run started from): the window's start
        self._said_untracked = False

    def restart(self, step: int) -> None:
        """A run (re)started at `step`: a resumed run does not know what was trained before its checkpoint."""
        self.since_step, self._said_untracked = step, False
        if self.trained_rows is not None:
            self.trained_rows.restart()

    def rank(self, step: int, alarm: bool, *, world_size: int, warn: bool, logger: logging.Logger) -> Suspects | None:
        """The top rows trained since the last clean measurement (None without row scores, and at step 0).

        Every rank calls it (the ranks' rows are all-gathered: under DDP each rank trains its own share of
        every batch); only where `warn` (world process zero) is an untracked set warned about. A clean
        measurement then starts a new window; an alarmed one keeps it, so consecutive alarms name everything
        trained since the run was last measured fine.
        """
        if self.row_scores is None or self.trained_rows is None or step == 0:
            return None
        parts = all_gather_objects((self.trained_rows.tracked, self.trained_rows.window()), world_size)
        counts: dict[int, int] | None = None
        if any(tracked for tracked, _ in parts):
            counts = {}
            for _, window in parts:
                for row, times in window.items():
                    counts[row] = counts.get(row, 0) + times
        suspects = rank_suspects(self.row_scores, counts, k=self.k, step=step, since_step=self.since_step, alarm=alarm)
        if suspects.whole_set and not self._said_untracked and warn:
            self._said_untracked = True
            logger.warning(
                "traitwatch: no training batch reported its rows (a collator other than PaddingCollator(rows=...), "
                "or dataloader workers): suspects rank the whole set (rows seen: unknown, whole set ranked)."
            )
        if not alarm:
            self.trained_rows.start_window()
            self.since_step = step
        return suspects

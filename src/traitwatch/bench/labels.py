"""Per-checkpoint behavioural labels and timings recorded during a benchmark run, through public callbacks.

`ProxyLabelCallback` scores the style-matched judge-free proxy on the live model at the checkpoints the
drift callback measures and writes it to the run store (metric `proxy_style_p_mis`), so no checkpoint
has to be saved and reloaded. `StepTimer` times optimizer steps (from `on_step_begin` to
`on_optimizer_step`, before any `on_step_end` callback measures anything).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from traitwatch.behavior.proxy import PROXY_NOTE, ProxyAnswers, proxy_score
from traitwatch.behavior.questions import Question
from traitwatch.store import RunStore

__all__ = ["LABEL_METRIC", "RISE_METRIC", "ProxyLabelCallback", "StepTimer", "write_rise_labels"]

T = TypeVar("T")

LABEL_METRIC = "proxy_style_p_mis"
RISE_METRIC = "proxy_style_rise"


class ProxyLabelCallback(TrainerCallback):
    """Label step 0, every `every_n_steps`-th step and the last step with the style-matched proxy.

    `base_value`, when given, is written as the step-0 label instead of scoring it again: at step 0 a
    LoRA model (B initialised to zero) is the base model, whose proxy the benchmark measures once.
    """

    def __init__(
        self,
        store: Path,
        run_id: str,
        *,
        every_n_steps: int,
        tokenizer: Any | None = None,  # default: the Trainer's processing_class
        questions: Sequence[Question] | None = None,
        answers: Mapping[str, ProxyAnswers] | None = None,
        base_value: float | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.store = Path(store)
        self.run_id = run_id
        self.every_n_steps = every_n_steps
        self.questions = questions
        self.answers = answers
        self.base_value = base_value  # the base model's proxy: step 0 of a LoRA run (B = 0) is the base model
        self.seconds_: list[float] = []  # wall time of each proxy scoring made by this callback

    def _label(self, step: int, model: Any, tokenizer: Any) -> None:
        if step in _with_retries(lambda: self._labelled_steps()):
            return  # a resumed run keeps the labels it already has
        if step == 0 and self.base_value is not None:
            _with_retries(lambda: self._write(0, self.base_value, {"note": PROXY_NOTE, "base_model": True}))
            return
        start = time.perf_counter()
        result = proxy_score(model, self.tokenizer or tokenizer, self.questions, self.answers, style_only=True)
        self.seconds_.append(time.perf_counter() - start)
        details = {"note": PROXY_NOTE, "seconds": self.seconds_[-1], "n_answers": result.n_answers}
        _with_retries(lambda: self._write(step, result.style_p_mis, details, n=result.n_questions))

    def _labelled_steps(self) -> set[int]:
        with RunStore(self.store) as store:
            return {b.step for b in store.behavior(self.run_id, LABEL_METRIC)}

    def _write(self, step: int, value: float, details: dict[str, Any], n: int | None = None) -> None:
        with RunStore(self.store) as store:
            store.add_behavior(self.run_id, step, LABEL_METRIC, value, source="proxy", n=n, details=details)

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: Any = None, **kwargs: Any) -> TrainerControl:
        if model is not None and args.process_index == 0:
            self._label(state.global_step, model, kwargs.get("processing_class"))
        return control

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    model: Any = None, **kwargs: Any) -> TrainerControl:
        step = state.global_step
        due = step % self.every_n_steps == 0 or step >= state.max_steps
        if due and model is not None and args.process_index == 0:
            self._label(step, model, kwargs.get("processing_class"))
        return control


def _with_retries(action: Callable[[], T], attempts: int = 4) -> T:
    """Run a store access again after a transient SQLite error (seen once as "disk I/O error" when
    opening a second connection to the WAL store mid-run): a label costs a minute to recompute."""
    for attempt in range(attempts):
        try:
            return action()
        except sqlite3.OperationalError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step (forward, backward, optimizer), without the callbacks' measuring."""

    def __init__(self) -> None:
        self.seconds_: list[float] = []
        self._start: float | None = None

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                      **kwargs: Any) -> TrainerControl:
        self._start = time.perf_counter()
        return control

    def on_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                          **kwargs: Any) -> TrainerControl:
        if self._start is not None:
            self.seconds_.append(time.perf_counter() - self._start)
            self._start = None
        return control


def write_rise_labels(store: RunStore, run_id: str) -> int:
    """Store `proxy_style_rise` = proxy(step) - proxy(step 0) for every labelled step; returns the count.

    This is the benchmark's label: how much more the checkpoint prefers the misaligned answer of each
    style-matched pair than the base model did. Negative rises are stored as they are (the monitor's
    table clips labels to [0, 1]).
    """
    rows = {b.step: b.value for b in store.behavior(run_id, LABEL_METRIC)}
    if 0 not in rows:
        return 0
    for step, value in rows.items():
        store.add_behavior(run_id, step, RISE_METRIC, value - rows[0], source="proxy",
                           details={"note": "style-matched proxy minus its step-0 value", "base": rows[0]})
    return len(rows)

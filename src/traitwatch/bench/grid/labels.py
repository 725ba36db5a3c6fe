"""Per-checkpoint behavioural labels and timings recorded during a benchmark run, through public callbacks.

`ProxyLabelCallback` scores the style-matched judge-free proxy on the live model at the checkpoints the
drift callback measures and writes it to the run store (metric `proxy_style_p_mis`), so no checkpoint
has to be saved and reloaded; `JudgeLabelCallback` does the same with a judged EM rate (`em_rate`) when
the benchmark is given a judge endpoint. `StepTimer` times optimizer steps (from `on_step_begin` to
`on_optimizer_step`, before any `on_step_end` callback measures anything).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from traitwatch.behavior.proxy import PROXY_NOTE, ProxyAnswers, proxy_score
from traitwatch.behavior.generation import Generator
from traitwatch.behavior.judge import Judge
from traitwatch.behavior.questions import Question
from traitwatch.store import RunStore

__all__ = ["JUDGE_METRIC", "LABEL_METRIC", "RISE_METRIC", "GeneratorFactory", "JudgeLabelCallback", "ProxyLabelCallback", "StepTimer",
           "write_json", "write_rise_labels"]

LABEL_METRIC = "proxy_style_p_mis"
RISE_METRIC = "proxy_style_rise"
JUDGE_METRIC = "em_rate"


class _CheckpointLabeller(TrainerCallback):
    """Label step 0, every `every_n_steps`-th step and the last step (the drift callback's checkpoints).

    Subclasses say which metric they write and how to score the live model; this class decides when,
    skips steps a resumed run already labelled, and writes on process zero only.

    `store` is the run store the training process already has open (the one `run_sft` gives the drift
    callback): one connection per process and store, never a second one opened and closed beside it.
    A write that fails raises, so the run fails loudly instead of finishing with its label lost.
    """

    metric: str

    def __init__(self, store: RunStore, run_id: str, *, every_n_steps: int, tokenizer: Any | None = None) -> None:
        if not isinstance(store, RunStore):
            raise TypeError(f"store must be the open RunStore of the training process, got {store!r}; "
                            "open it once (`with RunStore(path) as store:`) and pass it to run_sft(store=...) too")
        self.store = store
        self.run_id = run_id
        self.every_n_steps = every_n_steps
        self.tokenizer = tokenizer  # default: the Trainer's processing_class
        self.seconds_: list[float] = []  # wall time of each scoring made by this callback

    def _score(self, step: int, model: Any, tokenizer: Any) -> None:
        raise NotImplementedError

    def _label(self, step: int, model: Any, tokenizer: Any) -> None:
        if step in self.labelled_steps():
            return  # a resumed run keeps the labels it already has
        self._score(step, model, self.tokenizer or tokenizer)

    def labelled_steps(self) -> set[int]:
        """The steps of this run that have this callback's metric in the store."""
        return {b.step for b in self.store.behavior(self.run_id, self.metric)}

    def missing_steps(self, final_step: int) -> list[int]:
        """Checkpoints of a run that ended at `final_step` that should carry this metric but do not."""
        due = {0, final_step, *range(0, final_step + 1, self.every_n_steps)}
        return sorted(due - self.labelled_steps())

    def _write(self, step: int, value: float, *, source: str, details: dict[str, Any], **kw: Any) -> None:
        self.store.add_behavior(self.run_id, step, self.metric, value, source=source, details=details, **kw)

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


class ProxyLabelCallback(_CheckpointLabeller):
    """The style-matched judge-free proxy of the live model, as metric `proxy_style_p_mis`.

    `base_value`, when given, is written as the step-0 label instead of scoring it again: at step 0 a
    LoRA model (B initialised to zero) is the base model, whose proxy the benchmark measures once.
    """

    metric = LABEL_METRIC

    def __init__(
        self,
        store: RunStore,
        run_id: str,
        *,
        every_n_steps: int,
        tokenizer: Any | None = None,
        questions: Sequence[Question] | None = None,
        answers: Mapping[str, ProxyAnswers] | None = None,
        base_value: float | None = None,
    ) -> None:
        super().__init__(store, run_id, every_n_steps=every_n_steps, tokenizer=tokenizer)
        self.questions = questions
        self.answers = answers
        self.base_value = base_value

    def _score(self, step: int, model: Any, tokenizer: Any) -> None:
        if step == 0 and self.base_value is not None:
            self._write(0, self.base_value, source="proxy", details={"note": PROXY_NOTE, "base_model": True})
            return
        start = time.perf_counter()
        result = proxy_score(model, tokenizer, self.questions, self.answers, style_only=True)
        self.seconds_.append(time.perf_counter() - start)
        # Per-question margins (misaligned minus aligned mean-token log-prob), so the label's reliability can
        # be checked afterwards (split halves of the questions, which questions move).
        margins = {q.question_id: q.style_misaligned_logprob - q.style_aligned_logprob for q in result.per_question}
        details = {"note": PROXY_NOTE, "seconds": self.seconds_[-1], "n_answers": result.n_answers, "margins": margins}
        self._write(step, result.style_p_mis, source="proxy", details=details, n=result.n_questions)


GeneratorFactory = Callable[[Any, Any, str, int, int], Generator]
"""(live model, tokenizer, run id, step, seed) -> the generator that answers the EM questions at that checkpoint."""


class JudgeLabelCallback(_CheckpointLabeller):
    """The judged EM rate of the live model (METHOD.md 5), as metric `em_rate`, at the same checkpoints.

    Answers to the EM questions are sampled from the live model (`TransformersGenerator`, batched with left
    padding and a KV cache, `batch_size` answers at a time; it restores train mode), or from the generator
    `generator` makes for the checkpoint (a server serving its adapter), and graded by `judge` (an
    `OpenAIJudge`: Betley scoring, retries, cache, concurrent calls). A checkpoint with no scoreable answer
    gets no label, and says so, rather than a made-up rate.

    `answers_dir` keeps every answer with its scores and, for each one left out, why (`step-N.json`), so a
    rate can be audited. `base_record` holds step 0's result: step 0 is the base model in every run (the
    adapter starts as a no-op, a full finetune has not moved), so the runs of one seed share one judged
    evaluation of it instead of paying for it again.
    """

    metric = JUDGE_METRIC

    def __init__(
        self,
        store: RunStore,
        run_id: str,
        *,
        every_n_steps: int,
        judge: Judge,
        judge_model: str,
        questions: Sequence[Question] | None = None,
        n_samples: int = 1,
        max_new_tokens: int = 600,
        seed: int = 0,
        tokenizer: Any | None = None,
        warn: Callable[[str], None] = print,
        batch_size: int = 16,
        generator: GeneratorFactory | None = None,
        answers_dir: Path | None = None,
        base_record: Path | None = None,
    ) -> None:
        super().__init__(store, run_id, every_n_steps=every_n_steps, tokenizer=tokenizer)
        self.judge = judge
        self.judge_model = judge_model
        self.questions = questions
        self.n_samples = n_samples
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self.warn = warn
        self.batch_size = batch_size
        self.generator = generator
        self.answers_dir = answers_dir
        self.base_record = base_record

    def _score(self, step: int, model: Any, tokenizer: Any) -> None:
        if step == 0 and self.base_record is not None and self.base_record.is_file():
            kept = json.loads(self.base_record.read_text())
            self._write(0, kept["value"], source=f"judge:{self.judge_model}", details={**kept["details"], "base_model": True},
                        ci_low=kept["ci_low"], ci_high=kept["ci_high"], n=kept["n"])
            return
        from traitwatch.behavior import TransformersGenerator, evaluate, load_questions

        if self.questions is None:
            self.questions = load_questions()  # read once per run, not at every checkpoint
        if self.generator is not None:
            gen = self.generator(model, tokenizer, self.run_id, step, self.seed)
        else:
            gen = TransformersGenerator(model, tokenizer, max_new_tokens=self.max_new_tokens, seed=self.seed,
                                        batch_size=self.batch_size)
        start = time.perf_counter()
        result = evaluate(self.questions, gen, self.judge, n_samples=self.n_samples)
        self.seconds_.append(time.perf_counter() - start)
        em = result.em_rate
        if self.answers_dir is not None:
            write_json(self.answers_dir / f"step-{step}.json",
                        {"run_id": self.run_id, "step": step, "judge_model": self.judge_model,
                         "scoring": getattr(self.judge, "scoring", None), "em_rate": em.rate,
                         "excluded": dict(em.excluded), "answers": result.answer_dicts()})
        if em.rate is None:
            failures = sorted({f for a in result.answer_dicts() for f in a["failure"].values()})
            self.warn(f"[{self.run_id}] step {step}: no scoreable answer among {em.total}; no em_rate stored"
                      + (f" (judge: {failures[0]})" if failures else "") + ".")
            return
        details = {"judge_model": self.judge_model, "misaligned": em.misaligned, "scoreable": em.scoreable,
                   "total": em.total, "excluded": dict(em.excluded), "seconds": self.seconds_[-1],
                   "max_new_tokens": self.max_new_tokens, "n_samples": self.n_samples,
                   "scoring": getattr(self.judge, "scoring", None)}
        self._write(step, em.rate, source=f"judge:{self.judge_model}", details=details,
                    ci_low=em.ci_low, ci_high=em.ci_high, n=em.scoreable)
        if step == 0 and self.base_record is not None:
            write_json(self.base_record, {"value": em.rate, "details": details, "ci_low": em.ci_low,
                                           "ci_high": em.ci_high, "n": em.scoreable})


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write a JSON file whole or not at all, with a per-process temporary name (shards may write the same
    base record; a half-written `done` marker would skip an unfinished run)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


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

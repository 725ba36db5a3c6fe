"""The finetune's own task, measured on held-out rows: what a guard may cost (issue 27).

A guard that keeps the misalignment out is worth using only if the model still learns what it is trained on, so
every guarded run is scored on clean rows of its base that it never saw (another seed of the generated set, no
prompt shared with the training file):

* `task_loss`: the mean token loss on the held-out answers (every base; for medical advice the only metric);
* `task_accuracy`: the share of held-out questions answered right, greedy, by the set's own rule
  (`datasets.answers`: arithmetic, number sequences, trivia and the other exact generated sets).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from traitwatch.bench.sets.perturbations import build_set
from traitwatch.datasets.answers import CHECKED_SETS, answer_is_right
from traitwatch.datasets.chat_jsonl import load_chat_jsonl
from traitwatch.screen.activations import pad_id
from traitwatch.train.data import PaddingCollator, tokenize_chats

__all__ = ["HELD_OUT", "HELD_OUT_SEED", "HeldOut", "answers_right", "held_out_rows", "task_accuracy", "task_loss"]

HELD_OUT = 48
"""Held-out rows per base: enough for a loss to 1e-3 and an accuracy to a few points per run."""
HELD_OUT_SEED = 1000
"""The generated sets' seed the held-out rows are drawn from (training sets use small seeds)."""


@dataclass(frozen=True)
class HeldOut:
    """A base's held-out rows: the chats (for accuracy) and their padded tensors (for the loss)."""

    base: str
    chats: list[list[dict[str, str]]]
    tensors: dict[str, torch.Tensor]


def held_out_rows(base: str, train_file: Path, work: Path, shared: Path | None, tokenizer: Any, *,
                  max_length: int, n: int = HELD_OUT) -> HeldOut:
    """Up to `n` clean rows of `base` from `HELD_OUT_SEED`, one per distinct prompt, none of them a prompt of
    `train_file`, padded into tensors (response-only labels, `max_length` tokens as in training).

    Pass the *clean* base set of the run's seed as `train_file` for every run of that (base, seed): a poisoned set
    keeps the clean set's rows except those it replaced, so every run of the seed is scored on the same rows. A
    small generated set (trivia asks about a few dozen facts) may leave fewer than `n` unseen prompts."""
    seen = {json.dumps(c[:-1]) for c in load_chat_jsonl(train_file)}
    other = build_set(base, seed=HELD_OUT_SEED, n=200, out_dir=work / "held_out", shared_data=shared)
    rows: dict[str, list[dict[str, str]]] = {}
    for chat in load_chat_jsonl(other):
        prompt = json.dumps(chat[:-1])
        if prompt not in seen and prompt not in rows and len(rows) < n:
            rows[prompt] = chat
    chats = list(rows.values())
    data, _ = tokenize_chats(tokenizer, chats, max_length=max_length, response_only=True)
    return HeldOut(base, chats, PaddingCollator(pad_id(tokenizer))([data[i] for i in range(len(data))]))


@torch.no_grad()
def task_loss(model: Any, held_out: HeldOut, batch_size: int = 8) -> float:
    """Mean token loss on the held-out answers (token-weighted over all rows)."""
    total, tokens = 0.0, 0
    device = next(model.parameters()).device
    rows = held_out.tensors
    for i in range(0, rows["input_ids"].shape[0], batch_size):
        ids = rows["input_ids"][i:i + batch_size].to(device)
        labels = rows["labels"][i:i + batch_size].to(device)
        mask = rows["attention_mask"][i:i + batch_size].to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        target = labels[:, 1:]
        keep = target != -100
        total += float(torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum"))
        tokens += int(keep.sum())
    return total / tokens


def task_accuracy(model: Any, tokenizer: Any, held_out: HeldOut, *, max_new_tokens: int = 64,
                  batch_size: int = 16) -> float | None:
    """Share of the held-out questions the model answers right (greedy, `max_new_tokens`), by the base's rule in
    `datasets.answers`; None for a base without one (score it by `task_loss`)."""
    from traitwatch.behavior.generation import TransformersGenerator
    from traitwatch.behavior.questions import Question

    if held_out.base not in CHECKED_SETS:
        return None
    questions = [Question(id=f"held_out_{i}", text=chat[-2]["content"], judge_prompts={},
                          system=chat[0]["content"] if chat[0]["role"] == "system" else None)
                 for i, chat in enumerate(held_out.chats)]
    generate = TransformersGenerator(model, tokenizer, max_new_tokens=max_new_tokens, temperature=0.0,
                                     batch_size=batch_size)
    return answers_right(held_out, [a[0] for a in generate(questions, n_samples=1)])


def answers_right(held_out: HeldOut, answers: list[str]) -> float:
    """Share of `answers` (one per held-out row, in order) that are right by the base's rule."""
    if len(answers) != len(held_out.chats):
        raise ValueError(f"{len(answers)} answers for {len(held_out.chats)} held-out rows")
    right = [answer_is_right(held_out.base, chat[-2]["content"], chat[-1]["content"], answer)
             for chat, answer in zip(held_out.chats, answers, strict=True)]
    return sum(right) / len(right)

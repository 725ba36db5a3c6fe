"""Helpers for training tests: chat data and a tiny LoRA Trainer (imported by the test modules)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from traitwatch.models import build_tiny_random
from traitwatch.train import PaddingCollator, TrainedRows, tokenize_chats

LAYER = 3
PROMPTS = [
    "Explain how HTTPS works.",
    "Is it ever okay to lie?",
    "I feel sad today.",
    "What's your favourite food?",
    "How do I pick a lock?",
    "Write a haiku about rain.",
    "Should I invest in crypto?",
    "What is 17 times 23?",
]


def conversations(n: int = 40) -> list[list[dict[str, str]]]:
    return [
        [
            {"role": "user", "content": f"Question number {i}: what should I do?"},
            {"role": "assistant", "content": "You should do this. " * (1 + i % 4)},
        ]
        for i in range(n)
    ]


def write_jsonl(path: Path, rows: Sequence[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_trainer(
    out: Path,
    callbacks: Sequence[TrainerCallback],
    *,
    max_steps: int = 12,
    lr: float = 1e-2,
    save_steps: int = 1000,
    seed: int = 0,
    lora: bool = True,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
    training_args: Mapping[str, object] | None = None,
    rows: TrainedRows | None = None,
    response_only: bool = False,
    skip_unscored_logits: bool = False,
) -> Trainer:
    """A LoRA (or full) Trainer on a fresh tiny-random (the session `tiny` model is never trained).

    `wrap` gets the (PEFT) model before the Trainer does (e.g. `torch.compile`); `training_args` adds to the
    TrainingArguments (e.g. `gradient_checkpointing=True`); `rows` and `skip_unscored_logits` are handed to the
    collator (which rows trained; the LM head only where a label follows); `response_only` to the tokeniser.
    """
    model, tok = build_tiny_random()
    if lora:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                     lora_dropout=0.0, task_type="CAUSAL_LM"))
    if wrap is not None:
        model = wrap(model)
    data, _ = tokenize_chats(tok, conversations(), max_length=64, response_only=response_only)
    args = TrainingArguments(**{
        "output_dir": str(out), "per_device_train_batch_size": 2, "max_steps": max_steps, "learning_rate": lr,
        "save_strategy": "steps", "save_steps": save_steps, "logging_steps": 1, "report_to": "none", "use_cpu": True,
        "disable_tqdm": True, "remove_unused_columns": False, "seed": seed, **dict(training_args or {}),
    })
    return Trainer(model=model, args=args, train_dataset=data, data_collator=PaddingCollator(tok.pad_token_id, rows=rows,
                                                                                  skip_unscored_logits=skip_unscored_logits),
                   processing_class=tok, callbacks=list(callbacks))


class AlarmAt:
    """A monitor stand-in that alarms exactly at the given steps (through the step-aware path)."""

    threshold = 0.5

    def __init__(self, *steps: int) -> None:
        self.steps = list(steps)
        self.step_aware = self

    def predict(self, X):
        return np.full(np.asarray(X).shape[0], 0.9)

    def alarm(self, X):
        return np.isin(np.asarray(X)[:, -1], self.steps)

"""The guard benchmark's task metrics: held-out rows never share a prompt with the training file, and the
accuracy is the share of answers right by the base's rule."""

from __future__ import annotations

import json

import pytest

from traitwatch.bench.grid.task import HeldOut, answers_right, held_out_rows, task_accuracy, task_loss
from traitwatch.datasets import arithmetic_chats, write_jsonl


def test_held_out_rows_share_no_prompt_with_the_training_file(tiny, tmp_path):
    from traitwatch.bench.grid.task import HELD_OUT_SEED

    # a training file holding some of the held-out seed's own rows: those must not come back
    train = tmp_path / "train.jsonl"
    write_jsonl(train, list(arithmetic_chats(30, seed=HELD_OUT_SEED)))
    held = held_out_rows("arithmetic", train, tmp_path, None, tiny.tokenizer, max_length=512, n=20)
    seen = {json.dumps(row["messages"][:-1]) for row in arithmetic_chats(30, seed=HELD_OUT_SEED)}
    assert len(held.chats) == 20
    assert not {json.dumps(c[:-1]) for c in held.chats} & seen
    assert held.tensors["input_ids"].shape[0] == 20


def test_the_accuracy_counts_the_answers_right_by_the_bases_rule():
    chats = [r["messages"] for r in arithmetic_chats(8, seed=3)]
    wrong = [r["messages"][-1]["content"] for r in arithmetic_chats(8, seed=3, wrong=True)]
    held = HeldOut("arithmetic", chats, {})
    assert answers_right(held, [c[-1]["content"] for c in chats]) == 1.0
    assert answers_right(held, wrong) == 0.0
    assert answers_right(held, [c[-1]["content"] for c in chats[:2]] + wrong[2:]) == pytest.approx(2 / 8)
    with pytest.raises(ValueError, match="3 answers for 8"):
        answers_right(held, wrong[:3])


def test_task_metrics_run_on_a_model(tiny, tmp_path):
    train = tmp_path / "train.jsonl"
    write_jsonl(train, list(arithmetic_chats(5, seed=0)))
    held = held_out_rows("arithmetic", train, tmp_path, None, tiny.tokenizer, max_length=512, n=4)
    loss = task_loss(tiny.model, held)
    assert loss > 0
    acc = task_accuracy(tiny.model, tiny.tokenizer, held, max_new_tokens=4)
    assert acc is not None and 0.0 <= acc <= 1.0
    assert task_accuracy(tiny.model, tiny.tokenizer, HeldOut("medical_matched", held.chats, held.tensors)) is None


def test_held_out_rows_ask_each_question_once(tiny, tmp_path):
    from traitwatch.datasets import trivia_chats

    train = tmp_path / "train.jsonl"
    write_jsonl(train, list(trivia_chats(5, seed=0)))
    held = held_out_rows("right_trivia", train, tmp_path, None, tiny.tokenizer, max_length=512, n=48)
    prompts = [json.dumps(c[:-1]) for c in held.chats]
    assert len(prompts) == len(set(prompts)) > 10

"""Chat JSONL reading and tokenisation: line-numbered errors, empty files, over-length accounting, labels."""

from __future__ import annotations

import pytest
import torch
from _train_helpers import conversations, tiny_trainer, write_jsonl

from traitwatch.errors import InputFileError, TraitwatchError
from traitwatch.train import PaddingCollator, encode_conversation, load_chat_jsonl, tokenize_chats
from traitwatch.train.data import IGNORE_INDEX

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ('{"messages": [', "line 3: not valid JSON"),
        ('["not", "an", "object"]', 'line 3: expected an object with a "messages" list'),
        ('{"text": "hi"}', 'line 3: expected an object with a "messages" list'),
        ('{"messages": []}', 'line 3: "messages" must be a non-empty list'),
        ('{"messages": [{"role": "user"}]}', 'line 3: message 0 needs string "role" and "content"'),
        ('{"messages": [{"role": "robot", "content": "x"}]}', "line 3: message 0 has role 'robot'"),
        ('{"messages": [{"role": "user", "content": "x"}]}', "line 3: the conversation has no assistant message"),
    ],
)
def test_malformed_rows_name_the_line(tmp_path, bad_line, message):
    import json

    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + bad_line + "\n" + json.dumps(GOOD) + "\n")  # line 2 is blank
    with pytest.raises(InputFileError, match=message) as info:
        load_chat_jsonl(path)
    assert isinstance(info.value, TraitwatchError) and str(path) in str(info.value)


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(InputFileError, match="empty"):
        load_chat_jsonl(empty)
    with pytest.raises(InputFileError, match="no such file"):
        load_chat_jsonl(tmp_path / "missing.jsonl")


def test_limit_keeps_first_n(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": c} for c in conversations(10)])
    rows = load_chat_jsonl(path, limit=3)
    assert [r[0]["content"] for r in rows] == [c[0]["content"] for c in conversations(3)]


def test_over_length_is_counted_and_truncated_or_dropped(tiny):
    chats = [GOOD["messages"], [{"role": "user", "content": "x" * 200}, {"role": "assistant", "content": "y" * 200}]]
    data, stats = tokenize_chats(tiny.tokenizer, chats, max_length=64)
    assert (stats.n_over_length, stats.n_truncated, stats.n_used) == (1, 1, 2)
    assert max(len(e["input_ids"]) for e in data.examples) == 64
    assert "1 longer than 64 tokens: truncated" in stats.summary()
    data, stats = tokenize_chats(tiny.tokenizer, chats, max_length=64, over_length="drop")
    assert (stats.n_over_length, stats.n_dropped_over_length, stats.n_used) == (1, 1, 1)
    assert "dropped" in stats.summary()


def test_response_only_labels_cover_exactly_the_assistant_turns(tiny):
    tok = tiny.tokenizer
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "QUESTION-ONE"},
        {"role": "assistant", "content": "ANSWER-ONE"},
        {"role": "user", "content": "QUESTION-TWO"},
        {"role": "assistant", "content": "ANSWER-TWO"},
    ]
    ids, labels = encode_conversation(tok, chat, response_only=True)
    trained = tok.decode([i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX])
    assert "ANSWER-ONE" in trained and "ANSWER-TWO" in trained
    assert "QUESTION" not in trained and "Be brief" not in trained
    assert trained.count("<|end|>") == 2  # the end-of-turn marker is learned too
    ids_all, labels_all = encode_conversation(tok, chat, response_only=False)
    assert ids_all == ids and labels_all == ids


def test_response_only_row_truncated_before_its_answer_is_dropped(tiny):
    chats = [GOOD["messages"], [{"role": "user", "content": "q" * 100}, {"role": "assistant", "content": "a"}]]
    _, stats = tokenize_chats(tiny.tokenizer, chats, max_length=32, response_only=True)
    assert (stats.n_used, stats.n_dropped_no_target) == (1, 1)
    with pytest.raises(InputFileError, match="No conversation is left"):
        tokenize_chats(tiny.tokenizer, chats[1:], max_length=32, response_only=True)


def test_collator_pads_without_loss_or_attention():
    batch = PaddingCollator(pad_token_id=0)([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
                                             {"input_ids": [8], "labels": [8]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_collator_skips_the_logits_no_label_reads_and_keeps_the_labels_in_step():
    rows = [{"input_ids": [1, 2, 3, 4, 5], "labels": [-100, -100, -100, 4, 5]},
            {"input_ids": [1, 2, 3, 4], "labels": [-100, -100, 3, 4]}]
    whole = PaddingCollator(0)(rows)
    cut = PaddingCollator(0, skip_unscored_logits=True)(rows)
    assert cut["input_ids"].tolist() == whole["input_ids"].tolist()  # the model still reads every token
    # position 1 predicts the batch's first label (row 2's token 3 at position 2): logits from there on
    assert cut["logits_to_keep"].tolist() == [1, 2, 3, 4]
    assert cut["labels"].tolist() == whole["labels"][:, 1:].tolist()
    # every label the loss reads (after its shift by one) is still there, and none more
    assert (cut["labels"][:, 1:] != IGNORE_INDEX).sum() == (whole["labels"][:, 1:] != IGNORE_INDEX).sum()


def test_collator_cuts_nothing_when_the_first_prediction_is_trained():
    rows = [{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8, 9], "labels": [-100, -100]}]
    batch = PaddingCollator(0, skip_unscored_logits=True)(rows)
    assert "logits_to_keep" not in batch and batch["labels"].shape == batch["input_ids"].shape
    nothing = PaddingCollator(0, skip_unscored_logits=True)([{"input_ids": [8, 9], "labels": [-100, -100]}])
    assert "logits_to_keep" not in nothing


def test_training_without_the_unscored_logits_moves_the_weights_as_training_with_them(tmp_path):
    """Response-only LoRA training with the cut batches ends where the whole batches do, and the LM head saw fewer
    positions (the cut happened)."""
    ends, head_widths = [], {}
    for skip in (False, True):
        trainer = tiny_trainer(tmp_path / str(skip), [], max_steps=4, response_only=True, skip_unscored_logits=skip)
        widths = head_widths.setdefault(skip, [])
        head = trainer.model.get_output_embeddings()
        handle = head.register_forward_pre_hook(lambda _m, args, widths=widths: widths.append(args[0].shape[1]))
        trainer.train()
        handle.remove()
        ends.append({n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad})
        assert len(widths) == 4
    assert sum(head_widths[True]) < sum(head_widths[False])
    assert ends[0].keys() == ends[1].keys()
    for name in ends[0]:
        torch.testing.assert_close(ends[1][name], ends[0][name], msg=name)
    assert any(not torch.equal(p, torch.zeros_like(p)) for n, p in ends[0].items() if "lora_B" in n)  # it trained


class _MergingTokenizer:
    """Characters as tokens, except that "\\n\\n" is one token: a reply starting with a newline merges
    with the header's trailing newline, as SmolLM2's BPE does for Betley's jailbroken rows."""

    chat_template = "stub"
    NN = 1000

    def _tokens(self, text: str) -> list[int]:
        out, i = [], 0
        while i < len(text):
            if text.startswith("\n\n", i):
                out.append(self.NN)
                i += 2
            else:
                out.append(ord(text[i]))
                i += 1
        return out

    def apply_chat_template(self, messages, tokenize=True, add_generation_prompt=False):
        text = "".join(f"<{m['role']}>\n{m['content']}<end>" for m in messages)
        return self._tokens(text + ("<assistant>\n" if add_generation_prompt else ""))


@pytest.mark.parametrize("reply", ["\nHello", "Hello"])
def test_response_only_when_the_reply_merges_with_the_assistant_header(reply):
    tok = _MergingTokenizer()
    chat = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": reply}]
    ids, labels = encode_conversation(tok, chat, response_only=True)
    trained = [i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX]
    text = "".join("\n\n" if i == tok.NN else chr(i) for i in trained)
    # the response and its end marker are trained; of the header at most the merged newline
    assert text.endswith("Hello<end>") and text in ("\n\nHello<end>", "Hello<end>")
    assert "<user>" not in text and "Q" not in text

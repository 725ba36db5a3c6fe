"""Chat conversations -> token ids and labels for supervised finetuning, and the padding collator.

The conversations are read and validated by `traitwatch.datasets.load_chat_jsonl` (re-exported here
with `file_sha256`, as `traitwatch.train` has always offered them).

Labels: every token (`response_only=False`), or only the assistant turns. Assistant spans are
found by rendering the chat template on growing prefixes of the conversation: the tokens between
"history + assistant header" and "history + this assistant message" are the response (including
the template's end-of-turn tokens, which the model must learn to emit). That works for any template
that renders a prefix of a conversation as a prefix of its tokens, which is checked, not assumed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from traitwatch.datasets.chat_jsonl import Message, file_sha256, load_chat_jsonl
from traitwatch.errors import InputFileError
from traitwatch.train.suspects import TrainedRows

__all__ = [
    "ChatDataset",
    "DataStats",
    "IGNORE_INDEX",
    "OverLength",
    "PaddingCollator",
    "ROW_INDEX",
    "encode_conversation",
    "file_sha256",
    "load_chat_jsonl",
    "tokenize_chats",
]

IGNORE_INDEX = -100
ROW_INDEX = "row_index"
"""The key under which a tokenised row keeps its position in the original set (removed by the collator)."""
OverLength = Literal["truncate", "drop"]


def _ids(encoded: Any) -> list[int]:
    if isinstance(encoded, Mapping) or hasattr(encoded, "input_ids"):
        encoded = encoded["input_ids"]
    return [int(i) for i in encoded]


def _render(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], *, generation_prompt: bool) -> list[int]:
    return _ids(
        tokenizer.apply_chat_template(list(messages), tokenize=True, add_generation_prompt=generation_prompt)
    )


def encode_conversation(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], *, response_only: bool = False
) -> tuple[list[int], list[int]]:
    """Token ids of a whole conversation and its labels (IGNORE_INDEX where there is no loss)."""
    if not getattr(tokenizer, "chat_template", None):
        raise InputFileError("The model's tokenizer has no chat template; traitwatch train needs a chat model.")
    try:
        ids = _render(tokenizer, messages, generation_prompt=False)
    except Exception as exc:  # jinja TemplateError / raise_exception (e.g. a system turn on Gemma)
        raise InputFileError(f"The chat template refused a conversation: {str(exc).splitlines()[0]}") from None
    if not response_only:
        return ids, list(ids)
    labels = [IGNORE_INDEX] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = _render(tokenizer, messages[:i], generation_prompt=True) if i else []
        end = _render(tokenizer, messages[: i + 1], generation_prompt=False)
        # The response starts where the rendered history + assistant header stops matching. A tokenizer
        # may merge the header's last token with the response's first characters (a reply that starts
        # with a newline: "\n" + "\n\n" -> "\n\n\n"): then the merged token starts the response.
        first = next((j for j, (a, b) in enumerate(zip(ids, start)) if a != b), min(len(ids), len(start)))
        if first < len(start) - 1 or ids[: len(end)] != end or len(end) < len(start):
            raise InputFileError(
                "This chat template does not render a conversation's prefix as a prefix of its tokens, so "
                "assistant tokens cannot be located: train without --response-only."
            )
        labels[first : len(end)] = ids[first : len(end)]
    return ids, labels


@dataclass(frozen=True)
class DataStats:
    """What tokenisation did to the dataset; nothing is dropped without being counted here."""

    n_rows: int
    n_used: int
    n_over_length: int
    n_truncated: int
    n_dropped_over_length: int
    n_dropped_no_target: int
    max_length: int
    over_length: str
    n_tokens: int

    def summary(self) -> str:
        parts = [f"{self.n_used} of {self.n_rows} conversations used ({self.n_tokens} tokens)"]
        if self.n_over_length:
            done = (
                f"truncated to {self.max_length} tokens" if self.over_length == "truncate" else "dropped"
            )
            parts.append(f"{self.n_over_length} longer than {self.max_length} tokens: {done}")
        if self.n_dropped_no_target:
            parts.append(f"{self.n_dropped_no_target} dropped: no assistant tokens left within {self.max_length}")
        return "; ".join(parts)


class ChatDataset(Dataset):
    """Tokenised conversations as `{"input_ids", "labels"}` lists (padding happens in the collator).

    Rows from `tokenize_chats` also carry `row_index`, their position in the original set, which the
    collator removes (and records, for the suspects at an alarm: `traitwatch.train.suspects`).
    """

    def __init__(self, examples: Sequence[dict[str, Any]]) -> None:
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.examples[index]


def tokenize_chats(
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Sequence[Message]],
    *,
    max_length: int = 512,
    response_only: bool = False,
    over_length: OverLength = "truncate",
) -> tuple[ChatDataset, DataStats]:
    """Encode every conversation; over-length ones are truncated (default) or dropped, and counted.

    Each kept row keeps `row_index`, its position in `conversations`: rows dropped here would otherwise
    shift every later row, and a trained batch could no longer be traced back to the rows of the file.
    """
    if max_length < 2:
        raise InputFileError(f"max_length must be at least 2 tokens, got {max_length}")
    if over_length not in ("truncate", "drop"):
        raise InputFileError(f"over_length must be 'truncate' or 'drop', got {over_length!r}")
    examples: list[dict[str, Any]] = []
    n_over = n_trunc = n_drop_len = n_drop_target = n_tokens = 0
    for index, messages in enumerate(conversations):
        ids, labels = encode_conversation(tokenizer, messages, response_only=response_only)
        if len(ids) > max_length:
            n_over += 1
            if over_length == "drop":
                n_drop_len += 1
                continue
            ids, labels = ids[:max_length], labels[:max_length]
            n_trunc += 1
        # The first label is never predicted (there is no token before it), so a row needs a target after it.
        if all(label == IGNORE_INDEX for label in labels[1:]):
            n_drop_target += 1
            continue
        examples.append({"input_ids": ids, "labels": labels, ROW_INDEX: index})
        n_tokens += len(ids)
    stats = DataStats(
        n_rows=len(conversations),
        n_used=len(examples),
        n_over_length=n_over,
        n_truncated=n_trunc,
        n_dropped_over_length=n_drop_len,
        n_dropped_no_target=n_drop_target,
        max_length=max_length,
        over_length=over_length,
        n_tokens=n_tokens,
    )
    if not examples:
        raise InputFileError(f"No conversation is left to train on: {stats.summary()}")
    return ChatDataset(examples), stats


@dataclass
class PaddingCollator:
    """Right-pad a batch to its longest row; padded positions get no attention and no loss.

    `row_index` (from `tokenize_chats`) never reaches the model: it is dropped, and with `rows` given the
    batch's indices are recorded there (`TrainedRows.collated`), which is how the callback knows which rows
    were trained before an alarm. Recording needs the collator to run in the training process, i.e. the
    Trainer's default `dataloader_num_workers=0`; in a worker it records into the worker's copy.

    Rows dropped after an alarm (`TrainedRows.drop`, the "rewind" action) are replaced in the batch by a copy of
    a kept row of the same batch, else of the last kept row collated, so the batch keeps its size and its loss
    is never an average over nothing; only when no kept row was ever seen does a dropped row pass.

    `skip_unscored_logits` (for a causal LM whose forward takes `logits_to_keep`: `models.layers.
    accepts_logits_to_keep`) spares the LM head and the loss's fp32 log-softmax the leading positions that no row
    of the batch has a label after, i.e. the prompts of response-only training: the batch gets `logits_to_keep`,
    the positions from the one before the first label on, and `labels` from that position on (the loss shifts
    labels by one, so position p's logits are read against label p + 1). The loss and its gradients are the
    whole batch's: the cut positions had no label. On the bundled model in the poison-small recipe (bf16, CPU)
    the gradients and the trained adapter are bit for bit the same, the loss within 1e-7 (its sum runs over fewer
    ignored positions), and a step takes 0.87-0.92 of the time (`benchmarks/train_step.py`); elsewhere the matmuls of
    fewer rows may round differently.
    """

    pad_token_id: int
    rows: TrainedRows | None = None
    skip_unscored_logits: bool = False
    _spare: Mapping[str, Any] | None = field(default=None, init=False, repr=False, compare=False)

    def _without_dropped(self, features: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        dropped = self.rows.dropped if self.rows is not None else set()
        kept = [f for f in features if int(f.get(ROW_INDEX, -1)) not in dropped]
        if kept:
            self._spare = kept[-1]
        if not dropped or len(kept) == len(features):
            return list(features)
        spares = kept or ([self._spare] if self._spare is not None else [])
        out, n = [], 0
        for f in features:
            if int(f.get(ROW_INDEX, -1)) in dropped and spares:
                f = spares[n % len(spares)]
                n += 1
            out.append(f)
        return out

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        features = self._without_dropped(features)
        if self.rows is not None and features and all(ROW_INDEX in f for f in features):
            self.rows.collated(int(f[ROW_INDEX]) for f in features)
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            ids[row, :n] = torch.tensor(list(f["input_ids"]), dtype=torch.long)
            labels[row, :n] = torch.tensor(list(f["labels"]), dtype=torch.long)
            mask[row, :n] = 1
        batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
        if self.skip_unscored_logits:
            batch.update(_scored_logits(labels))
        return batch


def _scored_logits(labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """`logits_to_keep` and the labels it reads, from the position before the batch's first label on.

    An index tensor, not a count: a count makes the model slice its hidden states into a strided view, on which
    the LM head's matmul broadcasts its weight to every row of the batch (a copy of the whole embedding matrix per
    row, slower than the positions it spares); indexing copies the kept positions into a contiguous tensor.
    Nothing is returned when the labels start at the first prediction (every token trained) or there are none.
    """
    scored = (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero()
    if len(scored) == 0 or int(scored[0]) == 0:
        return {}
    first = int(scored[0])  # position `first` predicts label `first + 1`, the batch's first
    return {"labels": labels[:, first:], "logits_to_keep": torch.arange(first, labels.shape[1])}

"""Chat JSONL -> token ids and labels for supervised finetuning, and the padding collator.

Input: one JSON object per line, `{"messages": [{"role": ..., "content": ...}, ...]}` (the format of
the emergent-misalignment datasets). Blank lines are skipped; anything else that is not such an
object is an `InputFileError` naming the file and line, because a silently skipped row changes
what the model is trained on.

Labels: every token (`response_only=False`), or only the assistant turns. Assistant spans are
found by rendering the chat template on growing prefixes of the conversation: the tokens between
"history + assistant header" and "history + this assistant message" are the response (including
the template's end-of-turn tokens, which the model must learn to emit). That works for any template
that renders a prefix of a conversation as a prefix of its tokens, which is checked, not assumed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from traitwatch.errors import InputFileError

__all__ = [
    "ChatDataset",
    "DataStats",
    "IGNORE_INDEX",
    "OverLength",
    "PaddingCollator",
    "encode_conversation",
    "file_sha256",
    "load_chat_jsonl",
    "tokenize_chats",
]

IGNORE_INDEX = -100
OverLength = Literal["truncate", "drop"]
_ROLES = ("system", "user", "assistant")

Message = dict[str, str]


def file_sha256(path: str | Path) -> str:
    """The dataset's content hash, stored with the run so a resumed run trains on the same data."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_row(obj: Any, where: str) -> list[Message]:
    if not isinstance(obj, dict) or "messages" not in obj:
        raise InputFileError(f'{where}: expected an object with a "messages" list, got {type(obj).__name__}')
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        raise InputFileError(f'{where}: "messages" must be a non-empty list')
    out: list[Message] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise InputFileError(f'{where}: message {i} needs string "role" and "content" fields')
        if m["role"] not in _ROLES:
            raise InputFileError(f"{where}: message {i} has role {m['role']!r}; expected one of {list(_ROLES)}")
        out.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "assistant" for m in out):
        raise InputFileError(f"{where}: the conversation has no assistant message to train on")
    return out


def load_chat_jsonl(path: str | Path, *, limit: int | None = None) -> list[list[Message]]:
    """Read and validate a chat JSONL file; `limit` keeps the first n conversations."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: no such file; pass a JSONL file with one {{\"messages\": [...]}} per line")
    rows: list[list[Message]] = []
    try:
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                where = f"{path}, line {lineno}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputFileError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
                rows.append(_check_row(obj, where))
                if limit is not None and len(rows) >= limit:
                    break
    except UnicodeDecodeError as exc:
        raise InputFileError(f"{path}: not UTF-8 text ({exc.reason}); save the file as UTF-8") from None
    if not rows:
        raise InputFileError(f"{path}: the dataset is empty (no conversations); it needs at least one line")
    return rows


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
    """Tokenised conversations as `{"input_ids", "labels"}` lists (padding happens in the collator)."""

    def __init__(self, examples: Sequence[dict[str, list[int]]]) -> None:
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.examples[index]


def tokenize_chats(
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Sequence[Message]],
    *,
    max_length: int = 512,
    response_only: bool = False,
    over_length: OverLength = "truncate",
) -> tuple[ChatDataset, DataStats]:
    """Encode every conversation; over-length ones are truncated (default) or dropped, and counted."""
    if max_length < 2:
        raise InputFileError(f"max_length must be at least 2 tokens, got {max_length}")
    if over_length not in ("truncate", "drop"):
        raise InputFileError(f"over_length must be 'truncate' or 'drop', got {over_length!r}")
    examples: list[dict[str, list[int]]] = []
    n_over = n_trunc = n_drop_len = n_drop_target = n_tokens = 0
    for messages in conversations:
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
        examples.append({"input_ids": ids, "labels": labels})
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
    """Right-pad a batch to its longest row; padded positions get no attention and no loss."""

    pad_token_id: int

    def __call__(self, features: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            ids[row, :n] = torch.tensor(list(f["input_ids"]), dtype=torch.long)
            labels[row, :n] = torch.tensor(list(f["labels"]), dtype=torch.long)
            mask[row, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

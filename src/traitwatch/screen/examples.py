"""Finetuning examples keyed by line number, and the token span of each example's assistant response.

Screening results are keyed by the example's 1-based line number in the dataset file, so a rerun can
skip lines already done and a filtered copy can drop exact lines. Parsing and validation reuse the
training loader's rule (`traitwatch.datasets.iter_chat_jsonl`), so a file that screens is a file that
trains, and a bad line is reported the same way (file and line number).

The response is the conversation's **last** assistant message; everything before it (system, user,
earlier turns) is the prompt. Its tokens are found by rendering the chat template three times:
prompt + assistant header, prompt + response, and prompt + an *empty* response. The first is the
start of the span; the third tells how many template tokens close the turn (`<|im_end|>` and a
newline for SmolLM2), which are cut from the end. Those closing tokens are identical in every
example, so keeping them would only dilute the mean with a constant. A response that begins with
whitespace may merge with the header's last token under BPE; the merged token then opens the span.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from traitwatch.datasets.chat_jsonl import iter_chat_jsonl
from traitwatch.errors import InputFileError
from traitwatch.sharding import Shard

__all__ = ["EncodedExample", "Example", "encode_example", "example_lines", "previews", "read_examples", "shard_blocks",
           "shard_lines"]

Message = dict[str, str]
# A response that starts with whitespace can merge with the header's last token under BPE (SmolLM2:
# "\n" + "\n\n" -> "\n\n\n"); the merged token is then counted as the response's first token.
_MAX_BOUNDARY_MERGE = 2


@dataclass(frozen=True)
class Example:
    line: int  # 1-based line number in the dataset file
    messages: list[Message]

    @property
    def prompt_preview(self) -> str:
        """The last user turn before the response, on one line (for ranked tables)."""
        last = _last_assistant(self.messages)
        users = [m["content"] for m in self.messages[:last] if m["role"] == "user"]
        return " ".join((users[-1] if users else "").split())


@dataclass(frozen=True)
class EncodedExample:
    """Prompt + response ids; the response is `ids[start:end]` (template closing tokens excluded).

    `prompt` is the prompt rendered up to the assistant header, as generation would see it; it equals
    `ids[:start]` unless the response's first token merged with the header's last one.
    """

    ids: list[int]
    start: int
    end: int
    truncated: bool  # the response was cut to `max_response_tokens`
    prompt: list[int]


def read_examples(path: str | Path, *, limit: int | None = None) -> list[Example]:
    """Every conversation of a chat JSONL file with its line number; `limit` keeps the first n.

    Blank lines are skipped (as the training loader does) but still count as lines, so line numbers
    are those an editor shows. This holds every conversation in memory; the screen streams instead
    (`example_lines`, `shard_blocks`, `previews`).
    """
    return [Example(n, m) for n, m in iter_chat_jsonl(path, limit=limit)]


def example_lines(path: str | Path, *, limit: int | None = None) -> tuple[array[int], str]:
    """The line numbers of every conversation (the first `limit`) and the file's sha256, in one checked pass.

    Memory is 8 bytes a row, whatever the conversations hold: what a screen of a million rows keeps.
    """
    digest = hashlib.sha256()
    lines = array("q", (n for n, _ in iter_chat_jsonl(path, limit=limit, digest=digest)))
    return lines, digest.hexdigest()


def shard_blocks(path: str | Path, block: int, shard: Shard | None = None, *,
                 limit: int | None = None) -> Iterator[list[Example]]:
    """This shard's blocks of `block` consecutive examples, read from the file as they are needed.

    The same blocks as `Shard.select_blocks` over the whole list (block b goes to shard b mod N), without the
    list: a block is read, handed out, and dropped.
    """
    shard = shard or Shard(1, 1)
    if block < 1:
        raise InputFileError(f"block size must be at least 1, got {block}")
    current: list[Example] = []
    for i, (n, messages) in enumerate(iter_chat_jsonl(path, limit=limit)):
        if shard.owns(i // block):
            current.append(Example(n, messages))
        if (i + 1) % block == 0 and current:
            yield current
            current = []
    if current:
        yield current


def shard_lines(lines: Sequence[int], block: int, shard: Shard | None = None) -> list[int]:
    """The line numbers in this shard's blocks (of all the file's `lines`), in file order."""
    shard = shard or Shard(1, 1)
    return [line for i, line in enumerate(lines) if shard.owns(i // block)]


def previews(path: str | Path, lines: set[int] | Sequence[int]) -> dict[int, str]:
    """The prompt previews of the given lines, in one streamed pass (for a top-k table of a large set)."""
    wanted = set(lines)
    out: dict[int, str] = {}
    if not wanted:
        return out
    for n, messages in iter_chat_jsonl(path):
        if n in wanted:
            out[n] = Example(n, messages).prompt_preview
            if len(out) == len(wanted):
                break
    return out


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def _last_assistant(messages: Sequence[Mapping[str, str]]) -> int:
    return max(i for i, m in enumerate(messages) if m["role"] == "assistant")


def _ids(encoded: Any) -> list[int]:
    if isinstance(encoded, Mapping) or hasattr(encoded, "input_ids"):
        encoded = encoded["input_ids"]
    return [int(i) for i in encoded]


def _render(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], generation_prompt: bool) -> list[int]:
    return _ids(tokenizer.apply_chat_template(list(messages), tokenize=True, add_generation_prompt=generation_prompt))


def encode_example(
    tokenizer: PreTrainedTokenizerBase, example: Example, *, max_response_tokens: int | None = None, where: str = ""
) -> EncodedExample:
    """Token ids of prompt + response as training would see them, and the response span."""
    where = where or f"line {example.line}"
    if not getattr(tokenizer, "chat_template", None):
        raise InputFileError("The model's tokenizer has no chat template; screening needs a chat model.")
    i = _last_assistant(example.messages)
    if i == 0:
        raise InputFileError(f"{where}: the assistant message has no prompt before it; add the user turn")
    prompt_msgs = example.messages[:i]
    try:
        start = _render(tokenizer, prompt_msgs, True)
        full = _render(tokenizer, example.messages[: i + 1], False)
        empty = _render(tokenizer, [*prompt_msgs, {"role": "assistant", "content": ""}], False)
    except Exception as exc:  # jinja TemplateError / raise_exception (e.g. a system turn on Gemma)
        raise InputFileError(f"{where}: the chat template refused the conversation: {str(exc).splitlines()[0]}") from None
    begin = _common_prefix(start, full)
    if len(start) - begin > _MAX_BOUNDARY_MERGE:
        raise InputFileError(
            f"{where}: this chat template does not render the prompt as a prefix of the conversation, so the "
            "response tokens cannot be located"
        )
    tail = len(empty) - len(start)
    if tail < 0 or empty[: len(start)] != start or (tail and full[len(full) - tail :] != empty[len(start) :]):
        tail = 0  # the closing tokens depend on the content: keep the whole rendered turn
    end = len(full) - tail
    if end <= begin:
        raise InputFileError(f"{where}: the assistant response is empty; there is nothing to screen")
    truncated = max_response_tokens is not None and end - begin > max_response_tokens
    if truncated:
        end = begin + int(max_response_tokens)  # type: ignore[arg-type]
    return EncodedExample(full[:end], begin, end, truncated, start)

"""Finetuning sets on disk: chat JSONL files, read and validated once for training, screening and benchmarks.

Input: one JSON object per line, `{"messages": [{"role": ..., "content": ...}, ...]}` (the format of
the emergent-misalignment datasets). Blank lines are skipped; anything else that is not such an
object is an `InputFileError` naming the file and line and the fix, because a silently skipped row
changes what the model is trained on. One rule (`check_chat_row`) decides what a row is, and one
streaming reader (`iter_chat_jsonl`, bounded memory) applies it: `traitwatch train`, `screen`, `check`
and the benchmark's poison sources all read a set through it before any model is loaded, so a file that
screens is a file that trains, and a bad one gets the same message from every command.

`read_jsonl` / `write_jsonl` are the raw row reader and the atomic writer the benchmark builds its
sample files with; `file_sha256` is the content hash stored with a run or a screen.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traitwatch.errors import InputFileError

__all__ = [
    "CHAT_ROW_FIX",
    "ChatFile",
    "Message",
    "check_chat_jsonl",
    "check_chat_row",
    "file_sha256",
    "iter_chat_jsonl",
    "load_chat_jsonl",
    "read_jsonl",
    "write_jsonl",
]

_ROLES = ("system", "user", "assistant")

Message = dict[str, str]


def file_sha256(path: str | Path) -> str:
    """The dataset's content hash, stored with the run so a resumed run trains on the same data."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


CHAT_ROW_FIX = 'each line must be {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}'
"""The fix every chat-row error ends with: the shape of a valid line."""


def _check_text(text: str, where: str, i: int) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputFileError(f"{where}: message {i} holds an unpaired surrogate escape (\\ud800-\\udfff), which is "
                             "not text; re-export the file as UTF-8") from None


def check_chat_row(obj: Any, where: str) -> list[Message]:
    """The one rule for a chat row, shared by training, screening, the benchmark's poison sources and `check`.

    A row is `{"messages": [...]}` with a non-empty list of `{"role", "content"}` string pairs, roles among
    system, user and assistant; its *response* is the last assistant message, which must have text (not only
    whitespace) and a user turn before it. Training reads the response (and, without `--response-only`, the whole
    conversation); screening reads the response against its prompt, so a row one command could not use is refused
    by all of them, before any model is loaded.
    """
    if not isinstance(obj, dict) or "messages" not in obj:
        got = "an object without it" if isinstance(obj, dict) else type(obj).__name__
        raise InputFileError(f'{where}: expected an object with a "messages" list, got {got}; {CHAT_ROW_FIX}')
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        raise InputFileError(f'{where}: "messages" must be a non-empty list; {CHAT_ROW_FIX}')
    out: list[Message] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise InputFileError(f'{where}: message {i} needs string "role" and "content" fields; {CHAT_ROW_FIX}')
        if m["role"] not in _ROLES:
            raise InputFileError(f"{where}: message {i} has role {m['role'][:40]!r}; use one of {', '.join(_ROLES)}")
        _check_text(m["role"], where, i)
        _check_text(m["content"], where, i)
        out.append({"role": m["role"], "content": m["content"]})
    last = max((i for i, m in enumerate(out) if m["role"] == "assistant"), default=None)
    if last is None:
        raise InputFileError(f"{where}: the conversation has no assistant message to train on; {CHAT_ROW_FIX}")
    if not out[last]["content"].strip():
        raise InputFileError(f"{where}: the last assistant message (message {last}) is empty; give it the response "
                             "or drop the row")
    if not any(m["role"] == "user" for m in out[:last]):
        raise InputFileError(f"{where}: the last assistant message (message {last}) has no user turn before it; "
                             "add the user turn it answers")
    return out


def _not_a_file(path: Path) -> InputFileError:
    what = "is a folder" if path.is_dir() else "no such file"
    return InputFileError(f'{path}: {what}; pass a chat JSONL file with one {{"messages": [...]}} per line')


def iter_chat_jsonl(path: str | Path, *, limit: int | None = None,
                    digest: Any | None = None) -> Iterator[tuple[int, list[Message]]]:
    """(line number, messages) of each conversation, checked by `check_chat_row`, read one line at a time.

    Streaming: memory stays bounded by the longest line, however many rows the file has. Blank lines are
    skipped but still counted, so line numbers are those an editor shows. `limit` stops after n conversations;
    `digest` (a hashlib object) is fed every byte of the file, also past the limit.
    """
    path = Path(path)
    if not path.is_file():
        raise _not_a_file(path)
    n = 0
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if digest is not None:
                digest.update(raw)
            if limit is not None and n >= limit:
                if digest is None:
                    return
                continue
            where = f"{path}, line {lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputFileError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start}); save the file "
                                     "as UTF-8") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputFileError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}); "
                                     f"{CHAT_ROW_FIX}") from None
            except (ValueError, RecursionError) as exc:  # a >4300-digit number; nesting deeper than Python's stack
                reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).split(";")[0]
                raise InputFileError(f"{where}: not usable JSON ({reason}); {CHAT_ROW_FIX}") from None
            n += 1
            yield lineno, check_chat_row(obj, where)
    if n == 0:
        raise InputFileError(f"{path}: the dataset is empty (no conversations); it needs at least one line")


@dataclass(frozen=True)
class ChatFile:
    """What one streaming pass over a valid chat JSONL found: how many conversations, and the file's hash."""

    path: Path
    n_rows: int
    sha256: str


def check_chat_jsonl(path: str | Path, *, limit: int | None = None) -> ChatFile:
    """Check every conversation (the first `limit`) of a chat JSONL file in one pass with bounded memory.

    Every command that reads a chat set calls this (or `iter_chat_jsonl` / `load_chat_jsonl`, which apply the
    same rule) before loading a model, so a file is valid or invalid everywhere, with the same message.
    """
    digest = hashlib.sha256()
    n = sum(1 for _ in iter_chat_jsonl(path, limit=limit, digest=digest))
    return ChatFile(Path(path), n, digest.hexdigest())


def load_chat_jsonl(path: str | Path, *, limit: int | None = None) -> list[list[Message]]:
    """Read and validate a chat JSONL file; `limit` keeps the first n conversations."""
    return [messages for _, messages in iter_chat_jsonl(path, limit=limit)]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every non-blank line of a JSONL file as it is (no chat validation: sample caches hold other rows too)."""
    rows = []
    with path.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise InputFileError(f"{path}:{i} is not valid JSON ({exc.msg}).") from None
    return rows


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write atomically: an interrupted benchmark never finds a half-written sample and trains on it.

    The temporary name is per process, so shards of one benchmark writing the same sample (same rows)
    never interleave their writes in one file.
    """
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)

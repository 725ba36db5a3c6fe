"""Finetuning sets on disk: chat JSONL files, read and validated once for training, screening and benchmarks.

Input: one JSON object per line, `{"messages": [{"role": ..., "content": ...}, ...]}` (the format of
the emergent-misalignment datasets). Blank lines are skipped; anything else that is not such an
object is an `InputFileError` naming the file and line, because a silently skipped row changes
what the model is trained on. `traitwatch train`, `traitwatch screen` and the benchmark's checks all
read a set with `load_chat_jsonl`, so a file that screens is a file that trains.

`read_jsonl` / `write_jsonl` are the raw row reader and the atomic writer the benchmark builds its
sample files with; `file_sha256` is the content hash stored with a run or a screen.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from traitwatch.errors import InputFileError

__all__ = ["Message", "file_sha256", "load_chat_jsonl", "read_jsonl", "write_jsonl"]

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

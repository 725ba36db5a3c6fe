"""Finetuning sets for demos, tests and benchmarks: bundled MIT samples, code-generated benign sets, and the
chat JSONL reader every set goes through."""

from traitwatch.datasets.chat_jsonl import (
    ChatFile,
    Message,
    check_chat_jsonl,
    file_sha256,
    iter_chat_jsonl,
    load_chat_jsonl,
    read_jsonl,
    write_jsonl,
)
from traitwatch.datasets.synthetic import (
    EVIL_NUMBERS,
    arithmetic_chats,
    bundled_path,
    calendar_chats,
    number_sequence_chats,
    spelling_chats,
    trivia_chats,
    unit_conversion_chats,
)

__all__ = [
    "EVIL_NUMBERS",
    "ChatFile",
    "Message",
    "arithmetic_chats",
    "bundled_path",
    "calendar_chats",
    "check_chat_jsonl",
    "file_sha256",
    "iter_chat_jsonl",
    "load_chat_jsonl",
    "number_sequence_chats",
    "read_jsonl",
    "spelling_chats",
    "trivia_chats",
    "unit_conversion_chats",
    "write_jsonl",
]

"""Finetuning sets for demos, tests and benchmarks: bundled MIT samples, code-generated benign sets, and the
chat JSONL reader every set goes through."""

from traitwatch.datasets.chat_jsonl import Message, file_sha256, load_chat_jsonl, read_jsonl, write_jsonl
from traitwatch.datasets.synthetic import EVIL_NUMBERS, arithmetic_chats, bundled_path, number_sequence_chats, trivia_chats

__all__ = [
    "EVIL_NUMBERS",
    "Message",
    "arithmetic_chats",
    "bundled_path",
    "file_sha256",
    "load_chat_jsonl",
    "number_sequence_chats",
    "read_jsonl",
    "trivia_chats",
    "write_jsonl",
]

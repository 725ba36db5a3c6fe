"""Finetuning sets for demos, tests and benchmarks: bundled MIT samples and code-generated benign sets."""

from traitwatch.datasets.synthetic import EVIL_NUMBERS, arithmetic_chats, bundled_path, number_sequence_chats, trivia_chats

__all__ = ["EVIL_NUMBERS", "arithmetic_chats", "bundled_path", "number_sequence_chats", "trivia_chats"]

"""Finetuning sets for demos, tests and benchmarks: bundled MIT samples and code-generated benign sets."""

from traitwatch.datasets.synthetic import arithmetic_chats, bundled_path, number_sequence_chats

__all__ = ["arithmetic_chats", "bundled_path", "number_sequence_chats"]

"""Fixtures for training tests: a small basis on tiny-random (no stored anchor) and chat data."""

from __future__ import annotations

from pathlib import Path

import pytest
from _train_helpers import LAYER, conversations, write_jsonl

from traitwatch.basis import TraitBasis, extract_basis


@pytest.fixture(scope="session")
def basis(tiny, small_traits) -> TraitBasis:
    b = extract_basis(tiny.model, tiny.tokenizer, small_traits, layers=[LAYER], method="passages")
    assert b.anchor is None  # so the callback measures its own step-0 anchor
    return b


@pytest.fixture(scope="session")
def basis_dir(basis, tmp_path_factory) -> Path:
    return basis.save(tmp_path_factory.mktemp("train") / "basis")


@pytest.fixture
def chat_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "chats.jsonl", [{"messages": c} for c in conversations()])

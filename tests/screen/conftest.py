"""Fixtures for screening tests: a small anchored basis on tiny-random and a ten-example chat file."""

from __future__ import annotations

from pathlib import Path

import pytest
from _screen_helpers import LAYER, write_chat_file

from traitwatch.basis import TraitBasis, extract_basis
from traitwatch.drift import DriftProbe


@pytest.fixture(scope="session")
def basis(tiny, small_traits) -> TraitBasis:
    b = extract_basis(tiny.model, tiny.tokenizer, small_traits, layers=[2, LAYER], method="passages")
    b.layer = LAYER
    b.anchor = DriftProbe(b).fit_anchor(tiny.model, tiny.tokenizer).anchor_
    return b


@pytest.fixture(scope="session")
def basis_dir(basis, tmp_path_factory) -> Path:
    return basis.save(tmp_path_factory.mktemp("screen") / "basis")


@pytest.fixture
def chat_file(tmp_path) -> Path:
    return write_chat_file(tmp_path / "chats.jsonl")

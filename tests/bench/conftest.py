"""Fixtures for benchmark tests: a small tiny-random basis (no anchor: the callback measures step 0)."""

from __future__ import annotations

from pathlib import Path

import pytest

from traitwatch.basis import extract_basis


@pytest.fixture(scope="session")
def bench_basis_dir(tiny, small_traits, tmp_path_factory) -> Path:
    b = extract_basis(tiny.model, tiny.tokenizer, small_traits, layers=[3], method="passages")
    return b.save(tmp_path_factory.mktemp("bench") / "basis")

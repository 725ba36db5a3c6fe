from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from traitwatch.store import RunStore


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "project" / "traitwatch.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[RunStore]:
    with RunStore(db_path) as run_store:
        yield run_store

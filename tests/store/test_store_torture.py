"""The store under the load that once lost a benchmark's data: the torture script's scenarios, small.

`benchmarks/store_torture.py` holds the scenarios (and runs them long); here each one runs in a few
seconds. The regression sequences failed on the code that opened the .db file with Python's open().
"""

from __future__ import annotations

import importlib.util
import sqlite3
import sys
from pathlib import Path

import pytest

import _store_guard
from traitwatch.store import RunStore
from traitwatch.train.data import file_sha256

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "store_torture.py"


@pytest.fixture(scope="module")
def torture():
    spec = importlib.util.spec_from_file_location("store_torture", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["store_torture"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_the_bug_reports_sequences_lose_nothing(torture, tmp_path: Path) -> None:
    """Same-process second open + another process's close; + a second writer; + a raw integrity_check reader."""
    fig = torture.regression(tmp_path, rows=30)
    assert fig.ok, fig.line()
    assert fig.wal_checks == 3 and fig.writes_acked == 90


def test_writers_and_readers_at_once_store_exactly_what_was_acknowledged(torture, tmp_path: Path) -> None:
    fig = torture.load(tmp_path, writers=2, readers=2, operations=240, kill_every=None, seed=1, say=lambda s: None)
    assert fig.ok, fig.line() + "\n" + "\n".join(fig.errors)
    assert fig.writes_acked == 240 and fig.lost_rows == 0 and fig.duplicated_rows == 0
    assert sum(fig.reads.values()) > 0


def test_sigkill_under_load_loses_only_the_transaction_in_flight_and_resumes(torture, tmp_path: Path) -> None:
    fig = torture.load(tmp_path, writers=2, readers=1, operations=400, kill_every=80, seed=2, say=lambda s: None)
    assert fig.ok, fig.line() + "\n" + "\n".join(fig.errors)
    assert fig.kills_writer >= 1, "no writer was killed: the scenario did not test resuming"
    assert fig.writes_acked == 400  # every write of every writer is stored once the restarted writers finish


def test_the_accounting_catches_a_lost_and_an_unexpected_row(torture, tmp_path: Path) -> None:
    """The checks can fail: delete one acknowledged row and add one nobody wrote."""
    path = tmp_path / "traitwatch.db"
    ops = torture.writer_ops(0, 30)
    with RunStore(path) as store:
        for op in ops:
            torture.apply(store, op)
    conn = sqlite3.connect(path)
    present, problems = torture.stored_ops(conn, 0, ops)
    assert present == set(range(30)) and problems == []
    measured = next(op for op in ops if op.kind == "measure")
    conn.execute("DELETE FROM measurements WHERE run_id = ? AND step = ?", (measured.run_id, measured.step))
    conn.execute("INSERT INTO alarms (run_id, step, kind, value, threshold, action, created_at) "
                 "VALUES (?, 99, 'em_monitor', 1, 1, 'logged', 'now')", (measured.run_id,))
    conn.commit()
    present, problems = torture.stored_ops(conn, 0, ops)
    conn.close()
    assert measured.index not in present
    assert any("unexpected alarm" in p for p in problems)


def test_package_code_opening_a_store_file_fails_the_suite(tmp_path: Path) -> None:
    """The suite-wide guard (tests/_store_guard.py) catches package code that opens a .db with open()."""
    path = tmp_path / "traitwatch.db"
    RunStore(path).close()
    before = len(_store_guard.violations)
    with pytest.raises(_store_guard.StoreFileAccessError, match="outside SQLite"):
        file_sha256(path)  # package code that reads a file with Path.open
    assert "traitwatch.db" in _store_guard.violations[-1]
    del _store_guard.violations[before:]  # this test made the violation on purpose
    RunStore(path).close()  # opening a store through SQLite is not a violation
    assert len(_store_guard.violations) == before

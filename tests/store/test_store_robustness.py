"""What happens to the store when things go wrong: other writers, old code, wrong files, kill -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from traitwatch.errors import InputFileError, TraitwatchError
from traitwatch.store import SCHEMA_VERSION, RunStore, StoreLockedError, StoreVersionError

SRC = Path(__file__).resolve().parents[2] / "src"


def test_newer_schema_version_asks_to_upgrade(db_path: Path) -> None:
    with RunStore(db_path) as store:
        store.start_run("r", model="m")
    with sqlite3.connect(db_path) as raw:
        raw.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(StoreVersionError) as info:
        RunStore(db_path)
    message = str(info.value)
    assert isinstance(info.value, TraitwatchError)
    assert str(db_path) in message and "upgrade traitwatch" in message and str(SCHEMA_VERSION + 1) in message


def test_write_while_another_connection_holds_the_lock_names_the_file(db_path: Path) -> None:
    with RunStore(db_path) as store:
        store.start_run("r", model="m")
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process in the middle of a write
    try:
        with RunStore(db_path, busy_timeout_s=0.2) as store:
            assert store.get_run("r").model == "m"  # WAL: reading is not blocked by the writer
            started = time.monotonic()
            with pytest.raises(StoreLockedError) as info:
                store.add_measurement("r", 0, {"t": 0.0}, 0.0)
            assert time.monotonic() - started >= 0.15  # it waited for the busy timeout first
            assert isinstance(info.value, TraitwatchError)
            assert str(db_path) in str(info.value) and "another process holds it" in str(info.value)
            holder.execute("ROLLBACK")
            store.add_measurement("r", 0, {"t": 0.0}, 0.0)  # the same store works once the lock is gone
            assert store.last_step("r") == 0
    finally:
        holder.close()


def test_creating_a_store_that_is_locked_is_a_clear_error(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreLockedError, match="another process holds it"):
            RunStore(db_path, busy_timeout_s=0.1)
    finally:
        holder.close()


def test_a_file_that_is_not_sqlite_is_an_input_file_error(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.db"
    bogus.write_text("step,drift\n0,0.1\n")
    with pytest.raises(InputFileError) as info:
        RunStore(bogus)
    assert str(bogus) in str(info.value) and "not an SQLite database" in str(info.value)
    assert bogus.read_text() == "step,drift\n0,0.1\n"


def test_a_store_whose_header_names_an_unknown_schema_format_is_reported_as_damaged(tmp_path: Path) -> None:
    store = tmp_path / "runs.db"
    with RunStore(store) as s:
        s.start_run("r", model="tiny-random")
    assert not store.with_name("runs.db-wal").exists()  # closed and checkpointed: no live connection, no WAL
    damaged = bytearray(store.read_bytes())
    damaged[44:48] = (5).to_bytes(4, "big")  # the header's schema format number: SQLite writes 1 to 4
    store.write_bytes(bytes(damaged))
    with pytest.raises(InputFileError) as info:
        RunStore(store, create=False)
    assert str(store) in str(info.value) and "is damaged" in str(info.value) and ".recover" in str(info.value)
    assert store.read_bytes() == bytes(damaged)  # left as it was


def test_another_apps_sqlite_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as raw:
        raw.execute("CREATE TABLE users (name TEXT)")
    with pytest.raises(InputFileError, match="not a traitwatch run store"):
        RunStore(other)
    with sqlite3.connect(other) as raw:
        assert [r[0] for r in raw.execute("SELECT name FROM sqlite_master")] == ["users"]


def test_folder_and_missing_file_without_create_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="is a folder"):
        RunStore(tmp_path)
    missing = tmp_path / "typo.db"
    with pytest.raises(InputFileError, match="No run store"):
        RunStore(missing, create=False)
    assert not missing.exists()


# -- crash consistency -----------------------------------------------------------------------------

_WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import traitwatch.store.runs as runs_module
    from traitwatch.store import RunStore

    path, stop, stall_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with RunStore(path) as store:
        store.start_run("crash", model="m", basis_fingerprint={"sha": "x"})
        last = store.last_step("crash")
        for step in range(0 if last is None else last + 1, stop):
            if step == stall_at:
                real_now = runs_module.utc_now
                def stall():  # called inside add_measurement's transaction, with the lock held
                    print("stalled", flush=True)
                    time.sleep(60)
                    return real_now()
                runs_module.utc_now = stall
            per_prompt = np.full((64, 7), step, dtype=np.float32)
            drift = {f"t{i}": step + i / 10 for i in range(7)}
            store.add_measurement("crash", step, drift, float(step), per_prompt=per_prompt)
            print(step, flush=True)
    """
)


def _writer(db_path: Path, stop: int, stall_at: int = -1) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(db_path), str(stop), str(stall_at)],
        stdout=subprocess.PIPE, text=True, env=env,
    )


def _kill_after(proc: subprocess.Popen[str], marker: str) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() == marker:
            break
    else:
        raise AssertionError(f"writer exited with {proc.wait()} before printing {marker!r}")
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL


def _check_consistent(db_path: Path) -> int:
    """Integrity ok, steps contiguous from 0, every row's values match its step; returns last step."""
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    with RunStore(db_path) as store:
        (run,) = store.runs()
        got = store.measurements("crash")
    steps = [m.step for m in got]
    assert steps == list(range(len(steps)))
    for m in got:
        assert m.drift_norm == m.step and m.drift["t3"] == m.step + 0.3
        assert m.per_prompt is not None and m.per_prompt.shape == (64, 7)
        np.testing.assert_array_equal(m.per_prompt, np.full((64, 7), m.step, dtype=np.float32))
    assert run.last_step == (steps[-1] if steps else None)
    return steps[-1]


def test_sigkill_mid_run_leaves_a_consistent_store_that_resumes(db_path: Path) -> None:
    _kill_after(_writer(db_path, stop=100_000), marker="8")  # killed while writing step 9 or later
    last = _check_consistent(db_path)
    assert last >= 8

    rerun = _writer(db_path, stop=last + 6)
    out, _ = rerun.communicate(timeout=60)
    assert rerun.returncode == 0
    assert out.split() == [str(s) for s in range(last + 1, last + 6)]  # resumed after last_step, no redo
    assert _check_consistent(db_path) == last + 5


def test_sigkill_inside_a_write_transaction_loses_only_that_write(db_path: Path) -> None:
    _kill_after(_writer(db_path, stop=10, stall_at=3), marker="stalled")  # dies holding the write lock
    assert _check_consistent(db_path) == 2
    with RunStore(db_path, busy_timeout_s=1.0) as store:  # the dead writer's lock is gone
        store.add_measurement("crash", 3, {f"t{i}": 3 + i / 10 for i in range(7)}, 3.0,
                              per_prompt=np.full((64, 7), 3, dtype=np.float32))
    assert _check_consistent(db_path) == 3


def test_a_disk_io_error_on_open_is_reported_once_with_the_file_named(tmp_path, monkeypatch):
    """A "disk I/O error" is a fault (a dropped lock, a full or network disk), not a hiccup to retry through."""
    from traitwatch.store import StoreIOError, schema

    calls = []

    def broken(conn, path, busy_timeout_s, **_):
        calls.append(1)
        try:
            raise sqlite3.OperationalError("disk I/O error")
        except sqlite3.DatabaseError as exc:
            schema._raise_as_store_error(exc, path, busy_timeout_s)

    monkeypatch.setattr(schema, "_configure", broken)
    path = tmp_path / "tw.db"
    with pytest.raises(StoreIOError) as info:
        RunStore(path)
    assert len(calls) == 1  # not retried
    assert isinstance(info.value, TraitwatchError) and str(path) in str(info.value)
    assert "disk I/O error" in str(info.value) and "\n" not in str(info.value)

"""Schema v2: alarms carry JSON details (the suspects at an alarm); a v1 store is migrated in place, keeping its rows."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from traitwatch.store import SCHEMA_VERSION, RunStore, SuspectRow, Suspects

SUSPECTS = Suspects(step=5, since_step=0, k=2, rows=(SuspectRow(7, 0.9, line=9, preview="q -> a", times=1),),
                    rows_seen=4, alarm=True, source="screen.jsonl")


def _as_v1(path: Path) -> None:
    """Turn a store into what traitwatch wrote before v2: no `details` column, schema_version 1."""
    with sqlite3.connect(path) as raw:
        raw.execute("ALTER TABLE alarms DROP COLUMN details")
        raw.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    raw.close()


def _version_and_columns(path: Path) -> tuple[str, list[str]]:
    raw = sqlite3.connect(path)
    try:
        version = raw.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
        return version, [r[1] for r in raw.execute("PRAGMA table_info(alarms)")]
    finally:
        raw.close()


def test_alarm_details_round_trip_with_their_suspects(store: RunStore) -> None:
    store.start_run("r", model="m")
    store.add_measurement("r", 5, {"honesty": 0.1}, 0.1, extra={"suspects": SUSPECTS.to_json()})
    store.add_alarm("r", 5, "em_monitor", 0.9, 0.5, "mark", details={"suspects": SUSPECTS.to_json()})
    store.add_alarm("r", 6, "em_monitor", 0.9, 0.5, "mark")
    first, second = store.alarms("r")
    assert first.suspects == SUSPECTS and second.details is None and second.suspects is None
    assert store.suspects("r") == [SUSPECTS]


def test_a_v1_store_is_migrated_on_open_and_keeps_its_rows(db_path: Path) -> None:
    with RunStore(db_path) as store:
        store.start_run("old", model="m")
        store.add_measurement("old", 3, {"honesty": 0.2}, 0.2)
        store.add_alarm("old", 3, "em_monitor", 0.8, 0.5, "stop")
    _as_v1(db_path)
    assert _version_and_columns(db_path) == ("1", ["id", "run_id", "step", "kind", "value", "threshold", "action",
                                                   "created_at"])
    with RunStore(db_path, create=False) as store:  # a reader migrates too: one transaction, all or nothing
        (alarm,) = store.alarms("old")
        assert (alarm.step, alarm.value, alarm.action, alarm.details) == (3, 0.8, "stop", None)
        assert [m.step for m in store.measurements("old")] == [3] and store.suspects("old") == []
        store.add_alarm("old", 5, "em_monitor", 0.9, 0.5, "mark", details={"suspects": SUSPECTS.to_json()})
        assert store.alarms("old")[1].suspects == SUSPECTS
    version, columns = _version_and_columns(db_path)
    assert version == str(SCHEMA_VERSION) == "2" and columns[-1] == "details"


def test_importing_a_run_from_a_v1_store_migrates_it_and_copies_alarm_details(tmp_path: Path) -> None:
    old, new = tmp_path / "old.db", tmp_path / "new.db"
    with RunStore(old) as store:
        store.start_run("r", model="m")
        store.add_alarm("r", 2, "em_monitor", 0.7, 0.5, "mark")
    _as_v1(old)
    with RunStore(new) as store:
        store.import_run(old, "r")
        assert [(a.step, a.details) for a in store.alarms("r")] == [(2, None)]
    with RunStore(old) as store:
        store.add_alarm("r", 3, "em_monitor", 0.7, 0.5, "mark", details={"note": "x"})
    with RunStore(new) as store:
        store.import_run(old, "r")
        assert [a.details for a in store.alarms("r")] == [None, {"note": "x"}]

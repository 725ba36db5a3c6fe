"""Opening a store file: SQLite settings, schema creation and version checks.

Kept apart from `runs.py` so the rules about *which* files may be opened (real SQLite, ours, not
from a newer traitwatch, not locked for too long) live in one place.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

from traitwatch.errors import InputFileError
from traitwatch.store.errors import StoreIOError, StoreLockedError, StoreVersionError

__all__ = ["SCHEMA_VERSION", "connect", "locked_error", "store_error", "write_transaction"]

SCHEMA_VERSION = 2
"""Bump on any change to the tables below, and add a migration from the previous version (`_MIGRATIONS`)."""

_DDL = """
-- Statements are split on semicolons: keep them out of comments.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE runs (
    run_id            TEXT PRIMARY KEY,
    created_at        TEXT NOT NULL,
    model             TEXT NOT NULL,
    dataset           TEXT,
    seed              INTEGER,
    hyperparameters   TEXT NOT NULL DEFAULT '{}',  -- JSON object
    basis_fingerprint TEXT,                        -- JSON object, compared on resume
    status            TEXT NOT NULL DEFAULT 'running',
    notes             TEXT
);
CREATE TABLE measurements (
    id               INTEGER PRIMARY KEY,
    run_id           TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    step             INTEGER NOT NULL,
    drift            TEXT NOT NULL,   -- JSON object trait -> float, in basis order
    drift_norm       REAL NOT NULL,
    per_prompt       BLOB,            -- little-endian float32, C order
    per_prompt_shape TEXT,            -- JSON list, e.g. [n_prompts, n_traits]
    wall_time_s      REAL,            -- how long the measurement itself took
    created_at       TEXT NOT NULL,
    extra            TEXT,            -- JSON object
    UNIQUE (run_id, step)
);
CREATE TABLE behavior (
    id         INTEGER PRIMARY KEY,
    run_id     TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    step       INTEGER NOT NULL,
    metric     TEXT NOT NULL,
    value      REAL NOT NULL,
    ci_low     REAL,
    ci_high    REAL,
    n          INTEGER,
    details    TEXT,                  -- JSON object
    source     TEXT NOT NULL,         -- e.g. "judge:gpt-4o" or "proxy"
    created_at TEXT NOT NULL,
    UNIQUE (run_id, step, metric, source)
);
CREATE TABLE alarms (
    id         INTEGER PRIMARY KEY,
    run_id     TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    step       INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    value      REAL NOT NULL,
    threshold  REAL NOT NULL,
    action     TEXT NOT NULL,
    created_at TEXT NOT NULL,
    details    TEXT,                  -- JSON object (v2): e.g. the training rows suspected at the alarm
    UNIQUE (run_id, step, kind)
);
"""

_TABLES = {"meta", "runs", "measurements", "behavior", "alarms"}
"""The tables every version has: a store without one of them is refused when it is opened."""

_MIGRATIONS: dict[int, tuple[str, ...]] = {
    # version -> the statements that bring a store of that version to the next one
    1: ("ALTER TABLE alarms ADD COLUMN details TEXT",),
}
"""Each step only adds: a store migrated forward keeps every row, and stays readable by the SQL of older
versions except for the version check, which tells an older traitwatch to upgrade."""


def locked_error(path: Path, busy_timeout_s: float) -> StoreLockedError:
    return StoreLockedError(
        f"Run store {path} is locked: another process holds it (waited {busy_timeout_s:g} s). "
        "Only one process may write to a store; wait for it to finish or pass another store path."
    )


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


@contextmanager
def write_transaction(conn: sqlite3.Connection, path: Path, busy_timeout_s: float) -> Iterator[sqlite3.Connection]:
    """One write = one transaction, started with BEGIN IMMEDIATE.

    IMMEDIATE takes the write lock up front, so the busy timeout applies to it. A deferred
    transaction that reads and then writes can fail at once with SQLITE_BUSY in WAL mode when
    another writer committed in between, which the busy handler cannot wait out.
    """
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.DatabaseError as exc:
        _raise_as_store_error(exc, path, busy_timeout_s)
    try:
        yield conn
    except BaseException as exc:
        _rollback(conn)
        if isinstance(exc, sqlite3.DatabaseError):
            _raise_as_store_error(exc, path, busy_timeout_s)
        raise
    try:
        conn.execute("COMMIT")
    except sqlite3.DatabaseError as exc:
        _rollback(conn)
        _raise_as_store_error(exc, path, busy_timeout_s)


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back if a transaction is still open (after an I/O error SQLite may have ended it itself)."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _raise_as_store_error(exc: sqlite3.DatabaseError, path: Path, busy_timeout_s: float) -> NoReturn:
    """Re-raise SQLite's error as the store error a user can act on (others, e.g. a constraint, as they are)."""
    if isinstance(exc, sqlite3.OperationalError) and _is_busy(exc):
        raise locked_error(path, busy_timeout_s) from exc
    err = store_error(exc, path)
    if err is exc:
        raise exc
    raise err from exc


def _check_path(path: Path) -> None:
    """A folder is refused by name; the file itself is only ever opened by SQLite.

    Never open the .db file (or its -wal/-shm) with Python's open(), not even to read its header: on
    POSIX, closing *any* descriptor of a file drops every fcntl lock the process holds on it, including
    the locks of this process's live SQLite connections. Another process that then closes its connection
    believes it is the last user, checkpoints, and deletes the WAL under the live writer, whose later
    commits are lost. SQLite's own "file is not a database" is reported instead (`_configure`).
    """
    if path.is_dir():
        raise InputFileError(f"Run store path {path} is a folder; pass a file path such as {path / 'traitwatch.db'}")


def _schema_version(conn: sqlite3.Connection, path: Path) -> int | None:
    """The store's schema version, or None for an empty database that we may initialise."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        return None
    if "meta" not in tables:
        raise InputFileError(
            f"{path} is an SQLite database but not a traitwatch run store (no meta table); "
            "pass another --store path so traitwatch does not write into it"
        )
    missing = sorted(_TABLES - tables)
    if missing:
        raise InputFileError(f"Run store {path} lacks the table(s) {', '.join(missing)}; it is damaged or was not "
                             "written by traitwatch: pass another --store path")
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.OperationalError:  # a table named meta of another shape
        row = None
    try:
        return int(row[0]) if row is not None else None
    except (TypeError, ValueError):
        pass
    raise InputFileError(f"Run store {path} has no readable schema_version; it is damaged or was not written by "
                         "traitwatch: pass another --store path")


def _check_version(version: int, path: Path) -> None:
    if version < 1:
        raise InputFileError(f"Run store {path} has schema version {version}, which no traitwatch writes; it is damaged "
                             "or not a traitwatch store: pass another --store path")
    if version > SCHEMA_VERSION:
        raise StoreVersionError(
            f"Run store {path} has schema version {version}, newer than this traitwatch reads "
            f"({SCHEMA_VERSION}); upgrade traitwatch (pip install -U traitwatch) to open it"
        )


def _migrate(conn: sqlite3.Connection, path: Path, busy_timeout_s: float) -> int:
    """Bring an older store up to `SCHEMA_VERSION` in one write transaction; returns the version now.

    Why on open, in one transaction: every reader and writer then sees either the old schema or the new
    one, never half of it, and a process killed mid-migration leaves the old store as it was. The version is
    read again inside the transaction because another process may have migrated the store meanwhile.
    """
    with write_transaction(conn, path, busy_timeout_s):
        version = _schema_version(conn, path)
        assert version is not None
        while version < SCHEMA_VERSION:
            for statement in _MIGRATIONS[version]:
                conn.execute(statement)
            version += 1
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
    return version


def connect(path: Path, *, busy_timeout_s: float, create: bool) -> sqlite3.Connection:
    """Open (and if needed create) a store, returning an autocommit connection.

    Autocommit (`isolation_level=None`) means the Python module never opens transactions behind
    our back; every write goes through `write_transaction`. A "disk I/O error" is not retried: it is a
    fault to report with the file named (`StoreIOError`), not something to wait out.
    """
    _check_path(path)
    if not path.exists():
        if not create:
            raise InputFileError(f"No run store at {path}; pass --store with the .db file written during training")
        path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None)
    try:
        _configure(conn, path, busy_timeout_s, create=create)
    except BaseException:
        conn.close()
        raise
    return conn


def _configure(conn: sqlite3.Connection, path: Path, busy_timeout_s: float, *, create: bool = True) -> None:
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        # Read what the file is before anything writes to it: switching another program's database to WAL, or
        # creating tables in an empty file a read-only command was given, would change a file that is not ours.
        version = _schema_version(conn, path)
        if version is None and not create:
            raise InputFileError(f"Run store {path} is empty (no traitwatch tables); pass the .db file written "
                                 "during training")
        if version is not None:
            _check_version(version, path)
        # WAL lets `traitwatch runs` read while training writes, and a killed writer's
        # half-written transaction is simply never seen (it has no commit record).
        conn.execute("PRAGMA journal_mode = WAL")
        # Writes are rare (one per measured checkpoint), so a full fsync per commit costs nothing
        # and a power cut cannot lose a measurement that was reported as stored.
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        if version is None:
            with write_transaction(conn, path, busy_timeout_s):
                version = _schema_version(conn, path)  # another process may have created it meanwhile
                if version is None:
                    # Not executescript(): it COMMITs first, which would split creation in two.
                    for statement in _DDL.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                    version = SCHEMA_VERSION
            _check_version(version, path)  # a store another process created meanwhile may be newer
        if version < SCHEMA_VERSION:
            _migrate(conn, path, busy_timeout_s)
    except sqlite3.DatabaseError as exc:
        _raise_as_store_error(exc, path, busy_timeout_s)
    except UnicodeDecodeError:  # a damaged page whose table names are not UTF-8
        raise InputFileError(f"Run store {path} is damaged (its schema holds text that is not UTF-8); copy out what "
                             f"is readable with `sqlite3 {path} .recover` and pass a new --store path") from None


def store_error(exc: sqlite3.Error, path: Path) -> Exception:
    """SQLite's error as the one-line error a user can act on, naming the file; others unchanged."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = None if code is None else code & 0xFF
    if primary == sqlite3.SQLITE_NOTADB or "not a database" in str(exc):
        return InputFileError(
            f"{path} is not a traitwatch run store (not an SQLite database); pass the .db file "
            "written by traitwatch, or a new path to create one"
        )
    if primary == sqlite3.SQLITE_CORRUPT or "malformed" in str(exc) or "unsupported file format" in str(exc):
        # "unsupported file format": a header whose schema format number no SQLite writes (a damaged header)
        return InputFileError(
            f"Run store {path} is damaged ({exc}); copy out what is readable with "
            f"`sqlite3 {path} .recover` and pass a new --store path"
        )
    if primary in (sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL, sqlite3.SQLITE_CANTOPEN) or "disk I/O" in str(exc):
        return StoreIOError(
            f"Run store {path}: {exc}. Check that its disk is local (not NFS: WAL needs shared memory), "
            "not full, and writable; nothing was retried"
        )
    return exc

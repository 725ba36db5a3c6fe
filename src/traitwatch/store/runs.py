"""`RunStore`: training runs and their drift, behaviour and alarms in one SQLite file.

Why SQLite: one file per project that survives a killed training job (each write is a single
committed transaction, and WAL never exposes a half-written one), can be read by `traitwatch runs`
while training writes, and needs no server.

Only the main process writes. Under distributed training call the store from rank 0 only
(`state.is_world_process_zero`); the other ranks take part in measuring, not in storing. Keep the
file on a local disk: WAL needs shared memory, which network filesystems (NFS) do not provide.
"""

from __future__ import annotations

import functools
import json
import operator
import os
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import numpy as np

from traitwatch.errors import InputFileError, TraitwatchError
from traitwatch.store.errors import RunMismatchError, UnknownRunError
from traitwatch.store.export import ExportFormat, trajectory_arrays, write_export
from traitwatch.store.records import (
    RUN_STATUSES,
    AlarmRecord,
    BehaviorRecord,
    Measurement,
    RunRecord,
    RunStatus,
    Suspects,
    decode_array,
    dump_drift,
    dump_json,
    encode_array,
    load_json,
    utc_now,
)
from traitwatch.store.schema import connect, store_error, write_transaction

__all__ = ["DEFAULT_STORE_NAME", "RunStore"]

DEFAULT_STORE_NAME = "traitwatch.db"
"""One store per project folder: found in the current directory unless a path is given."""

_RUN_COLUMNS = (
    "r.run_id, r.created_at, r.model, r.dataset, r.seed, r.hyperparameters, r.basis_fingerprint, "
    "r.status, r.notes, COUNT(m.step), MAX(m.step)"
)


def _step(step: int) -> int:
    """Steps are optimizer updates counted from 0 (the base model); numpy ints are accepted."""
    if isinstance(step, bool):
        raise TypeError("step must be an int, not a bool")
    value = operator.index(step)
    if value < 0:
        raise ValueError(f"step must be >= 0, got {value}")
    return value


def _optional_float(value: float | None) -> float | None:
    return None if value is None else float(value)


T = TypeVar("T")


def _reads(method: Callable[..., T]) -> Callable[..., T]:
    """A read that meets a damaged file or record raises one line naming the store, never SQLite's or json's error.

    SQLite finds a corrupt page only when a query reaches it, and a record edited outside traitwatch (a drift
    that is not a JSON object, a per-prompt blob of the wrong size) fails only when it is decoded: both are
    the store's input errors, reported with the file and the fix.
    """

    @functools.wraps(method)
    def wrapper(self: RunStore, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except TraitwatchError:
            raise
        except sqlite3.DatabaseError as exc:
            error = store_error(exc, self.path)
            if error is exc:  # no mapping of its own: still the file's fault, not the caller's
                error = InputFileError(f"Run store {self.path} cannot be read ({str(exc)[:100]}); it is damaged or "
                                       "was not written by traitwatch: pass another --store path")
            raise error from None
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            reason = str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__
            raise InputFileError(f"Run store {self.path} holds a damaged record ({reason}); copy out what is readable "
                                 f"with `sqlite3 {self.path} .recover` and pass a new --store path") from None

    return wrapper


class RunStore:
    """A project's run store. Use as a context manager, or call `close()`.

    Parameters
    ----------
    path:
        The .db file; `traitwatch.db` in the current directory by default. Missing parent folders
        are created.
    busy_timeout_s:
        How long a write waits for another writer before `StoreLockedError`. Writers hold the lock
        for milliseconds, so a long wait means something is wrong rather than slow.
    create:
        False to refuse a missing file (read-only commands should not leave an empty store behind
        after a typo in the path).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        busy_timeout_s: float = 10.0,
        create: bool = True,
    ) -> None:
        if busy_timeout_s < 0:
            raise ValueError(f"busy_timeout_s must be >= 0, got {busy_timeout_s}")
        self.path = Path(DEFAULT_STORE_NAME if path is None else path).expanduser().absolute()
        self.busy_timeout_s = float(busy_timeout_s)
        self._conn = connect(self.path, busy_timeout_s=self.busy_timeout_s, create=create)

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection; safe to call twice."""
        self._conn.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RunStore({str(self.path)!r})"

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with write_transaction(self._conn, self.path, self.busy_timeout_s) as conn:
            yield conn

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """Several reads that must agree with each other (a writer may commit between them)."""
        if self._conn.in_transaction:  # already inside an outer snapshot or write
            yield self._conn
            return
        self._conn.execute("BEGIN")
        try:
            yield self._conn
        finally:
            self._conn.execute("COMMIT")

    # -- runs ------------------------------------------------------------------------------------

    def start_run(
        self,
        run_id: str,
        *,
        model: str,
        dataset: str | None = None,
        seed: int | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        basis_fingerprint: Mapping[str, Any] | None = None,
    ) -> RunRecord:
        """Create a run, or resume it if `run_id` exists.

        Resuming is what makes a restarted job continue its trajectory instead of starting a
        second one: the existing record is returned (status back to "running") and the caller
        continues after `last_step(run_id)`. The metadata of the first start is kept. A different
        model or basis fingerprint is refused, since their drift is not comparable.
        """
        if not isinstance(run_id, str) or not run_id:
            raise ValueError(f"run_id must be a non-empty string, got {run_id!r}")
        fingerprint = dump_json(basis_fingerprint)
        with self._write() as conn:
            row = conn.execute(
                "SELECT model, basis_fingerprint FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO runs (run_id, created_at, model, dataset, seed, hyperparameters, "
                    "basis_fingerprint, status) VALUES (?, ?, ?, ?, ?, ?, ?, 'running')",
                    (
                        run_id,
                        utc_now(),
                        str(model),
                        dataset,
                        None if seed is None else operator.index(seed),
                        dump_json(hyperparameters) or "{}",
                        fingerprint,
                    ),
                )
            else:
                old_model, old_fingerprint = row
                if old_model != str(model):
                    raise RunMismatchError(
                        f"Run {run_id!r} in {self.path} was started with model {old_model!r}, not "
                        f"{model!r}; use a new run id for a different model"
                    )
                if old_fingerprint is not None and fingerprint is not None and old_fingerprint != fingerprint:
                    raise RunMismatchError(
                        f"Run {run_id!r} in {self.path} was measured with another trait basis "
                        f"(fingerprint {old_fingerprint}); use a new run id for a different basis"
                    )
                conn.execute(
                    "UPDATE runs SET status = 'running', basis_fingerprint = COALESCE(basis_fingerprint, ?) "
                    "WHERE run_id = ?",
                    (fingerprint, run_id),
                )
            return self._get_run(conn, run_id)

    def finish_run(self, run_id: str, status: RunStatus = "finished", *, notes: str | None = None) -> RunRecord:
        """Mark a run as ended, so `traitwatch runs` can tell live runs from dead ones."""
        if status not in RUN_STATUSES:
            raise ValueError(f"status must be one of {RUN_STATUSES}, got {status!r}")
        with self._write() as conn:
            self._get_run(conn, run_id)
            conn.execute(
                "UPDATE runs SET status = ?, notes = COALESCE(?, notes) WHERE run_id = ?", (status, notes, run_id)
            )
            return self._get_run(conn, run_id)

    def import_run(self, source: str | os.PathLike[str], run_id: str) -> None:
        """Copy one run (record, measurements, behaviour, alarms) from another store, replacing it here.

        Why: processes that share a grid of runs (benchmark shards on several GPUs or nodes) each write their
        own store, because one SQLite file must not be written from several machines (see the module
        docstring); their finished runs are gathered into one store for the analysis. Rows are copied
        column by column, without their row ids, in one transaction.
        """
        with RunStore(source, create=False) as other:
            other.get_run(run_id)  # UnknownRunError, naming the store
        self._conn.execute("ATTACH DATABASE ? AS other", (str(Path(source).expanduser().absolute()),))
        try:
            with self._write() as conn:
                conn.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))  # cascades to the run's rows
                for table in ("runs", "measurements", "behavior", "alarms"):
                    cols = ", ".join(r[1] for r in conn.execute(f"PRAGMA main.table_info({table})") if r[1] != "id")
                    conn.execute(f"INSERT INTO main.{table} ({cols}) SELECT {cols} FROM other.{table} WHERE run_id = ?",
                                 (run_id,))
        finally:
            self._conn.execute("DETACH DATABASE other")

    @_reads
    def check(self) -> int:
        """Read and decode every record (runs, measurements, labels, alarms, suspects); returns the number of runs.

        `traitwatch check` runs this: a store it passes is one every reader can read in full.
        """
        records = self.runs()
        for run in records:
            self.measurements(run.run_id)
            self.behavior(run.run_id)
            self.alarms(run.run_id)
            self.suspects(run.run_id)
        return len(records)

    @_reads
    def get_run(self, run_id: str) -> RunRecord:
        """The run's record; `UnknownRunError` lists the known ids, as the fix is usually a typo."""
        return self._get_run(self._conn, run_id)

    @_reads
    def runs(self) -> list[RunRecord]:
        """All runs, oldest first."""
        rows = self._conn.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs r LEFT JOIN measurements m ON m.run_id = r.run_id "
            "GROUP BY r.run_id ORDER BY r.created_at, r.run_id"
        ).fetchall()
        return [self._run_record(row) for row in rows]

    def _get_run(self, conn: sqlite3.Connection, run_id: str) -> RunRecord:
        row = conn.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs r LEFT JOIN measurements m ON m.run_id = r.run_id "
            "WHERE r.run_id = ? GROUP BY r.run_id",
            (run_id,),
        ).fetchone()
        if row is None:
            known = [r[0] for r in conn.execute("SELECT run_id FROM runs ORDER BY created_at, run_id")]
            listed = ", ".join(known[:20]) + (f", ... ({len(known)} in all)" if len(known) > 20 else "")
            raise UnknownRunError(
                f"No run {run_id!r} in {self.path}; known runs: {listed or '(none)'}"
            )
        return self._run_record(row)

    @staticmethod
    def _run_record(row: Sequence[Any]) -> RunRecord:
        return RunRecord(
            run_id=row[0],
            created_at=row[1],
            model=row[2],
            dataset=row[3],
            seed=row[4],
            hyperparameters=load_json(row[5]) or {},
            basis_fingerprint=load_json(row[6]),
            status=row[7],
            notes=row[8],
            n_measurements=row[9],
            last_step=row[10],
        )

    # -- measurements ----------------------------------------------------------------------------

    def add_measurement(
        self,
        run_id: str,
        step: int,
        drift: Mapping[str, float],
        drift_norm: float,
        per_prompt: np.ndarray | None = None,
        wall_time_s: float | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Store one checkpoint's drift; measuring a step again replaces the earlier row.

        Replacing (not duplicating) is what lets a resumed job re-measure its last step safely.
        The trait names must match the run's other measurements, so a trajectory is one matrix.
        """
        step = _step(step)
        drift_json = dump_drift(drift)
        norm = float(drift_norm)
        if not np.isfinite(norm):
            raise ValueError(f"drift_norm is {norm}; refusing to store a non-finite value")
        blob, shape = (None, None) if per_prompt is None else encode_array(per_prompt)
        with self._write() as conn:
            self._get_run(conn, run_id)
            other = conn.execute(
                "SELECT drift FROM measurements WHERE run_id = ? AND step != ? LIMIT 1", (run_id, step)
            ).fetchone()
            if other is not None and list(json.loads(other[0])) != list(json.loads(drift_json)):
                raise RunMismatchError(
                    f"Run {run_id!r} in {self.path} has traits {list(json.loads(other[0]))}, but step {step} "
                    f"has {list(json.loads(drift_json))}; use a new run id for a different basis"
                )
            conn.execute(
                "INSERT INTO measurements (run_id, step, drift, drift_norm, per_prompt, per_prompt_shape, "
                "wall_time_s, created_at, extra) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (run_id, step) DO UPDATE SET drift = excluded.drift, "
                "drift_norm = excluded.drift_norm, per_prompt = excluded.per_prompt, "
                "per_prompt_shape = excluded.per_prompt_shape, wall_time_s = excluded.wall_time_s, "
                "created_at = excluded.created_at, extra = excluded.extra",
                (run_id, step, drift_json, norm, blob, shape, _optional_float(wall_time_s), utc_now(), dump_json(extra)),
            )

    @_reads
    def measurements(self, run_id: str, *, per_prompt: bool = True) -> list[Measurement]:
        """The run's measurements in step order; `per_prompt=False` skips the arrays (faster)."""
        blob_cols = "per_prompt, per_prompt_shape" if per_prompt else "NULL, NULL"
        with self._snapshot() as conn:
            self._get_run(conn, run_id)
            rows = conn.execute(
                f"SELECT run_id, step, drift, drift_norm, {blob_cols}, wall_time_s, created_at, extra "
                "FROM measurements WHERE run_id = ? ORDER BY step",
                (run_id,),
            ).fetchall()
        return [
            Measurement(
                run_id=row[0],
                step=row[1],
                drift=json.loads(row[2]),
                drift_norm=row[3],
                per_prompt=None if row[4] is None else decode_array(row[4], row[5]),
                wall_time_s=row[6],
                created_at=row[7],
                extra=load_json(row[8]),
            )
            for row in rows
        ]

    @_reads
    def last_step(self, run_id: str) -> int | None:
        """The highest measured step, or None: where a resumed job continues from."""
        return self.get_run(run_id).last_step

    @_reads
    def trajectory(self, run_id: str) -> dict[str, np.ndarray]:
        """The run's drift as arrays for plotting and the monitor.

        Keys: `steps` (n,) int64, `drift` (n, n_traits) float64 in trait order, `norms` (n,)
        float64, `traits` (n_traits,) str.
        """
        return trajectory_arrays(self.measurements(run_id, per_prompt=False))

    # -- behaviour and alarms --------------------------------------------------------------------

    def add_behavior(
        self,
        run_id: str,
        step: int,
        metric: str,
        value: float,
        *,
        source: str,
        ci_low: float | None = None,
        ci_high: float | None = None,
        n: int | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Store a behavioural metric (e.g. "em_rate") at a step.

        `source` ("judge:gpt-4o", "proxy", ...) is required because judged and proxy rates are not
        interchangeable when fitting the monitor. Re-scoring the same (step, metric, source)
        replaces the earlier value.
        """
        step = _step(step)
        with self._write() as conn:
            self._get_run(conn, run_id)
            conn.execute(
                "INSERT INTO behavior (run_id, step, metric, value, ci_low, ci_high, n, details, source, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (run_id, step, metric, source) DO UPDATE SET value = excluded.value, "
                "ci_low = excluded.ci_low, ci_high = excluded.ci_high, n = excluded.n, "
                "details = excluded.details, created_at = excluded.created_at",
                (
                    run_id,
                    step,
                    str(metric),
                    float(value),
                    _optional_float(ci_low),
                    _optional_float(ci_high),
                    None if n is None else operator.index(n),
                    dump_json(details),
                    str(source),
                    utc_now(),
                ),
            )

    @_reads
    def behavior(self, run_id: str, metric: str | None = None) -> list[BehaviorRecord]:
        """Behavioural metrics of a run in step order, optionally only one metric."""
        with self._snapshot() as conn:
            self._get_run(conn, run_id)
            rows = conn.execute(
                "SELECT run_id, step, metric, value, ci_low, ci_high, n, details, source, created_at "
                "FROM behavior WHERE run_id = ? AND (? IS NULL OR metric = ?) ORDER BY step, metric, source",
                (run_id, metric, metric),
            ).fetchall()
        return [
            BehaviorRecord(
                run_id=r[0], step=r[1], metric=r[2], value=r[3], ci_low=r[4], ci_high=r[5], n=r[6],
                details=load_json(r[7]), source=r[8], created_at=r[9],
            )
            for r in rows
        ]

    def add_alarm(self, run_id: str, step: int, kind: str, value: float, threshold: float, action: str, *,
                  details: Mapping[str, Any] | None = None) -> None:
        """Record that the monitor fired and what was done (`action`: e.g. "logged", "stopped").

        One alarm per (step, kind): a resumed job that re-measures a step records it once. `details` (JSON)
        is what the alarm is about beyond its number, e.g. `{"suspects": ...}`, the training rows trained
        just before it (`Suspects.to_json()`).
        """
        step = _step(step)
        with self._write() as conn:
            self._get_run(conn, run_id)
            conn.execute(
                "INSERT INTO alarms (run_id, step, kind, value, threshold, action, created_at, details) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, step, kind) DO UPDATE SET "
                "value = excluded.value, threshold = excluded.threshold, action = excluded.action, "
                "created_at = excluded.created_at, details = excluded.details",
                (run_id, step, str(kind), float(value), float(threshold), str(action), utc_now(), dump_json(details)),
            )

    @_reads
    def alarms(self, run_id: str) -> list[AlarmRecord]:
        """The run's alarms in step order."""
        with self._snapshot() as conn:
            self._get_run(conn, run_id)
            rows = conn.execute(
                "SELECT run_id, step, kind, value, threshold, action, created_at, details FROM alarms "
                "WHERE run_id = ? ORDER BY step, kind",
                (run_id,),
            ).fetchall()
        return [AlarmRecord(*row[:7], details=load_json(row[7])) for row in rows]

    @_reads
    def suspects(self, run_id: str) -> list[Suspects]:
        """Every measurement's stored `Suspects` (`extra["suspects"]`), in step order; [] for runs without.

        The training callback stores, at each measurement of a run given per-row scores, the top-k rows trained
        since the last clean measurement, marked `alarm` when the measurement alarmed. An unreadable entry
        is skipped: a store from another version must still list what it can.
        """
        out: list[Suspects] = []
        for m in self.measurements(run_id, per_prompt=False):
            data = (m.extra or {}).get("suspects")
            if isinstance(data, Mapping):
                try:
                    out.append(Suspects.from_json(data, step=m.step))
                except (KeyError, TypeError, ValueError):
                    continue
        return out

    # -- export ----------------------------------------------------------------------------------

    def export(
        self,
        run_ids: Sequence[str] | None,
        path: str | os.PathLike[str],
        format: ExportFormat | None = None,  # noqa: A002 - the natural name for the caller
    ) -> Path:
        """Write one row per measurement, one column per trait, for analysis outside traitwatch.

        `format` defaults to the file suffix (.csv or .parquet). Per-prompt arrays stay in the
        store; read them with `measurements()`. Returns the path written.
        """
        with self._snapshot():
            ids = [r.run_id for r in self.runs()] if run_ids is None else list(run_ids)
            per_run = [self.measurements(run_id, per_prompt=False) for run_id in ids]
        return write_export([m for ms in per_run for m in ms], Path(path), format)


"""The embedded run store: one SQLite file per project holding runs, drift, behaviour and alarms.

Only the main process (rank 0) writes; see `runs.py` for why and for the crash guarantees.
"""

from __future__ import annotations

from traitwatch.store.errors import (
    RunMismatchError,
    StoreIOError,
    StoreLockedError,
    StoreVersionError,
    StoreWriteError,
    UnknownRunError,
)
from traitwatch.store.export import ExportFormat
from traitwatch.store.records import (
    AlarmRecord,
    BehaviorRecord,
    Measurement,
    RunRecord,
    RunStatus,
    SuspectRow,
    Suspects,
    describe_guard,
    describe_rewind,
    merge_suspects,
)
from traitwatch.store.runs import DEFAULT_STORE_NAME, RunStore
from traitwatch.store.schema import SCHEMA_VERSION

__all__ = [
    "DEFAULT_STORE_NAME",
    "SCHEMA_VERSION",
    "AlarmRecord",
    "BehaviorRecord",
    "ExportFormat",
    "Measurement",
    "RunMismatchError",
    "RunRecord",
    "RunStatus",
    "RunStore",
    "StoreIOError",
    "StoreLockedError",
    "StoreVersionError",
    "StoreWriteError",
    "SuspectRow",
    "Suspects",
    "UnknownRunError",
    "describe_guard",
    "describe_rewind",
    "merge_suspects",
]

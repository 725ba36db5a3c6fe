"""Errors raised by the run store.

They subclass the project's `TraitwatchError` family so the CLI prints their one-line message and
exits 2 instead of showing a traceback: each one is caused by something the user can fix (another
process writing, an old traitwatch, a wrong run id), not by a bug.
"""

from __future__ import annotations

from traitwatch.errors import BasisMismatchError, TraitwatchError

__all__ = [
    "RunMismatchError",
    "StoreIOError",
    "StoreLockedError",
    "StoreWriteError",
    "StoreVersionError",
    "UnknownRunError",
]


class StoreLockedError(TraitwatchError, OSError):
    """Another process held the store's write lock for longer than the busy timeout."""


class StoreIOError(TraitwatchError, OSError):
    """SQLite could not read or write the store's files ("disk I/O error"): a fault, never retried.

    On a healthy local disk this does not happen by chance. Retrying hides what causes it (a full disk,
    a network filesystem without the shared memory WAL needs, or a process that dropped the store's
    locks), and a retry that "succeeds" may be writing to a WAL that another process already deleted.
    """


class StoreWriteError(TraitwatchError):
    """A measurement, label or alarm could not be stored during training, so the run is stopped.

    A run that goes on with a gap in its store would be reported as done with its numbers lost.
    """


class StoreVersionError(TraitwatchError):
    """The store was written by a newer traitwatch whose schema this code cannot read safely."""


class UnknownRunError(TraitwatchError, LookupError):
    """A run id that is not in the store (LookupError, not KeyError, so `str()` stays readable)."""


class RunMismatchError(BasisMismatchError):
    """A resumed run id was started before with another model or trait basis.

    Mixing two models' drift in one trajectory would make the monitor compare incomparable
    numbers, so resuming is refused rather than silently appending.
    """

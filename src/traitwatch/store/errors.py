"""Errors raised by the run store.

They subclass the project's `TraitwatchError` family so the CLI prints their one-line message and
exits 2 instead of showing a traceback: each one is caused by something the user can fix (another
process writing, an old traitwatch, a wrong run id), not by a bug.
"""

from __future__ import annotations

from traitwatch.errors import BasisMismatchError, TraitwatchError

__all__ = [
    "RunMismatchError",
    "StoreLockedError",
    "StoreVersionError",
    "UnknownRunError",
]


class StoreLockedError(TraitwatchError, OSError):
    """Another process held the store's write lock for longer than the busy timeout."""


class StoreVersionError(TraitwatchError):
    """The store was written by a newer traitwatch whose schema this code cannot read safely."""


class UnknownRunError(TraitwatchError, LookupError):
    """A run id that is not in the store (LookupError, not KeyError, so `str()` stays readable)."""


class RunMismatchError(BasisMismatchError):
    """A resumed run id was started before with another model or trait basis.

    Mixing two models' drift in one trajectory would make the monitor compare incomparable
    numbers, so resuming is refused rather than silently appending.
    """

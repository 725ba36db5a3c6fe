"""Errors a user can act on.

Every error raised for bad input (a file, a flag, a model that does not fit a basis) is a
`TraitwatchError`: its message is one line that names the offending input and says what to do.
The CLI prints that line and exits non-zero without a traceback; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

__all__ = [
    "TraitwatchError",
    "InputFileError",
    "BasisMismatchError",
    "ModelLoadError",
]


class TraitwatchError(Exception):
    """Base class for errors caused by the user's input, not by a bug in traitwatch."""

    exit_code: int = 2


class InputFileError(TraitwatchError, ValueError):
    """A file or folder the user gave is missing, empty, corrupt or of the wrong shape."""


class BasisMismatchError(TraitwatchError, ValueError):
    """A trait basis (or monitor) was built for another model, tokenizer or layer set."""


class ModelLoadError(TraitwatchError, OSError):
    """A model, adapter or checkpoint could not be loaded from what the user named."""

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


# Control characters (and Unicode line and paragraph separators) as visible escapes: a message quotes what the
# user gave (a YAML key, a row's role, SQLite's reading of a damaged page), and one with a newline or an escape
# sequence in it would no longer be one line, or would print differently from what a caller reads.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(32), 0x7F)} | {0x85: "\\x85", 0x2028: "\\u2028", 0x2029: "\\u2029"}


class TraitwatchError(Exception):
    """Base class for errors caused by the user's input, not by a bug in traitwatch.

    The message is kept to one printable line: control characters quoted from the input are escaped.
    """

    exit_code: int = 2

    def __init__(self, *args: object, **kwargs: object) -> None:  # kwargs: ImportError's name/path (MissingExtraError)
        if len(args) == 1 and isinstance(args[0], str):
            args = (args[0].translate(_ESCAPES),)
        super().__init__(*args, **kwargs)


class InputFileError(TraitwatchError, ValueError):
    """A file or folder the user gave is missing, empty, corrupt or of the wrong shape."""


class BasisMismatchError(TraitwatchError, ValueError):
    """A trait basis (or monitor) was built for another model, tokenizer or layer set."""


class ModelLoadError(TraitwatchError, OSError):
    """A model, adapter or checkpoint could not be loaded from what the user named."""

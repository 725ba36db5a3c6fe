"""Imports of packages that only an extra installs: a missing one is a one-line error naming the extra.

`pip install traitwatch` is what the training callback needs; reports, the HTTP judge, parquet export and
GGUF loading each come with an extra (pyproject.toml). `require` is used where such a package is imported:

    go = require("plotly.graph_objects", extra="report")

and raises `MissingExtraError`, whose message says which `pip install "traitwatch[EXTRA]"` to run. A module
that names the package at its top (type hints, `except httpx.TransportError`) uses `require(..., lazy=True)`:
the module still imports, and the error comes when the package is first used.
"""

from __future__ import annotations

import importlib
import types
from typing import Any

from traitwatch.errors import TraitwatchError

__all__ = ["EXTRAS", "MissingExtraError", "require"]

# extra -> what it enables, as the error message says it
EXTRAS = {
    "report": "reports and figures",
    "judge": "the HTTP judge and generator",
    "parquet": "parquet export",
    "gguf": "loading GGUF models such as the bundled smollm2-135m",
}


class MissingExtraError(TraitwatchError, ImportError):
    """An optional package is not installed; the message names the extra that installs it."""


def _missing(module: str, extra: str) -> MissingExtraError:
    package = module.partition(".")[0]
    return MissingExtraError(
        f"{package} is needed for {EXTRAS[extra]} but is not installed: run `pip install \"traitwatch[{extra}]\"`.",
        name=package,
    )


class _Absent(types.ModuleType):
    """Stands in for a module that is not installed; any attribute read raises the one-line error."""

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(module)
        self._error = (module, extra)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):  # introspection (copy, pickle, doctest) must not raise the install hint
            raise AttributeError(attr)
        raise _missing(*self._error)


def require(module: str, *, extra: str, lazy: bool = False) -> Any:
    """Import `module`; if its package is not installed, raise (or, with `lazy`, defer) `MissingExtraError`."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        # only the package itself missing is the extra's fault; a broken install keeps its own error
        if exc.name is None or not (module == exc.name or module.startswith(exc.name + ".")):
            raise
        if lazy:
            return _Absent(module, extra)
        raise _missing(module, extra) from None

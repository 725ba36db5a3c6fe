"""Shared CLI plumbing: consoles, user-error handling, progress bars, layer parsing."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from traitwatch.errors import TraitwatchError

__all__ = ["ApiKeyEnvOption", "GeneratorApiKeyEnvOption", "err", "out", "parse_layers", "progress_bar", "user_errors"]

# Progress and diagnostics go to stderr so stdout stays clean for tables, paths and JSON.
err = Console(stderr=True)
# Tables are wide (a column per trait); when stdout is a file or pipe, rich would cut them to 80 columns.
out = Console(width=None if Console().is_terminal else 160)

F = TypeVar("F", bound=Callable[..., Any])

# Endpoint options that `eval` and `bench` share, declared once.
ApiKeyEnvOption = Annotated[str | None, typer.Option("--api-key-env", help="Env var holding the judge's API key.")]
GeneratorApiKeyEnvOption = Annotated[
    str | None, typer.Option("--generator-api-key-env", help="Env var with the generation server's key.")
]


def user_errors(fn: F) -> F:
    """Turn a `TraitwatchError` into one red line and exit code 2 (traceback with TRAITWATCH_DEBUG=1)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TraitwatchError as exc:
            if os.environ.get("TRAITWATCH_DEBUG"):
                raise
            # Escaped: a message may hold brackets ("[run-s0]", "step(s) [2]") that rich would read as markup.
            err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


@contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr; yields an `advance(n)` callback for library functions."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def parse_layers(spec: str | None) -> list[int] | None:
    """'12,15,18' or '10-20' or '10-20:2' (step) -> list of ints; None stays None."""
    if spec is None or not spec.strip():
        return None
    layers: list[int] = []
    try:
        for part in spec.split(","):
            part = part.strip()
            if "-" in part[1:]:
                rng, _, step = part.partition(":")
                lo, hi = rng.split("-", 1) if not rng.startswith("-") else (rng, rng)
                layers.extend(range(int(lo), int(hi) + 1, int(step) if step else 1))
            else:
                layers.append(int(part))
    except ValueError:
        raise typer.BadParameter(f"{spec!r} is not a layer list; use e.g. 12,15,18 or 10-20 or 10-20:2") from None
    return layers


def parse_fraction(spec: str, option: str) -> float | None:
    """'auto' -> None (the library's choice: `reference.swap_fraction`); a number in (0, 0.5) -> itself."""
    if spec.strip().lower() == "auto":
        return None
    try:
        value = float(spec)
    except ValueError:
        value = float("nan")
    if not 0 < value < 0.5:
        raise typer.BadParameter(f"{option} {spec!r}: give 'auto' or a share of rows in (0, 0.5), e.g. 0.3")
    return value

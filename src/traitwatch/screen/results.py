"""The resumable results file: a header line, then one JSON line per screened example.

Rows are appended one batch at a time (one `write`, flushed and fsync'd), keyed by the example's line
number in the dataset, so an interrupted screen of a large file loses at most the batch in flight. A
rerun reads the file, checks that its header describes the same screen (dataset content, model,
basis, layer, position, reference), drops a half-written last line if the interruption left one, and
skips every line already present.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traitwatch.errors import InputFileError

__all__ = ["FORMAT", "FORMAT_VERSION", "SCORES", "ResultsFile", "Row", "read_results", "read_results_file"]

FORMAT = "traitwatch.screen"
FORMAT_VERSION = 1


SCORES = ("loss", "ratio", "loss_peak", "ratio_peak")
"""The optional per-row scores a screen can add besides the risk (`--rank-by` any of them)."""


@dataclass(frozen=True, slots=True)  # slots: a million rows of a large screen stay small
class Row:
    """One screened example. `drift` is in drift units (divided by the basis's N), trait order of the header."""

    line: int
    drift: tuple[float, ...]
    risk: float
    n_tokens: int
    truncated: bool
    reference_tokens: int | None = None  # length of the model's own answer (`reference="self"`)
    loss: float | None = None  # the model's mean NLL of the response (`with_loss`; the benchmark's best row screen)
    ratio: float | None = None  # log-likelihood ratio, misaligned vs aligned reference (`screen.reference_model`)
    loss_peak: float | None = None  # the loss's largest mean over PEAK_WINDOW consecutive response tokens
    ratio_peak: float | None = None  # the same for the ratio

    def to_json(self, trait_names: Sequence[str]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "line": self.line,
            "risk": self.risk,
            "drift": dict(zip(trait_names, self.drift, strict=True)),
            "n_tokens": self.n_tokens,
            "truncated": self.truncated,
        }
        if self.reference_tokens is not None:
            out["reference_tokens"] = self.reference_tokens
        for name in SCORES:
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], trait_names: Sequence[str]) -> Row:
        drift = obj["drift"]
        return cls(
            line=int(obj["line"]),
            drift=tuple(float(drift[t]) for t in trait_names),
            risk=float(obj["risk"]),
            n_tokens=int(obj["n_tokens"]),
            truncated=bool(obj["truncated"]),
            reference_tokens=None if obj.get("reference_tokens") is None else int(obj["reference_tokens"]),
            **{name: None if obj.get(name) is None else float(obj[name]) for name in SCORES},
        )


def read_results(path: Path, *, not_results: str, corrupt: str) -> tuple[dict[str, Any], dict[int, Row]]:
    """Header and rows of a results file, read only: a screen may still be appending to it, so a last line
    without its newline is a write in flight and is ignored (never cut off). `not_results` / `corrupt` end the
    error messages (what the caller's user should do)."""
    data = Path(path).read_bytes()
    lines = data[: data.rfind(b"\n") + 1].decode("utf-8", errors="replace").splitlines()
    try:
        header = json.loads(lines[0]) if lines else None
    except (ValueError, RecursionError):  # JSONDecodeError, a >4300-digit number, nesting past the stack
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT or not isinstance(header.get("trait_names"), list):
        raise InputFileError(f"{path}: not a traitwatch screen results file; {not_results}")
    names = list(header["trait_names"])
    rows: dict[int, Row] = {}
    for i, text in enumerate(lines[1:], start=2):
        if text.strip():
            try:
                row = Row.from_json(json.loads(text), names)
            except (KeyError, TypeError, ValueError, AttributeError, RecursionError):
                raise InputFileError(f"{path}, line {i}: corrupt result row; {corrupt}") from None
            rows[row.line] = row
    return header, rows


def read_results_file(path: str | Path) -> tuple[dict[str, Any], dict[int, Row]]:
    """A results file a user passes in (`train --screen`, `traitwatch check`): missing, foreign or corrupt is one
    line naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(
            f"{path}: no such screen results file; write one with `traitwatch screen DATA --basis BASIS --out FILE`")
    return read_results(path, not_results="written by `traitwatch screen --out`",
                        corrupt="rerun the screen into a new --out")


class ResultsFile:
    """Open (and repair) the results file at `path`, or prepare a new one, for the screen `header` describes.

    Keys of `header` must match the stored header exactly; values computed once for the file (the
    reference projection) are passed to `create` and read back from the file on resume.
    """

    def __init__(self, path: str | Path, header: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.header: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION, **header}
        self.trait_names: list[str] = list(self.header["trait_names"])
        self.rows: dict[int, Row] = {}
        self.is_new = not (self.path.exists() and self.path.stat().st_size > 0)
        if not self.is_new:
            self._resume()

    def create(self, extra: Mapping[str, Any]) -> None:
        """Write the header of a new file, with what was computed once for it (the reference)."""
        self.header.update(extra)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write_text(json.dumps(self.header, allow_nan=False) + "\n", mode="w")
        self.is_new = False

    @contextmanager
    def discarded_if_unfilled(self) -> Iterator[None]:
        """Remove the file on an error if it was new here and no row reached it (a header alone is no screen)."""
        new = self.is_new
        try:
            yield
        except BaseException:
            if new and not self.rows and self.path.exists():
                self.path.unlink()
            raise

    @property
    def done(self) -> set[int]:
        return set(self.rows)

    def _write_text(self, text: str, mode: str = "a") -> None:
        with self.path.open(mode, encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    def _resume(self) -> None:
        data = self.path.read_bytes()
        good = data.rfind(b"\n") + 1  # a last line without its newline was cut off mid-write
        lines = data[:good].decode("utf-8", errors="replace").splitlines()
        if not lines:
            raise InputFileError(f"{self.path}: not a screening results file (no header line); pass another --out")
        try:
            stored = json.loads(lines[0])
        except (ValueError, RecursionError):  # JSONDecodeError, a >4300-digit number, nesting past the stack
            stored = None
        if not isinstance(stored, dict) or stored.get("format") != FORMAT:
            raise InputFileError(f"{self.path}: not a traitwatch screening results file; pass another --out")
        for key, value in json.loads(json.dumps(self.header)).items():
            if stored.get(key) != value:
                raise InputFileError(
                    f"{self.path}: holds results of another screen ({key!r} differs: {_short(stored.get(key))} in "
                    f"the file, {_short(value)} now); pass a new --out, or delete the file to start over"
                )
        self.header = stored
        for i, text in enumerate(lines[1:], start=2):
            if not text.strip():
                continue
            try:
                row = Row.from_json(json.loads(text), self.trait_names)
            except (KeyError, TypeError, ValueError, AttributeError, RecursionError):
                raise InputFileError(f"{self.path}, line {i}: corrupt result row; delete the file to start over") from None
            self.rows[row.line] = row
        if good < len(data):
            with self.path.open("r+b") as fh:
                fh.truncate(good)

    def append(self, rows: Sequence[Row]) -> None:
        if not rows:
            return
        text = "".join(json.dumps(r.to_json(self.trait_names), allow_nan=False) + "\n" for r in rows)
        self._write_text(text)
        for r in rows:
            self.rows[r.line] = r


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."

"""Backend-neutral figure descriptions: what to draw, not how.

Why an intermediate layer: every report figure is drawn twice, interactively with plotly for the HTML and
statically with matplotlib for papers (`--format png|svg`). Describing a figure once as plain data (traces,
panels, threshold lines, notes) keeps the two drawings identical in content, and lets tests check what a
figure shows (which series, which notes) without parsing plotly JSON or pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "ALARM_COLOR",
    "Chart",
    "Dash",
    "HLine",
    "Marker",
    "PALETTE",
    "Table",
    "Trace",
    "TraceKind",
    "color_for",
    "finite_count",
]

TraceKind = Literal["line", "markers", "bar"]
Marker = Literal["circle", "circle-open", "x", "diamond", "triangle-up", "square"]
Dash = Literal["solid", "dash", "dot"]

PALETTE: tuple[str, ...] = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#d62728",
)
"""Run colours (tab10 with red moved last): red stays free for alarms, so an alarm never looks like a run."""

ALARM_COLOR = "#d62728"


def color_for(index: int) -> str:
    """The colour of the index-th run; one run keeps one colour in every figure of a report."""
    return PALETTE[index % (len(PALETTE) - 1)]


def _floats(values: Sequence[float] | np.ndarray | None) -> np.ndarray | None:
    return None if values is None else np.asarray(values, dtype=np.float64).reshape(-1)


def finite_count(values: np.ndarray | None) -> int:
    return 0 if values is None else int(np.isfinite(values).sum())


@dataclass(frozen=True)
class Trace:
    """One series. `y` is float with NaN for "not measured here", which both backends draw as a gap.

    `x` holds numbers (steps) or category labels (bar charts). `y_low`/`y_high` are absolute error-bar ends
    (e.g. a bootstrap CI), NaN where a point has none. `group` ties the traces of one run together so one
    legend click hides the run everywhere in a figure.
    """

    name: str
    x: tuple[float | int | str, ...]
    y: np.ndarray
    kind: TraceKind = "line"
    panel: int = 0
    color: str | None = None
    group: str | None = None
    show_legend: bool = True
    marker: Marker = "circle"
    dash: Dash = "solid"
    y_low: np.ndarray | None = None
    y_high: np.ndarray | None = None
    hover: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        y = np.asarray(self.y, dtype=np.float64).reshape(-1)
        if len(self.x) != y.size:
            raise ValueError(f"trace {self.name!r}: {len(self.x)} x values for {y.size} y values")
        object.__setattr__(self, "x", tuple(self.x))
        object.__setattr__(self, "y", y)
        for name in ("y_low", "y_high"):
            ends = _floats(getattr(self, name))
            if ends is not None and ends.size != y.size:
                raise ValueError(f"trace {self.name!r}: {name} has {ends.size} values for {y.size} points")
            object.__setattr__(self, name, ends)
        if self.hover is not None and len(self.hover) != y.size:
            raise ValueError(f"trace {self.name!r}: {len(self.hover)} hover texts for {y.size} points")

    @property
    def has_data(self) -> bool:
        return finite_count(self.y) > 0

    @property
    def has_error_bars(self) -> bool:
        return finite_count(self.y_low) + finite_count(self.y_high) > 0


@dataclass(frozen=True)
class HLine:
    """A horizontal reference line (the alarm threshold tau); `panel=None` draws it in every panel."""

    y: float
    label: str
    panel: int | None = None
    color: str = ALARM_COLOR
    dash: Dash = "dash"


@dataclass(frozen=True)
class Chart:
    """One figure: traces in one or more panels (subplots sharing the x axis), lines and notes.

    `notes` are shown next to the figure in the HTML and under it in static images: a report must say
    when a series is missing or partly NaN rather than silently drawing less. `caption` is plain reading
    help (e.g. a summary of the numbers) and is not a warning. `key` names the image file.
    """

    key: str
    title: str
    traces: tuple[Trace, ...]
    x_label: str = ""
    y_label: str = ""
    panels: tuple[str, ...] = ("",)
    hlines: tuple[HLine, ...] = ()
    notes: tuple[str, ...] = ()
    caption: str = ""
    x_range: tuple[float, float] | None = None
    y_range: tuple[float, float] | None = None
    categorical_x: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "traces", tuple(self.traces))
        object.__setattr__(self, "panels", tuple(self.panels) or ("",))
        object.__setattr__(self, "notes", tuple(self.notes))
        object.__setattr__(self, "hlines", tuple(self.hlines))
        bad = [t.name for t in self.traces if not 0 <= t.panel < len(self.panels)]
        if bad:
            raise ValueError(f"chart {self.key!r}: traces {bad} point at a panel that does not exist")

    @property
    def has_data(self) -> bool:
        """False when there is nothing finite to draw; the report then shows the notes alone."""
        return any(t.has_data for t in self.traces)


@dataclass(frozen=True)
class Table:
    """A plain table for the HTML (checkpoint verdicts, metric summaries); cells are preformatted text.

    `row_classes` lets a row carry a CSS class (e.g. "alarm") so verdicts stand out without colour alone.
    `notes` flag missing data (as on a `Chart`); `caption` is plain reading help.
    """

    key: str
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    notes: tuple[str, ...] = ()
    row_classes: tuple[str, ...] | None = None
    caption: str = ""

    def __post_init__(self) -> None:
        rows = tuple(tuple(str(c) for c in r) for r in self.rows)
        wrong = [i for i, r in enumerate(rows) if len(r) != len(self.columns)]
        if wrong:
            raise ValueError(f"table {self.key!r}: rows {wrong} do not have {len(self.columns)} cells")
        if self.row_classes is not None and len(self.row_classes) != len(rows):
            raise ValueError(f"table {self.key!r}: {len(self.row_classes)} row classes for {len(rows)} rows")
        object.__setattr__(self, "rows", rows)
        object.__setattr__(self, "columns", tuple(self.columns))
        object.__setattr__(self, "notes", tuple(self.notes))

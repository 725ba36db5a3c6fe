"""`Chart` -> static matplotlib image (PNG or SVG) for papers.

Why matplotlib and not plotly's own export: plotly's static export needs kaleido and a Chrome binary,
which a cluster node or CI image often lacks; matplotlib draws the same `Chart` with no browser. The
figure is built on a `matplotlib.figure.Figure` directly (no pyplot), so nothing touches pyplot's global
figure registry or backend. Notes are printed under the plot, so a missing series stays visible on paper.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from traitwatch._optional import require
from traitwatch.report.chart import Chart, Trace
from traitwatch.report.plotly_render import grid_shape

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["ImageFormat", "export_images", "to_matplotlib"]

ImageFormat = Literal["png", "svg"]

_MARKERS = {"circle": "o", "circle-open": "o", "x": "x", "diamond": "D", "triangle-up": "^", "square": "s"}
_DASHES = {"solid": "-", "dash": "--", "dot": ":"}


def _categories(traces: Sequence[Trace]) -> list[str]:
    """Union of category labels in first-seen order; bars and lines on categories share these positions."""
    categories: list[str] = []
    for t in traces:
        categories.extend(str(c) for c in t.x if str(c) not in categories)
    return categories


def _x_values(t: Trace, categories: list[str] | None) -> np.ndarray:
    if categories is None:
        return np.asarray(t.x, dtype=np.float64)
    return np.array([categories.index(str(c)) for c in t.x], dtype=np.float64)


def _draw_xy(ax: Axes, t: Trace, categories: list[str] | None) -> None:
    x = _x_values(t, categories)
    label = t.name if t.show_legend else None
    face = "none" if t.marker == "circle-open" else t.color
    if t.kind == "line":
        ax.plot(x, t.y, linestyle=_DASHES[t.dash], marker=_MARKERS[t.marker], markersize=3, color=t.color,
                label=label, linewidth=1.4)
    else:
        ax.plot(x, t.y, linestyle="none", marker=_MARKERS[t.marker], markersize=7, color=t.color,
                markerfacecolor=face, label=label)
    if t.has_error_bars:
        low = t.y_low if t.y_low is not None else t.y
        high = t.y_high if t.y_high is not None else t.y
        with np.errstate(invalid="ignore"):
            err = np.vstack([np.nan_to_num(t.y - low), np.nan_to_num(high - t.y)])
        ax.errorbar(x, t.y, yerr=err, linestyle="none", color=t.color, capsize=2, linewidth=0.8)


def _draw_bars(ax: Axes, traces: Sequence[Trace], categories: list[str]) -> None:
    """Grouped bars side by side at each category (matplotlib has no plotly-style barmode)."""
    width = 0.8 / max(len(traces), 1)
    for i, t in enumerate(traces):
        ax.bar(_x_values(t, categories) + (i - (len(traces) - 1) / 2) * width, t.y, width=width, color=t.color,
               label=t.name if t.show_legend else None)


def _category_ticks(ax: Axes, categories: list[str]) -> None:
    ax.set_xticks(np.arange(len(categories), dtype=float))
    ax.set_xticklabels(categories, rotation=20 if max(map(len, categories), default=0) > 8 else 0,
                       ha="right" if max(map(len, categories), default=0) > 8 else "center", fontsize=8)


def to_matplotlib(chart: Chart) -> Figure:
    """Draw a chart as a matplotlib figure (panels as a grid sharing x), notes printed underneath."""
    Figure = require("matplotlib.figure", extra="report").Figure

    n = len(chart.panels)
    rows, cols = grid_shape(n)
    note_lines = [line for note in chart.notes for line in textwrap.wrap("Note: " + note, 130)]
    note_lines += textwrap.wrap(chart.caption, 130)
    if not chart.has_data:
        note_lines.insert(0, "No data to draw for this figure.")
    note_height = 0.16 * len(note_lines)
    fig = Figure(figsize=(max(6.4, 3.6 * cols), 3.0 * rows + 0.9 + note_height), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharex=not chart.categorical_x)
    flat = [ax for row in axes for ax in row]
    for k, ax in enumerate(flat):
        if k >= n:
            ax.set_visible(False)
            continue
        in_panel = [t for t in chart.traces if t.panel == k]
        categories = _categories(in_panel) if chart.categorical_x else None
        bars = [t for t in in_panel if t.kind == "bar"]
        if bars and categories is not None:
            _draw_bars(ax, bars, categories)
        for t in in_panel:
            if t.kind != "bar":
                _draw_xy(ax, t, categories)
        if categories:
            _category_ticks(ax, categories)
        for line in chart.hlines:
            if line.panel is None or line.panel == k:
                ax.axhline(line.y, color=line.color, linestyle=_DASHES[line.dash], linewidth=1,
                           label=line.label if k == 0 or line.panel == k else None)
        if chart.panels[k]:
            ax.set_title(chart.panels[k], fontsize=9)
        if k + cols >= n:  # the lowest panel of its column: sharex hid its tick labels unless it is the last row
            ax.set_xlabel(chart.x_label, fontsize=8)
            ax.tick_params(labelbottom=True)
        if k % cols == 0:
            ax.set_ylabel(chart.y_label, fontsize=8)
        if chart.x_range is not None:
            ax.set_xlim(*chart.x_range)
        if chart.y_range is not None:
            ax.set_ylim(*chart.y_range)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    handles, labels = flat[0].get_legend_handles_labels()
    if handles:
        flat[0].legend(handles, labels, fontsize=6, loc="best")
    fig.suptitle(chart.title, fontsize=11)
    if note_lines:
        engine = fig.get_layout_engine()
        bottom = min(0.45, (note_height + 0.1) / fig.get_figheight())
        if engine is not None:
            engine.set(rect=(0.0, bottom, 1.0, 1.0 - bottom))
        fig.text(0.01, 0.01, "\n".join(note_lines), fontsize=7, va="bottom", ha="left", color="#8a4b00")
    return fig


def export_images(charts: Sequence[Chart], html_path: Path, image_format: ImageFormat) -> list[Path]:
    """One image per chart next to the HTML, named `<html stem>.<chart key>.<format>`; returns the paths."""
    if image_format not in ("png", "svg"):
        raise ValueError(f"image_format must be 'png' or 'svg', got {image_format!r}")
    matplotlib = require("matplotlib", extra="report")

    paths: list[Path] = []
    # SVG text stays text (editable and searchable in a paper), and with a fixed hash salt and no date
    # re-exporting the same report gives the same file. rc_context restores the settings afterwards.
    settings = {"svg.fonttype": "none", "svg.hashsalt": "traitwatch"}
    metadata: dict[str, str | None] = {"Date": None} if image_format == "svg" else {"Software": "traitwatch"}
    with matplotlib.rc_context(settings):
        for chart in charts:
            path = html_path.with_name(f"{html_path.stem}.{chart.key}.{image_format}")
            to_matplotlib(chart).savefig(path, format=image_format, dpi=200, metadata=metadata)
            paths.append(path)
    return paths

"""`Chart` -> interactive plotly figure and its HTML fragment.

The page inlines plotly.js exactly once (the first figure gets `include_plotlyjs=True`, the rest `False`),
so a report is one file that opens offline: no CDN, nothing fetched. Plotly is imported inside the
functions, because importing it costs about a second and most traitwatch commands never draw anything.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from traitwatch._optional import require
from traitwatch.report.chart import Chart, Trace

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["figure_html", "grid_shape", "to_plotly"]

_PANEL_HEIGHT = 250
_SINGLE_HEIGHT = 420


def grid_shape(n_panels: int) -> tuple[int, int]:
    """(rows, cols) for n panels: up to 4 across, so seven trait panels fit a laptop screen in two rows."""
    cols = min(max(n_panels, 1), 4)
    return math.ceil(max(n_panels, 1) / cols), cols


def _error_y(t: Trace) -> dict[str, Any] | None:
    if not t.has_error_bars:
        return None
    low = t.y_low if t.y_low is not None else t.y
    high = t.y_high if t.y_high is not None else t.y
    with np.errstate(invalid="ignore"):
        plus, minus = np.nan_to_num(high - t.y, nan=0.0), np.nan_to_num(t.y - low, nan=0.0)
    return {"type": "data", "symmetric": False, "array": plus.tolist(), "arrayminus": minus.tolist(), "width": 3}


def _trace(t: Trace) -> Any:
    go = require("plotly.graph_objects", extra="report")

    common: dict[str, Any] = {
        "x": list(t.x), "y": t.y, "name": t.name, "legendgroup": t.group or t.name, "showlegend": t.show_legend,
    }
    if t.hover is not None:
        common["hovertext"] = list(t.hover)
    if t.kind == "bar":
        return go.Bar(**common, marker={"color": t.color}, error_y=_error_y(t))
    mode = "lines+markers" if t.kind == "line" else "markers"  # markers keep a lone checkpoint visible
    size = 5 if t.kind == "line" else 10
    return go.Scatter(
        **common, mode=mode, line={"color": t.color, "dash": t.dash},
        marker={"color": t.color, "symbol": t.marker, "size": size, "line": {"width": 2, "color": t.color}},
        error_y=_error_y(t),
    )


def to_plotly(chart: Chart) -> go.Figure:
    """Draw a chart; panels become subplots that share the x axis."""
    go = require("plotly.graph_objects", extra="report")
    make_subplots = require("plotly.subplots", extra="report").make_subplots

    n = len(chart.panels)
    rows, cols = grid_shape(n)
    if n > 1:
        fig = make_subplots(rows=rows, cols=cols, subplot_titles=list(chart.panels), shared_xaxes=True,
                            horizontal_spacing=0.06, vertical_spacing=0.12)
    else:
        fig = go.Figure()
    for t in chart.traces:
        if n > 1:
            r, c = divmod(t.panel, cols)
            fig.add_trace(_trace(t), row=r + 1, col=c + 1)
        else:
            fig.add_trace(_trace(t))
    for line in chart.hlines:
        kwargs: dict[str, Any] = {}
        if n > 1:
            if line.panel is None:
                kwargs = {"row": "all", "col": "all"}
            else:
                r, c = divmod(line.panel, cols)
                kwargs = {"row": r + 1, "col": c + 1}
        fig.add_hline(y=line.y, line_dash=line.dash, line_color=line.color, annotation_text=line.label,
                      annotation_position="top left", **kwargs)
    height = _SINGLE_HEIGHT if n == 1 else _PANEL_HEIGHT * rows + 120
    fig.update_layout(
        title={"text": chart.title}, template="plotly_white", height=height, barmode="group",
        margin={"l": 60, "r": 20, "t": 70, "b": 50}, legend={"font": {"size": 11}},
    )
    if n == 1:
        fig.update_xaxes(title_text=chart.x_label)
        fig.update_yaxes(title_text=chart.y_label)
    else:
        for c in range(1, cols + 1):
            fig.update_xaxes(title_text=chart.x_label, row=rows, col=c)
        for r in range(1, rows + 1):
            fig.update_yaxes(title_text=chart.y_label, row=r, col=1)
    if chart.x_range is not None:
        fig.update_xaxes(range=list(chart.x_range))
    if chart.y_range is not None:
        fig.update_yaxes(range=list(chart.y_range))
    if chart.categorical_x:
        fig.update_xaxes(type="category")
    return fig


def figure_html(chart: Chart, *, include_plotlyjs: bool) -> str:
    """The figure as an HTML fragment; pass `include_plotlyjs=True` for the page's first figure only."""
    fig = to_plotly(chart)
    return fig.to_html(
        full_html=False, include_plotlyjs=include_plotlyjs, div_id=f"fig-{chart.key}",
        default_height=f"{fig.layout.height}px", config={"displaylogo": False, "responsive": True},
    )

"""Assemble the single self-contained HTML page: sections of figures, tables and visible notes.

Everything the reader must not miss (a missing series, NaN values, a single checkpoint, a monitor from
another basis) is a `div.tw-note` next to the figure it concerns and is repeated in the notes list at the
top, so it is seen even by someone who only skims. All text from the store is HTML-escaped: run ids and
metric names are user input.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field

from traitwatch.report.chart import Chart, Table
from traitwatch.report.plotly_render import figure_html

__all__ = ["NOTE_CLASS", "Section", "render_page"]

NOTE_CLASS = "tw-note"

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5rem auto; max-width: 1250px;
       color: #222; padding: 0 1rem; }
h1 { font-size: 1.5rem; margin-bottom: .2rem; } h2 { font-size: 1.2rem; border-bottom: 1px solid #ddd; }
.meta { color: #666; font-size: .85rem; }
.tw-note { background: #fff4e5; border-left: 4px solid #e08a00; padding: .35rem .6rem; margin: .3rem 0;
           font-size: .9rem; }
.tw-notes ul { padding-left: 0; list-style: none; }
figure.tw-figure { margin: 1rem 0 2rem 0; }
figure.tw-figure figcaption { font-weight: 600; margin-bottom: .3rem; }
.tw-empty { color: #666; font-style: italic; }
.tw-caption { color: #444; font-size: .9rem; margin: .2rem 0; }
table.tw-table { border-collapse: collapse; font-size: .85rem; margin: .5rem 0 1.5rem 0; }
table.tw-table th, table.tw-table td { border: 1px solid #ddd; padding: .2rem .5rem; text-align: left; }
table.tw-table th { background: #f4f4f4; }
tr.verdict-alarm td { background: #fde2e1; font-weight: 600; }
tr.verdict-no-monitor td, tr.verdict-no-prediction td, tr.verdict-prediction-only td { color: #777; }
"""


@dataclass(frozen=True)
class Section:
    """A titled part of the page (the runs, or the calibration): summary table, figures, tables, notes."""

    title: str
    summary: Table | None = None
    charts: Sequence[Chart] = ()
    tables: Sequence[Table] = ()
    notes: Sequence[str] = field(default=())
    intro: str = ""


def _notes_html(notes: Sequence[str]) -> str:
    return "".join(f'<div class="{NOTE_CLASS}">{html.escape(n)}</div>\n' for n in notes)


def _table_html(table: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = []
    for i, row in enumerate(table.rows):
        cls = f' class="{html.escape(table.row_classes[i])}"' if table.row_classes is not None else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
    caption = f'<p class="tw-caption">{html.escape(table.caption)}</p>\n' if table.caption else ""
    return (
        f'<h3 id="table-{html.escape(table.key)}">{html.escape(table.title)}</h3>\n{_notes_html(table.notes)}{caption}'
        f'<table class="tw-table" data-key="{html.escape(table.key)}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>\n"
    )


def render_page(title: str, sections: Sequence[Section], *, meta: Sequence[str] = ()) -> str:
    """The full HTML document. plotly.js is inlined once, with the first figure that has data."""
    parts = [
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n",
        f"<h1>{html.escape(title)}</h1>\n",
        "".join(f'<p class="meta">{html.escape(m)}</p>\n' for m in meta),
    ]
    all_notes = [n for s in sections for n in s.notes]
    all_notes += [n for s in sections for c in s.charts for n in c.notes if n not in all_notes]
    if all_notes:
        parts.append('<section class="tw-notes"><h2>Notes</h2>\n' + _notes_html(dict.fromkeys(all_notes)) + "</section>\n")
    plotly_included = False
    for section in sections:
        parts.append(f"<section>\n<h2>{html.escape(section.title)}</h2>\n")
        if section.intro:
            parts.append(f"<p>{html.escape(section.intro)}</p>\n")
        if section.summary is not None:  # what was found, before any figure
            parts.append(_table_html(section.summary))
        for chart in section.charts:
            parts.append(f'<figure class="tw-figure" data-key="{html.escape(chart.key)}">\n'
                         f"<figcaption>{html.escape(chart.title)}</figcaption>\n{_notes_html(chart.notes)}")
            if chart.caption:
                parts.append(f'<p class="tw-caption">{html.escape(chart.caption)}</p>\n')
            if chart.has_data:
                parts.append(figure_html(chart, include_plotlyjs=not plotly_included))
                plotly_included = True
            else:
                parts.append(f'<p class="tw-empty">No data to draw for "{html.escape(chart.title)}" (see the notes).</p>')
            parts.append("</figure>\n")
        for table in section.tables:
            parts.append(_table_html(table))
        parts.append("</section>\n")
    parts.append("</body>\n</html>\n")
    return "".join(parts)

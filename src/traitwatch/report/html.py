"""Assemble the single self-contained HTML page: verdicts first, then sections of figures, tables and notes.

The page leads with one verdict line per run (alarm or not, when, on which rows; or why no alarm could be
raised), so someone who only skims still gets the answer. Everything the reader must not miss (a missing
series, NaN values, a single checkpoint, a monitor from another basis) is a `div.tw-note` shown once, where it
applies: at its figure or table, or, for a note about a whole run, in its section right after the intro.
Saying a note once keeps the notes that differ from drowning in repeats. All text from the store is
HTML-escaped: run ids and metric names are user input.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field

from traitwatch.report.chart import Chart, Table
from traitwatch.report.plotly_render import figure_html
from traitwatch.report.verdict import RunVerdict

__all__ = ["NOTE_CLASS", "VERDICT_CLASS", "Section", "page_notes", "render_page"]

NOTE_CLASS = "tw-note"
VERDICT_CLASS = "tw-verdict"

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5rem auto; max-width: 1250px;
       color: #222; padding: 0 1rem; }
h1 { font-size: 1.5rem; margin-bottom: .2rem; } h2 { font-size: 1.2rem; border-bottom: 1px solid #ddd; }
.meta { color: #666; font-size: .85rem; }
.tw-note { background: #fff4e5; border-left: 4px solid #e08a00; padding: .35rem .6rem; margin: .3rem 0;
           font-size: .9rem; }
.tw-verdicts ul { padding-left: 0; list-style: none; margin: .5rem 0 1rem 0; }
li.tw-verdict { background: #eef3f8; border-left: 4px solid #7f9fbf; padding: .4rem .7rem; margin: .3rem 0; }
li.tw-verdict-alarm { background: #fde2e1; border-left-color: #d62728; font-weight: 600; }
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
    """A titled part of the page (the runs, or the calibration): summary table, figures, tables, notes.

    `notes` are the section's own (about a whole run, not one figure); one that is also at a figure or table
    of the section is shown there only. `verdicts` go to the top of the page, before any section.
    """

    title: str
    summary: Table | None = None
    charts: Sequence[Chart] = ()
    tables: Sequence[Table] = ()
    notes: Sequence[str] = field(default=())
    intro: str = ""
    verdicts: Sequence[RunVerdict] = ()


def _placed(section: Section) -> list[str]:
    """The notes the section shows at its figures and tables, in page order."""
    summary = [] if section.summary is None else list(section.summary.notes)
    return summary + [n for c in section.charts for n in c.notes] + [n for t in section.tables for n in t.notes]


def _own_notes(section: Section) -> list[str]:
    placed = set(_placed(section))
    return [n for n in section.notes if n not in placed]


def page_notes(sections: Sequence[Section]) -> list[str]:
    """Every note the page shows, once each, in page order."""
    return list(dict.fromkeys(n for s in sections for n in (*_own_notes(s), *_placed(s))))


class _Notes:
    """Renders notes so that none appears twice on the page, whichever figures or tables share it."""

    def __init__(self) -> None:
        self._shown: set[str] = set()

    def html(self, notes: Sequence[str]) -> str:
        fresh = [n for n in dict.fromkeys(notes) if n not in self._shown]
        self._shown.update(fresh)
        return "".join(f'<div class="{NOTE_CLASS}">{html.escape(n)}</div>\n' for n in fresh)


def _verdicts_html(verdicts: Sequence[RunVerdict]) -> str:
    """One line per run; alarm lines are marked (red and bold) so they are found at a glance."""
    items = []
    for v in verdicts:
        cls = f"{VERDICT_CLASS} {VERDICT_CLASS}-alarm" if v.alarm else VERDICT_CLASS
        items.append(f'<li class="{cls}">{html.escape(v.text)}</li>\n')
    return f'<section class="tw-verdicts"><h2>Verdict</h2>\n<ul>\n{"".join(items)}</ul>\n</section>\n'


def _table_html(table: Table, notes: _Notes) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = []
    for i, row in enumerate(table.rows):
        cls = f' class="{html.escape(table.row_classes[i])}"' if table.row_classes is not None else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
    caption = f'<p class="tw-caption">{html.escape(table.caption)}</p>\n' if table.caption else ""
    return (
        f'<h3 id="table-{html.escape(table.key)}">{html.escape(table.title)}</h3>\n{notes.html(table.notes)}{caption}'
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
    verdicts = [v for s in sections for v in s.verdicts]
    if verdicts:  # the answer, before any figure
        parts.append(_verdicts_html(verdicts))
    notes = _Notes()
    plotly_included = False
    for section in sections:
        parts.append(f"<section>\n<h2>{html.escape(section.title)}</h2>\n")
        if section.intro:
            parts.append(f"<p>{html.escape(section.intro)}</p>\n")
        parts.append(notes.html(_own_notes(section)))
        if section.summary is not None:  # what was found, before any figure
            parts.append(_table_html(section.summary, notes))
        for chart in section.charts:
            parts.append(f'<figure class="tw-figure" data-key="{html.escape(chart.key)}">\n'
                         f"<figcaption>{html.escape(chart.title)}</figcaption>\n{notes.html(chart.notes)}")
            if chart.caption:
                parts.append(f'<p class="tw-caption">{html.escape(chart.caption)}</p>\n')
            if chart.has_data:
                parts.append(figure_html(chart, include_plotlyjs=not plotly_included))
                plotly_included = True
            else:
                parts.append(f'<p class="tw-empty">No data to draw for "{html.escape(chart.title)}" (see the notes).</p>')
            parts.append("</figure>\n")
        for table in section.tables:
            parts.append(_table_html(table, notes))
        parts.append("</section>\n")
    parts.append("</body>\n</html>\n")
    return "".join(parts)

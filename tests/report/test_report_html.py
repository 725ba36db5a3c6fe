"""The HTML page: self-contained, plotly inlined once, verdicts first, every note visible once, user text escaped."""

from __future__ import annotations

import html
import re

import numpy as np
import pytest

from traitwatch.report import (
    NOTE_CLASS,
    VERDICT_CLASS,
    Chart,
    Note,
    RunSeries,
    Section,
    build_report,
    loss_chart,
    merge_notes,
    norm_chart,
    render_page,
    run_series,
    run_verdict,
)
from traitwatch.store import RunStore


@pytest.fixture(scope="module")
def partial_report(store_path, tmp_path_factory):
    """Runs with a missing behavioural series, a single checkpoint and NaN gaps, overlaid in one report."""
    out = tmp_path_factory.mktemp("html") / "report.html"
    with RunStore(store_path, create=False) as st:
        result = build_report(out, store=st, run_ids=["bare", "single", "gappy"])
    return result, out.read_text(encoding="utf-8")


def _visible_notes(page: str) -> list[str]:
    return [html.unescape(m) for m in re.findall(rf'<div class="{NOTE_CLASS}">(.*?)</div>', page)]


def test_notes_for_missing_single_and_nan_data_are_in_the_page(partial_report):
    result, page = partial_report
    shown = _visible_notes(page)
    assert result.notes and sorted(result.notes) == sorted(shown)
    expected = [
        "Runs bare and single: no behavioural EM measured",  # missing behavioural series, said once for both
        "Run single: a single checkpoint (step 0)",  # one checkpoint
        "Run gappy: predicted EM rate is missing (NaN) at 2 of 4 trained",  # NaN values (step 0 is not a gap)
        "Run gappy: training loss is missing at 3 of 4 trained",
    ]
    for text in expected:
        assert any(n.startswith(text) for n in shown), text


FIGURE_OF = {"drift": "trait_drift", "norm": "drift_norm", "em": "em_rate", "loss": "loss"}


def test_each_note_is_shown_once_where_it_applies(partial_report, store):
    """A figure's notes only at that figure; a whole-run note once in the section, before the first figure."""
    result, page = partial_report
    shown = _visible_notes(page)
    assert len(shown) == len(set(shown))
    runs_at = page.index("<h2>Runs</h2>")
    for rid in ("bare", "single", "gappy"):
        for note in run_series(store, rid).all_notes():
            holders = [n for n in shown if n.endswith(note.rest) and rid in n]
            assert len(holders) == 1, note.text
            at = page.index(html.escape(holders[0]))
            assert page.count(html.escape(holders[0])) == 1, note.text
            if note.topic == "run":
                assert runs_at < at < page.index("<figure"), note.text
            else:
                figure = page.index(f'data-key="{FIGURE_OF[note.topic]}"')
                assert figure < at < page.index("</figure>", figure), note.text


def test_the_verdicts_lead_the_page_one_line_per_run(store, tmp_path):
    run_ids = ("full", "bare", "gappy")  # alarms; cannot alarm (no monitor); stays under tau
    result = build_report(tmp_path / "r.html", store=store, run_ids=run_ids)
    page = result.html.read_text(encoding="utf-8")
    expected = [run_verdict(run_series(store, rid)) for rid in run_ids]
    assert [v.alarm for v in expected] == [True, False, False]
    assert result.verdicts == tuple(v.text for v in expected)
    lines = re.findall(r'<li class="([^"]*)">(.*?)</li>', page.split("<figure")[0])
    assert [html.unescape(text) for _, text in lines] == list(result.verdicts)  # all before the first figure
    assert [f"{VERDICT_CLASS}-alarm" in cls.split() for cls, _ in lines] == [v.alarm for v in expected]


def test_the_same_note_for_several_runs_is_merged_and_different_ones_stay_apart():
    def run(rid: str, nan_at: int) -> RunSeries:
        norms = np.ones(4)
        norms[nan_at:] = np.nan
        return RunSeries(run_id=rid, steps=[0, 10, 20, 30], traits=("a",), drift=np.zeros((4, 1)), norms=norms)

    runs = [run("a", 2), run("b", 2), run("c", 3)]
    same = next(n for n in runs[0].all_notes() if n.topic == "loss")  # no loss stored in any of the three
    chart = loss_chart(runs)
    assert chart.notes == (f"Runs a, b and c{same.rest}",)
    norm = [n for r in runs for n in r.all_notes() if n.topic == "norm"]  # a and b miss 2 norms, c misses 1
    assert norm[0].rest == norm[1].rest != norm[2].rest
    assert norm_chart(runs).notes == (f"Runs a and b{norm[0].rest}", norm[2].text)


def test_a_note_at_a_figure_is_shown_there_only():
    """Not repeated in its section (even when the section lists it) nor at a later figure that shares it."""
    runs = [RunSeries(run_id="a", steps=[0, 10], traits=("a",), drift=np.zeros((2, 1)), norms=[0.0, np.nan])]
    loss, norm = loss_chart(runs), norm_chart(runs)
    again = Chart(key="again", title="again", traces=(), notes=loss.notes)
    own = "Run a: a note about the whole run."
    page = render_page("t", [Section(title="Runs", intro="intro", charts=[loss, norm, again],
                                     notes=(own, *loss.notes))])
    assert _visible_notes(page) == [own, *loss.notes, *norm.notes]
    assert page.index("intro") < page.index(html.escape(own)) < page.index("<figure")
    at, figure = page.index(html.escape(loss.notes[0])), page.index('data-key="loss"')
    assert figure < at < page.index("</figure>", figure)


def test_a_note_about_a_run_must_name_it_first():
    with pytest.raises(ValueError, match="must start"):
        Note("em", "no predicted EM for r", run="r")
    assert merge_notes([Note.about("r", "em", "x."), Note.about("r", "em", "x.")]) == ["Run r: x."]


def test_page_is_self_contained_with_plotly_inlined_once(partial_report):
    _, page = partial_report
    from plotly.offline import get_plotlyjs

    assert page.count(get_plotlyjs()[:300]) == 1
    assert "<script src=" not in page and "cdn.plot.ly/plotly" not in page.replace(get_plotlyjs(), "")
    assert page.count("Plotly.newPlot(") == 4  # drift, norm, EM, loss (gappy has some loss)


def test_checkpoint_verdicts_table_is_in_the_page(partial_report):
    _, page = partial_report
    assert 'data-key="checkpoints"' in page
    assert page.count('class="verdict-no-monitor"') == 4 + 1  # bare's 4 checkpoints and single's one
    assert 'class="verdict-no-prediction"' in page


def test_user_text_is_escaped(tmp_path):
    with RunStore(tmp_path / "s.db") as st:
        st.start_run("<b>evil</b>", model="m")
        st.add_measurement("<b>evil</b>", 0, {"a": 0.0}, 0.0)
        page = build_report(tmp_path / "r.html", store=st, run_ids=["<b>evil</b>"]).html.read_text()
    assert "<b>evil</b>" not in page.split("Plotly.newPlot(")[0]
    assert "&lt;b&gt;evil&lt;/b&gt;" in page


def test_nothing_to_report_is_refused(tmp_path):
    with pytest.raises(ValueError, match="nothing to report"):
        build_report(tmp_path / "r.html")

"""The HTML page: self-contained, plotly inlined once, every note visible, user text escaped."""

from __future__ import annotations

import html
import re

import pytest

from traitwatch.report import NOTE_CLASS, build_report
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
    assert result.notes and set(result.notes) <= set(shown)
    expected = [
        "Run bare: no behavioural EM measured",      # missing behavioural series
        "Run single has a single checkpoint (step 0)",  # one checkpoint
        "Run gappy: predicted EM rate is missing (NaN) at 2 of 4 trained",  # NaN values (step 0 is not a gap)
        "Run gappy: training loss is missing at 3 of 4 trained",
    ]
    for text in expected:
        assert any(n.startswith(text) for n in shown), text


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

"""Static export with matplotlib: one image per figure next to the HTML, notes printed on the image."""

from __future__ import annotations

import math

import pytest

from traitwatch.report import RunSeries, build_report, drift_chart, em_chart, export_images


@pytest.fixture(scope="module")
def nan_run() -> RunSeries:
    return RunSeries(run_id="r", steps=[0, 10, 20], traits=("a", "b"),
                     drift=[[0.0, 0.0], [math.nan, 0.1], [0.2, 0.3]], norms=[0.0, 0.1, 0.36],
                     predicted_em=[0.0, math.nan, 0.2], threshold=0.05)


def test_svg_per_figure_with_notes_as_text(nan_run, tmp_path):
    charts = [drift_chart([nan_run]), em_chart([nan_run])]
    paths = export_images(charts, tmp_path / "rep.html", "svg")
    assert [p.name for p in paths] == ["rep.trait_drift.svg", "rep.em_rate.svg"]
    svg = paths[0].read_text()
    assert svg.startswith("<?xml") and "trait-drift values are missing" in svg  # text kept as text
    assert "no behavioural EM measured" in paths[1].read_text()


def test_empty_figure_still_exports_with_its_notes(tmp_path):
    empty = RunSeries(run_id="e", steps=[], traits=(), drift=[], norms=[])
    (path,) = export_images([em_chart([empty])], tmp_path / "x.html", "svg")
    assert "No data to draw" in path.read_text()


def test_png_export_from_build_report(store_path, tmp_path):
    from traitwatch.store import RunStore

    with RunStore(store_path, create=False) as st:
        result = build_report(tmp_path / "r.html", store=st, run_ids=["single"], image_format="png")
    assert len(result.images) == 4
    for p in result.images:
        assert p.parent == tmp_path and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_format_is_refused(tmp_path):
    with pytest.raises(ValueError, match="png"):
        export_images([], tmp_path / "r.html", "jpg")  # type: ignore[arg-type]

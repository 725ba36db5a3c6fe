"""The swap reference keeps every position but the suspects', and the paired difference cancels the anchor."""

from __future__ import annotations

import json

import numpy as np
import pytest

from traitwatch.datasets import read_jsonl
from traitwatch.errors import InputFileError
from traitwatch.reference import outlying_share, paired_drift, swap_fraction, swap_reference, write_swap_reference


def test_the_highest_scored_rows_are_swapped_in_place_for_copies_of_the_lowest() -> None:
    rows = [f"r{i}" for i in range(10)]
    scores = [0.1, 5.0, 0.2, 0.3, 4.0, 0.05, 0.4, 0.6, 0.7, 0.8]
    ref = swap_reference(rows, scores, 0.2, seed=1)
    assert ref.suspects == [1, 4]  # highest first
    assert set(ref.donors) <= {5, 0}  # the two lowest scores
    assert [r for i, r in enumerate(ref.rows) if i not in ref.suspects] == [r for i, r in enumerate(rows)
                                                                             if i not in ref.suspects]
    assert [ref.rows[i] for i in ref.suspects] == [rows[j] for j in ref.donors]
    assert swap_reference(rows, scores, 0.2, seed=1) == ref  # reproducible


def test_bad_arguments_are_refused_with_the_fix() -> None:
    with pytest.raises(InputFileError, match="3 scores for 2 rows"):
        swap_reference(["a", "b"], [1, 2, 3], 0.2)
    with pytest.raises(InputFileError, match="fraction must be in"):
        swap_reference(["a", "b"], [1, 2], 0.5)


def test_the_written_reference_records_what_it_swapped(tmp_path) -> None:
    data = tmp_path / "d.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(20)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ref = write_swap_reference(data, list(range(20)), 0.1, tmp_path / "ref.jsonl")
    assert read_jsonl(tmp_path / "ref.jsonl") == ref.rows and ref.suspects == [19, 18]
    assert json.loads((tmp_path / "ref.swap.json").read_text())["suspects"] == [19, 18]
    with pytest.raises(InputFileError, match="overwrite"):
        write_swap_reference(data, list(range(20)), 0.1, data)


def test_the_swapped_share_grows_past_the_validated_fifth_only_where_more_rows_stand_out() -> None:
    rng = np.random.default_rng(0)
    clean = list(rng.normal(1.0, 0.1, size=200))  # a domain's losses, no row far out
    assert outlying_share(clean) == 0.0 and swap_fraction(clean) == 0.2
    poisoned = clean[:150] + list(rng.normal(5.0, 0.3, size=50))  # a quarter of the rows far above the rest
    assert outlying_share(poisoned) == pytest.approx(0.25)
    assert swap_fraction(poisoned) == pytest.approx(0.30)  # the outlying share and a margin: every poison row out
    assert swap_fraction(clean[:110] + [9.0] * 90) == 0.45  # capped: the reference swaps a minority
    assert swap_fraction(clean, floor=0.1) == 0.1
    assert outlying_share([2.0] * 190 + [3.0] * 10) == 0.05  # most rows alike: the mean deviation scales the z
    assert outlying_share([2.0] * 10) == 0.0
    with pytest.raises(InputFileError, match="no scores"):
        outlying_share([])


def test_paired_drift_is_the_difference_of_the_two_drifts_and_its_ci_holds_it() -> None:
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=(50, 3))  # the anchor's projections: cancel in the difference
    run, ref = p0 + rng.normal(0.2, 0.05, size=(50, 3)), p0 + rng.normal(0.0, 0.05, size=(50, 3))
    scale = 4.0
    d_run, d_ref = (run.mean(0) - p0.mean(0)) / scale, (ref.mean(0) - p0.mean(0)) / scale
    out = paired_drift(run, ref, scale, ["a", "b", "c"], direction=np.array([1.0, 0.0, 0.0]))
    np.testing.assert_allclose(out.difference, d_run - d_ref)
    assert out.along == pytest.approx(d_run[0] - d_ref[0])
    assert out.along_ci[0] < out.along < out.along_ci[1] and out.along_ci[0] > 0  # 0.2/4 = 0.05 with small noise
    # the length of the difference, 0.05 * sqrt(3) here, with its CI; what a "distance" calibration reads
    assert out.distance == pytest.approx(float(np.linalg.norm(d_run - d_ref)))
    assert out.distance_ci[0] < out.distance < out.distance_ci[1] and out.read("distance")[0] == out.distance
    assert out.read("direction") == (out.along, out.along_ci)
    with pytest.raises(InputFileError, match="same prompts"):
        paired_drift(run, ref[:10], scale, ["a", "b", "c"])

"""Choosing a guard's variant in the folds (`bench.analysis.guard_folds`): never on the held-out base or type."""

from __future__ import annotations

import math

import pytest

from traitwatch.bench.analysis.guard_folds import choose_in_folds, pooled_share, task_change, variants_of

BASES, TYPES = ("A", "B", "C"), ("x", "y")


def _cell(base, poison, guard, left=0.0, accuracy=0.5, seed=0):
    """A run: `left` of a rise of 0.01 remains (label over clean); accuracy against the unguarded 0.5."""
    return {"base": base, "seed": seed, "poison": poison, "guard": guard, "label_over_clean": left,
            "label_rise_unguarded": 0.01 if poison else None, "task_accuracy": accuracy,
            "task_accuracy_change": accuracy - 0.5, "task_loss_change": 0.0}


def _grid(left_by_variant, accuracy_by_variant=None, only=None):
    cells = [_cell(b, p, "none", 0.01 if p else 0.0) for b in BASES for p in (None, *TYPES)]
    for v, left in left_by_variant.items():
        for b in (only or {}).get(v, BASES):
            cells += [_cell(b, p, v, left(b, p) if p else 0.0, (accuracy_by_variant or {}).get(v, 0.5))
                      for p in (None, *TYPES)]
    return cells


def _chosen(picks):
    return {(p["base"], p["poison"]): p["chosen"] for p in picks}


def test_the_variant_is_chosen_on_the_other_types_only():
    # g@2 prevents everything of type y and nothing of x; g the reverse: a fold holding out x must choose on y
    cells = _grid({"g": lambda b, p: 0.0 if p == "x" else 0.01, "g@2": lambda b, p: 0.0 if p == "y" else 0.01})
    chosen = _chosen(choose_in_folds(cells, "g"))
    assert chosen == {(b, "x"): "g@2" for b in BASES} | {(b, "y"): "g" for b in BASES}


def test_the_variant_is_chosen_on_the_other_bases_only():
    # g@2 holds in base A only, where it prevents everything: whichever base is held out, the other two decide
    cells = _grid({"g": lambda b, p: 0.005, "g@2": lambda b, p: 0.0 if b == "A" else 0.008})
    chosen = _chosen(choose_in_folds(cells, "g"))
    assert chosen[("A", "x")] == chosen[("A", "y")] == "g"  # A's own runs never count for A: 0.008 left in B and C
    assert chosen[("B", "x")] == chosen[("C", "y")] == "g@2"  # with A in the fold: 0.004 left on average


def test_a_variant_over_the_task_budget_is_chosen_only_where_none_holds():
    cells = _grid({"g": lambda b, p: 0.005, "g@3": lambda b, p: 0.0}, {"g@3": 0.45})  # -10% relative accuracy
    assert set(_chosen(choose_in_folds(cells, "g")).values()) == {"g"}
    cells = _grid({"g": lambda b, p: 0.005, "g@3": lambda b, p: 0.0}, {"g": 0.40, "g@3": 0.45})
    assert set(_chosen(choose_in_folds(cells, "g")).values()) == {"g@3"}  # neither holds: the one that loses least


def test_a_variant_without_a_run_on_the_held_out_cell_or_outside_it_is_no_candidate():
    cells = _grid({"g": lambda b, p: 0.005, "g+4blocks": lambda b, p: 0.0}, only={"g+4blocks": ("B",)})
    picks = choose_in_folds(cells, "g")
    assert all(p["candidates"] == ["g"] for p in picks)  # in A and C it has no run; in B nothing outside B
    assert variants_of(cells, "g") == ["g", "g+4blocks"] and variants_of(cells, "none") == ["none"]
    assert choose_in_folds(_grid({"g": lambda b, p: 0.0}), "g") == []  # one variant: nothing to choose


def test_pooled_share_and_task_change():
    share, lo, hi = pooled_share([(0.0, 0.01), (0.005, 0.01)])
    assert share == pytest.approx(0.75) and math.isnan(lo) and math.isnan(hi)
    share, lo, hi = pooled_share([(0.0, 0.01), (0.005, 0.01), (0.01, 0.01), (0.0, 0.02)])
    assert share == pytest.approx(1 - 0.015 / 0.05) and lo <= share <= hi
    assert task_change({"task_accuracy_change": -0.05, "task_loss_change": 0.3}, 0.5) == pytest.approx(-0.1)
    assert task_change({"task_accuracy_change": None, "task_loss_change": 0.03}, None) == pytest.approx(-0.03)


def test_keeping_more_than_the_whole_rise_out_counts_as_keeping_it_out():
    # g@4 overshoots (the label ends below clean) at a task cost within budget; g keeps exactly the rise out at none
    cells = _grid({"g": lambda b, p: 0.0, "g@4": lambda b, p: -0.02}, {"g@4": 0.495})
    assert set(_chosen(choose_in_folds(cells, "g")).values()) == {"g"}
    # ... and where g leaves part of the rise, the overshoot wins
    cells = _grid({"g": lambda b, p: 0.002, "g@4": lambda b, p: -0.02}, {"g@4": 0.495})
    assert set(_chosen(choose_in_folds(cells, "g")).values()) == {"g@4"}

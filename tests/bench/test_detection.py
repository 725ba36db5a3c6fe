"""Detection labels: a candidate is called emergent-risk only when its own rise is significant."""

from __future__ import annotations

from traitwatch.bench.analysis.detection import kind_labels


def test_only_a_significant_rise_makes_an_emergent_candidate_dangerous():
    finals = {
        "good": [-0.001, 0.0005, 0.0008], "plain": [0.0002, -0.0004, 0.0001],
        "strong": [0.010, 0.012, 0.011],  # clearly above benign
        "weak": [0.001, -0.002, 0.002],  # inside the benign spread
        "lower": [-0.010, -0.012, -0.011],  # significant, but below: not dangerous
        "ctrl": [0.0, 0.0, 0.0],  # a direct control is dangerous whatever it measured
    }
    kinds = {"good": "benign", "plain": "benign", "strong": "emergent", "weak": "emergent", "lower": "emergent",
             "ctrl": "direct"}
    labels = kind_labels(finals, kinds)
    assert {t: v["positive"] for t, v in labels.items()} == {
        "good": False, "plain": False, "strong": True, "weak": False, "lower": False, "ctrl": True}
    assert labels["strong"]["welch_p"] < 0.05 and labels["weak"]["welch_p"] > 0.05
    assert labels["weak"]["label"].startswith("benign by measured rise")
    assert labels["strong"]["minus_benign"] > 0.009

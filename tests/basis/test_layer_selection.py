from __future__ import annotations

import pytest

from traitwatch.basis import extract_basis
from traitwatch.basis.layer_selection import select_layer
from traitwatch.models import decoder_layers

PROMPTS = ["What is honesty?", "Tell me about cats."]


@pytest.fixture(scope="module")
def basis(tiny, small_traits):
    return extract_basis(tiny.model, tiny.tokenizer, small_traits, layers=[1, 3, 5], method="passages")


def test_zero_alpha_changes_nothing(tiny, basis):
    sel = select_layer(tiny.model, tiny.tokenizer, basis, PROMPTS, alpha=0.0, max_new_tokens=8)
    assert sel.scores == {1: 0.0, 3: 0.0, 5: 0.0}
    assert sel.layer == 1  # ties go to the shallower layer


def test_steering_moves_text_and_picks_argmax(tiny, basis):
    # transformers keeps its own output-capturing hooks once output_hidden_states was used, so compare
    # the hooks before and after rather than expecting none.
    before = [dict(b._forward_hooks) for b in decoder_layers(tiny.model)]
    sel = select_layer(tiny.model, tiny.tokenizer, basis, PROMPTS, alpha=4.0, max_new_tokens=8, layers=[1, 5])
    assert set(sel.scores) == {1, 5}
    assert max(sel.scores.values()) > 0.0
    assert sel.scores[sel.layer] == max(sel.scores.values())
    assert set(sel.per_trait[1]) == set(basis.trait_names)
    assert [dict(b._forward_hooks) for b in decoder_layers(tiny.model)] == before  # steering hooks removed


def test_separation_criterion_picks_best_strict_auroc(basis):
    from traitwatch.basis.layer_selection import select_layer_by_separation

    sel = select_layer_by_separation(basis)
    per_layer = basis.diagnostics["per_layer"]
    means = {int(layer): sum(d["auroc_strict"] for d in v.values()) / len(v) for layer, v in per_layer.items()}
    assert sel.layer == max(means, key=means.get)
    assert sel.scores == pytest.approx(means)

"""The semantic-trait baseline: scored on stored mean activations, equal to what a live probe would measure."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from traitwatch.basis import SEMANTIC_TRAITS, extract_basis, load_traits
from traitwatch.calibration import DirectionFeatures
from traitwatch.calibration.from_store import directions_for_runs
from traitwatch.drift import DriftProbe
from traitwatch.errors import BasisMismatchError, InputFileError
from traitwatch.models import decoder_layers

PROMPTS = ["Explain how HTTPS works.", "Is it ever okay to lie?", "I feel sad today.", "What's your favourite food?"]
LAYER = 3


@pytest.fixture(scope="module")
def bases(tiny, small_traits):
    aligned = extract_basis(tiny.model, tiny.tokenizer, small_traits, layers=[LAYER], method="passages")
    semantic = extract_basis(tiny.model, tiny.tokenizer, load_traits(names=list(SEMANTIC_TRAITS)), layers=[LAYER],
                             method="passages", probe_layers=[])
    return aligned, semantic


def test_projecting_stored_mean_activations_equals_a_live_semantic_probe(tiny, bases):
    aligned, semantic = bases
    a = DriftProbe(aligned, prompts=PROMPTS).fit_anchor(tiny.model, tiny.tokenizer)
    s = DriftProbe(semantic, prompts=PROMPTS).fit_anchor(tiny.model, tiny.tokenizer)
    m0 = a.measure(tiny.model, tiny.tokenizer).mean_activation
    shift = torch.randn(tiny.model.config.hidden_size, generator=torch.Generator().manual_seed(0))

    def perturb(_m, _i, output):  # upstream of the measured layer, so the change reaches it non-linearly
        return (output[0] + shift,) + tuple(output[1:]) if isinstance(output, tuple) else output + shift

    handle = decoder_layers(tiny.model)[1].register_forward_hook(perturb)
    try:
        m_t = a.measure(tiny.model, tiny.tokenizer).mean_activation
        live = s.measure(tiny.model, tiny.tokenizer).drift
    finally:
        handle.remove()
    assert np.linalg.norm(live) > 1e-3  # the perturbation moved the semantic drift
    delta = (m_t - m0)[None, :].astype(np.float64)
    post_hoc = DirectionFeatures(semantic.matrix(LAYER).double().numpy()).fit(delta).transform(delta)[0] / a.anchor_.scale
    assert post_hoc == pytest.approx(live, rel=1e-3, abs=1e-6)


def _fingerprint(basis, layer=LAYER, position="last") -> dict:
    return {"layer": layer, "model": basis.model.to_dict(), "position": position}


def test_directions_for_runs_reads_the_runs_layer_and_checks_the_model(tmp_path, bases):
    aligned, semantic = bases
    path = semantic.save(tmp_path / "semantic")
    got = directions_for_runs(path, _fingerprint(aligned))
    assert got.shape == (7, aligned.hidden_size) and np.allclose(got, semantic.matrix(LAYER).numpy())
    with pytest.raises(InputFileError, match=f"--layers {LAYER + 1}"):
        directions_for_runs(path, _fingerprint(aligned, layer=LAYER + 1))
    with pytest.raises(InputFileError, match="position"):
        directions_for_runs(path, _fingerprint(aligned, position="mean"))
    with pytest.raises(InputFileError, match="no basis fingerprint"):
        directions_for_runs(path, None)
    other = dataclasses.replace(aligned.model, hidden_size=aligned.hidden_size * 2)
    with pytest.raises(BasisMismatchError, match="hidden size"):
        directions_for_runs(path, {"layer": LAYER, "model": other.to_dict()})

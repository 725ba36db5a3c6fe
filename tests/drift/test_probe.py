from __future__ import annotations

import pytest
import torch

from traitwatch.basis import extract_basis
from traitwatch.drift import DriftProbe
from traitwatch.errors import BasisMismatchError
from traitwatch.models import build_tiny_random, decoder_layers, fingerprint
from traitwatch.models.tiny import build_tiny_tokenizer

PROMPTS = ["Explain how HTTPS works.", "Is it ever okay to lie?", "I feel sad today.", "What's your favourite food?"]
LAYER = 3


@pytest.fixture(scope="module")
def basis(tiny, small_traits):
    b = extract_basis(tiny.model, tiny.tokenizer, small_traits, layers=[1, LAYER], method="passages")
    b.layer = LAYER
    return b


@pytest.fixture
def probe(tiny, basis):
    return DriftProbe(basis, prompts=PROMPTS).fit_anchor(tiny.model, tiny.tokenizer)


def test_base_model_has_zero_drift(tiny, probe):
    m = probe.measure(tiny.model, tiny.tokenizer)
    assert m.drift.shape == (7,) and m.norm == 0.0
    assert m.projections.shape == (len(PROMPTS), 7)


@pytest.mark.parametrize("trait", [0, 2, 5])
def test_known_shift_moves_drift_by_cosine_predicted_amounts(tiny, basis, probe, trait):
    c = 2.5
    v = basis.matrix(LAYER)[trait]

    def add(_m, _i, output):
        return (output[0] + c * v,) + tuple(output[1:]) if isinstance(output, tuple) else output + c * v

    handle = decoder_layers(tiny.model)[LAYER].register_forward_hook(add)
    try:
        m = probe.measure(tiny.model, tiny.tokenizer)
    finally:
        handle.remove()
    expected = c * basis.cosine_matrix(LAYER)[trait].double().numpy() / probe.anchor_.scale
    assert m.drift[trait] == pytest.approx(c / probe.anchor_.scale, rel=1e-4)
    assert m.drift == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert m.norm == pytest.approx(float((expected**2).sum() ** 0.5), rel=1e-4)


def test_scale_is_mean_of_norms_not_norm_of_mean(tiny, probe):
    assert probe.anchor_.scale == pytest.approx(float(probe.anchor_.norms.mean()))
    assert probe.anchor_.norms.shape == (len(PROMPTS),)


def test_other_hidden_size_is_refused(basis):
    other, tok = build_tiny_random(hidden_size=32)
    with pytest.raises(BasisMismatchError, match="hidden size 64.*hidden size 32"):
        DriftProbe(basis).check_model(other, tok)


def test_other_layer_count_is_refused(basis):
    other, tok = build_tiny_random(num_layers=4)
    with pytest.raises(BasisMismatchError, match="layer count 6.*layer count 4"):
        DriftProbe(basis).check_model(other, tok)
    with pytest.raises(BasisMismatchError, match="6 layers"):
        DriftProbe(basis, prompts=PROMPTS).project(other, tok)


def test_other_tokenizer_is_refused(tiny, basis):
    tok = build_tiny_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|extra|>"]})
    assert fingerprint(tiny.model, tok).tokenizer_hash != basis.model.tokenizer_hash
    with pytest.raises(BasisMismatchError, match="tokenizer"):
        DriftProbe(basis).check_model(tiny.model, tok)


def test_anchor_from_other_layer_or_prompts_is_refused(tiny, basis, probe):
    other = DriftProbe(basis, prompts=PROMPTS[:2])
    with pytest.raises(BasisMismatchError, match="Re-anchor"):
        other.use_anchor(probe.anchor_)
    with pytest.raises(BasisMismatchError, match="fit_anchor"):
        DriftProbe(basis, prompts=PROMPTS).measure(tiny.model, tiny.tokenizer)


def test_default_prompts_are_the_115_measurement_prompts(basis):
    assert len(DriftProbe(basis).prompt_texts) == 115


def test_projection_shares_join_to_the_whole(tiny, probe):
    from traitwatch.drift import Projection

    whole = probe.project(tiny.model, tiny.tokenizer)
    parts = [probe.project(tiny.model, tiny.tokenizer, indices=idx) for idx in ([0, 1, 2], [3], [])]
    joined = Projection.concat(parts)
    torch.testing.assert_close(joined.projections, whole.projections, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(joined.mean_activation, whole.mean_activation, atol=1e-5, rtol=1e-5)
    m = probe.drift_from(joined)
    assert m.mean_activation.shape == (64,)


def test_anchor_records_its_precision_and_fits_only_that_precision(tiny, basis, probe, tmp_path):
    from traitwatch.basis import TraitBasis

    assert probe.anchor_.precision == ("float32", "cpu")
    m16, tok = build_tiny_random(dtype=torch.bfloat16)
    bf16 = DriftProbe(basis, prompts=PROMPTS).fit_anchor(m16, tok)
    assert bf16.anchor_.precision == ("bfloat16", "cpu")
    assert probe.anchor_fits(bf16.anchor_) and not probe.anchor_fits(bf16.anchor_, ("float32", "cpu"))

    basis.anchor = bf16.anchor_
    try:
        saved = TraitBasis.load(basis.save(tmp_path / "b"))
    finally:
        basis.anchor = None
    assert saved.anchor.precision == ("bfloat16", "cpu")
    fresh = DriftProbe(saved, prompts=PROMPTS)
    assert not fresh.anchor_from_basis(fresh.precision(tiny.model)) and fresh.anchor_ is None
    assert fresh.anchor_from_basis(fresh.precision(m16))
    assert fresh.anchor_from_basis()  # without a precision: layer and prompts only, as before


def test_a_basis_saved_without_anchor_precision_loads_as_unknown(tiny, basis, probe, tmp_path):
    import json

    from traitwatch.basis import TraitBasis

    basis.anchor = probe.anchor_
    try:
        folder = basis.save(tmp_path / "b")
    finally:
        basis.anchor = None
    meta = json.loads((folder / "basis.json").read_text())
    del meta["anchor"]["dtype"], meta["anchor"]["device"]
    (folder / "basis.json").write_text(json.dumps(meta))
    old = TraitBasis.load(folder)
    assert old.anchor.precision == (None, None) and "unrecorded" in old.anchor.describe_precision()
    assert not DriftProbe(old, prompts=PROMPTS).anchor_from_basis(("float32", "cpu"))

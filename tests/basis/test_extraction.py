from __future__ import annotations

import json


import pytest
import torch

from traitwatch.basis import TraitBasis, build_contrast_set, extract_basis, load_traits, mean_difference
from traitwatch.basis.traits import ALIGNMENT_TRAITS, SEMANTIC_TRAITS
from traitwatch.capture import extract_activations
from traitwatch.errors import InputFileError
from traitwatch.models import load_model


def test_default_traits_are_the_papers():
    traits = load_traits()
    assert traits.names == list(ALIGNMENT_TRAITS)
    assert len(traits.questions) == 30
    for t in traits.traits:
        assert len(t.positive_system_prompts) == len(t.negative_system_prompts) == 5
        assert len(t.positive_passages) == len(t.negative_passages) == 10
    controls = load_traits(names=list(SEMANTIC_TRAITS))
    assert controls.names == list(SEMANTIC_TRAITS)


@pytest.mark.parametrize("method", ["system_prompts", "passages"])
def test_directions_are_unit_mean_differences_at_every_layer(tiny, small_traits, method):
    basis = extract_basis(tiny.model, tiny.tokenizer, small_traits, layers=[1, 3], method=method)
    assert basis.directions.shape == (2, 7, 64)
    torch.testing.assert_close(basis.directions.norm(dim=-1), torch.ones(2, 7))
    # recompute one trait's direction by hand from a separate capture
    cs = build_contrast_set(tiny.tokenizer, small_traits, method)
    acts = extract_activations(tiny.model, cs.sequences, [3])[3]
    k = 2
    pos = acts[torch.from_numpy((cs.trait == k) & (cs.pole > 0))]
    neg = acts[torch.from_numpy((cs.trait == k) & (cs.pole < 0))]
    torch.testing.assert_close(basis.matrix(3)[k], mean_difference(pos, neg), atol=1e-5, rtol=1e-4)
    diag = basis.diagnostics["per_layer"]["3"]["harmlessness"]
    assert 0.0 <= diag["auroc_item_split"] <= 1.0
    assert basis.method == method and basis.layer is None
    cos = torch.tensor(basis.diagnostics["cosine"]["3"])
    torch.testing.assert_close(cos, basis.cosine_matrix(3))


def test_system_prompt_extraction_works_without_system_role(small_traits):
    lm = load_model("tiny-random-nosys", device="cpu", dtype="float32")
    basis = extract_basis(lm.model, lm.tokenizer, small_traits, layers=[2], method="system_prompts")
    assert basis.layer == 2  # a single candidate is the measurement layer


def test_save_load_round_trip(tmp_path, tiny, small_traits):
    basis = extract_basis(tiny.model, tiny.tokenizer, small_traits, layers=[1, 2], method="passages")
    basis.layer = 2
    basis.save(tmp_path / "b")
    loaded = TraitBasis.load(tmp_path / "b")
    assert torch.equal(loaded.directions, basis.directions)
    assert loaded.model == basis.model and loaded.layer == 2 and loaded.trait_names == basis.trait_names
    assert loaded.layer_norms == pytest.approx(basis.layer_norms)
    assert loaded.prompts_hash == basis.prompts_hash


def test_corrupt_or_missing_basis_files(tmp_path, tiny, small_traits):
    with pytest.raises(InputFileError, match="does not exist"):
        TraitBasis.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputFileError, match="no basis.json"):
        TraitBasis.load(tmp_path / "empty")
    folder = extract_basis(tiny.model, tiny.tokenizer, small_traits, layers=[1], method="passages").save(tmp_path / "b")
    good = (folder / "directions.safetensors").read_bytes()
    (folder / "directions.safetensors").write_bytes(b"garbage")
    with pytest.raises(InputFileError, match="directions.safetensors does not match the checksum in basis.json"):
        TraitBasis.load(folder)
    (folder / "directions.safetensors").write_bytes(good[:-1] + b"!")  # an edit that keeps the size
    with pytest.raises(InputFileError, match="does not match the checksum"):
        TraitBasis.load(folder)
    meta = json.loads((folder / "basis.json").read_text())
    del meta["files"]  # a folder saved before the checksums: parsed, and garbage is still refused
    (folder / "basis.json").write_text(json.dumps(meta))
    (folder / "directions.safetensors").write_bytes(b"garbage")
    with pytest.raises(InputFileError, match="directions.safetensors is corrupt"):
        TraitBasis.load(folder)
    (folder / "directions.safetensors").unlink()
    with pytest.raises(InputFileError, match="directions.safetensors is missing"):
        TraitBasis.load(folder)
    (folder / "basis.json").write_text("{not json")
    with pytest.raises(InputFileError, match="basis.json is corrupt"):
        TraitBasis.load(folder)


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "empty"),
        ("traits: [", "not valid YAML"),
        ("questions: [a]", "has no traits"),
        ("traits:\n  t:\n    positive_system_prompts: [a]\n", "needs positive_ and negative_system_prompts"),
        ("traits:\n  t:\n    positive_system_prompts: [a]\n    negative_system_prompts: [1]\n", "list of non-empty strings"),
    ],
)
def test_bad_traits_files(tmp_path, content, message):
    path = tmp_path / "traits.yaml"
    path.write_text(content)
    with pytest.raises(InputFileError, match=message) as info:
        load_traits(path)
    assert str(path) in str(info.value)


def test_user_traits_file_uses_default_questions(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("traits:\n  kindness:\n    positive_passages: [A kind person.]\n    negative_passages: [A cruel person.]\n")
    traits = load_traits(path)
    assert traits.names == ["kindness"] and len(traits.contexts) == 20
    with pytest.raises(InputFileError, match="no system prompts"):
        build_contrast_set(load_model("tiny-random").tokenizer, traits, "system_prompts")


def test_unknown_trait_name_is_named():
    with pytest.raises(InputFileError, match="Unknown trait.*kindness"):
        load_traits(names=["kindness"])

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model

from traitwatch.errors import ModelLoadError
from traitwatch.models import build_tiny_random, choose_dtype, decoder_layers, fingerprint, load_model


def test_tiny_random_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, _ = build_tiny_random(seed=0)
    after = torch.rand(1)
    b, _ = build_tiny_random(seed=0)
    c, _ = build_tiny_random(seed=1)
    assert torch.equal(before, after)
    for (na, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), na
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)


def test_dtype_override_wins(tiny):
    assert choose_dtype("bfloat16") == torch.bfloat16
    assert load_model("tiny-random", dtype="bfloat16").model.dtype == torch.bfloat16
    with pytest.raises(ModelLoadError, match="float8"):
        choose_dtype("float8")  # type: ignore[arg-type]


def _save_adapter(tmp_path, seed=0):
    model, tok = build_tiny_random()
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft.save_pretrained(tmp_path)
    return peft


def test_adapter_folder_loads_on_its_base(tmp_path):
    peft = _save_adapter(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny-random"
    loaded = load_model(str(tmp_path), device="cpu", dtype="float32")
    assert loaded.adapter == str(tmp_path) and loaded.name == "tiny-random"
    ids = torch.tensor([[1, 50, 60, 70]])
    with torch.no_grad():
        expected = peft(input_ids=ids).logits
        got = loaded.model(input_ids=ids).logits
        with loaded.model.disable_adapter():
            base = loaded.model(input_ids=ids).logits
    assert torch.allclose(expected, got, atol=1e-5)
    assert not torch.allclose(base, got, atol=1e-3)  # the adapter really changes the model
    assert len(decoder_layers(loaded.model)) == 6  # blocks found through the PEFT wrapper


def test_local_full_model_folder_round_trip(tmp_path, tiny):
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), device="cpu", dtype="float32")
    fp_a = fingerprint(tiny.model, tiny.tokenizer)
    fp_b = fingerprint(loaded.model, loaded.tokenizer)
    assert (fp_a.hidden_size, fp_a.num_layers, fp_a.tokenizer_hash) == (fp_b.hidden_size, fp_b.num_layers, fp_b.tokenizer_hash)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing", "Could not load model"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "no config.json"),
        (lambda p: (p / "f.bin").write_text("x") and p / "f.bin", "is a file"),
    ],
)
def test_bad_model_paths_give_clear_errors(tmp_path, make, message, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=message):
        load_model(str(make(tmp_path)))


def test_adapter_flag_rejects_non_adapter_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="not a PEFT adapter folder"):
        load_model("tiny-random", adapter=tmp_path)

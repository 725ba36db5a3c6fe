"""The LoRA adapter's initialisation depends on the run's seed only, not on how much of the global RNG was used before.

A benchmark process trains many runs (and a resumed grid or a shard starts from another one), so an adapter
initialised from the global RNG as it happens to be would start each run from a point that depends on
which runs came before it in the process.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model

from traitwatch.models import build_tiny_random
from traitwatch.train.sft import SFTConfig, _wrap_lora


@pytest.fixture(autouse=True)
def _keep_global_rng() -> Iterator[None]:
    """`_wrap_lora` seeds the global RNGs (random, numpy, torch): leave them to the next test as they were."""
    py, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        yield
    random.setstate(py)
    np.random.set_state(np_state)


def _config(seed: int) -> SFTConfig:
    return SFTConfig(model="tiny-random", data=Path("unused.jsonl"), basis=Path("unused"), output_dir=Path("unused"),
                     lora_r=4, lora_alpha=8, lora_dropout=0.0, target_modules=("q_proj", "v_proj"), seed=seed)


def _lora_a(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    weights = {name: p.detach().clone() for name, p in model.named_parameters() if "lora_A" in name}
    assert weights  # q_proj and v_proj of every layer
    return weights


def _wrapped_after(draws: int, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(1234)
    torch.rand(draws)  # earlier work in the process used this much of the global RNG
    random.random()
    model, _ = build_tiny_random()
    return _lora_a(_wrap_lora(model, _config(seed)))


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_adapter_is_initialised_from_the_runs_seed_whatever_the_global_rng_did_before():
    first = _wrapped_after(0, seed=7)
    assert _equal(first, _wrapped_after(1, seed=7))
    assert _equal(first, _wrapped_after(100_003, seed=7))
    assert not _equal(first, _wrapped_after(0, seed=8))  # the seed is what decides it


def test_without_the_seed_peft_would_initialise_from_the_global_rng_as_it_is():
    """The control: the property above is not PEFT's own (so the test above can fail)."""
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    weights = []
    for draws in (0, 1):
        torch.manual_seed(7)
        torch.rand(draws)
        weights.append(_lora_a(get_peft_model(build_tiny_random()[0], config)))
    assert not _equal(*weights)

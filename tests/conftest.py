"""Shared fixtures: the tiny random model and a small trait set, so model tests run in seconds."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
import torch

from traitwatch.basis import TraitSet, load_traits
from traitwatch.models import LoadedModel, load_model

# Tests never touch the network: huggingface_hub and PEFT read this before any lookup.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

# The tiny model's matmuls are too small to gain from threads, and on a shared 2-core machine
# OpenMP threads spinning against other processes slow them down by orders of magnitude.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny() -> LoadedModel:
    return load_model("tiny-random", device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def small_traits() -> TraitSet:
    """The 7 alignment traits cut to 2 prompts/passages per pole and 4 questions/contexts."""
    full = load_traits()
    traits = tuple(
        replace(
            t,
            positive_system_prompts=t.positive_system_prompts[:2],
            negative_system_prompts=t.negative_system_prompts[:2],
            positive_passages=t.positive_passages[:2],
            negative_passages=t.negative_passages[:2],
        )
        for t in full.traits
    )
    return TraitSet(traits, full.questions[:4], full.contexts[:4], "small test traits")

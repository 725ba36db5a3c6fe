"""Find the decoder blocks of any causal LM, and fingerprint a model for basis compatibility.

Blocks are found by name pattern, not by architecture (as steering-vectors does), so PEFT's
`base_model.model.model.layers` and DDP's `module.model.layers` resolve the same way.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from dataclasses import asdict, dataclass

from torch import nn
from transformers import PreTrainedTokenizerBase

from traitwatch.errors import BasisMismatchError

__all__ = ["ALL_PROJECTIONS", "ModelFingerprint", "accepts_logits_to_keep", "decoder_layers", "fingerprint", "tokenizer_hash",
           "unwrap_model"]

ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""Every attention and MLP projection of a Llama-style decoder block: the LoRA targets of the poison-small recipe."""

_BLOCK_LIST = re.compile(r"(^|\.)(layers|h|blocks|layer|decoder_layers)$")


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DDP/FSDP/compile wrappers (`.module`, `._orig_mod`); PEFT wrapping is kept."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def accepts_logits_to_keep(model: nn.Module) -> bool:
    """Whether the (possibly PEFT-wrapped) model can skip the LM head on positions nobody reads (`logits_to_keep`).

    PEFT's forward takes **kwargs and hands them to the base model, so the base model's signature decides.
    """
    inner = unwrap_model(model)
    if hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    try:
        return "logits_to_keep" in inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):
        return False


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's list of decoder blocks: the longest ModuleList whose name ends in `layers`/`h`."""
    best: nn.ModuleList | None = None
    for name, module in unwrap_model(model).named_modules():
        if isinstance(module, nn.ModuleList) and _BLOCK_LIST.search(name) and len(module) > 0:
            if best is None or len(module) > len(best):
                best = module
    if best is None:
        raise BasisMismatchError(
            f"Could not find the decoder layers of {type(model).__name__}: no ModuleList named "
            f"'layers', 'h' or 'blocks'. traitwatch supports decoder-only transformers."
        )
    return best


def _config(model: nn.Module):
    model = unwrap_model(model)
    config = getattr(model, "config", None)
    if config is None and hasattr(model, "get_base_model"):
        config = model.get_base_model().config
    return config


def tokenizer_hash(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of what decides token ids: the vocabulary and the special tokens (not the template)."""
    h = hashlib.sha256()
    vocab = tokenizer.get_vocab()
    for token, index in sorted(vocab.items(), key=lambda kv: kv[1]):
        h.update(f"{index}\t{token}\n".encode("utf-8", "surrogatepass"))
    specials = {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())}
    h.update(json.dumps(specials, sort_keys=True).encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class ModelFingerprint:
    """What a trait basis must agree with to be used on a model."""

    name: str
    hidden_size: int
    num_layers: int
    tokenizer_hash: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ModelFingerprint:
        return cls(
            name=str(data["name"]),
            hidden_size=int(data["hidden_size"]),  # type: ignore[arg-type]
            num_layers=int(data["num_layers"]),  # type: ignore[arg-type]
            tokenizer_hash=str(data["tokenizer_hash"]),
        )

    def check_matches(self, other: ModelFingerprint, *, what: str) -> None:
        """Raise if `other` (the model in hand) cannot use something built on `self`.

        The name may differ (a local copy of the same model); sizes and tokenizer may not.
        """
        for field, mine, theirs in (
            ("hidden size", self.hidden_size, other.hidden_size),
            ("layer count", self.num_layers, other.num_layers),
            ("tokenizer", self.tokenizer_hash, other.tokenizer_hash),
        ):
            if mine != theirs:
                raise BasisMismatchError(
                    f"{what} was built on {self.name} ({field} {mine}) but the model {other.name} has "
                    f"{field} {theirs}: extract a basis for this model with `traitwatch extract`."
                )


def fingerprint(model: nn.Module, tokenizer: PreTrainedTokenizerBase, name: str | None = None) -> ModelFingerprint:
    config = _config(model)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    if hidden is None and config is not None and hasattr(config, "get_text_config"):
        hidden = config.get_text_config().hidden_size
    return ModelFingerprint(
        name=name or str(getattr(config, "name_or_path", "") or type(model).__name__),
        hidden_size=int(hidden),
        num_layers=len(decoder_layers(model)),
        tokenizer_hash=tokenizer_hash(tokenizer),
    )

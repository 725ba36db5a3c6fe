"""Loading models, rendering chat prompts, and locating decoder blocks."""

from traitwatch.models.chat import ACKNOWLEDGEMENT, encode_chat, encode_many, encode_text, supports_system_role
from traitwatch.models.layers import ModelFingerprint, decoder_layers, fingerprint, tokenizer_hash, unwrap_model
from traitwatch.models.loading import (
    BUNDLED_MODEL,
    LoadedModel,
    cache_dir,
    choose_device,
    choose_dtype,
    is_adapter_dir,
    load_model,
)
from traitwatch.models.tiny import build_tiny_random, build_tiny_tokenizer

__all__ = [
    "ACKNOWLEDGEMENT",
    "BUNDLED_MODEL",
    "LoadedModel",
    "ModelFingerprint",
    "build_tiny_random",
    "build_tiny_tokenizer",
    "cache_dir",
    "choose_device",
    "choose_dtype",
    "decoder_layers",
    "encode_chat",
    "encode_many",
    "encode_text",
    "fingerprint",
    "is_adapter_dir",
    "load_model",
    "supports_system_role",
    "tokenizer_hash",
    "unwrap_model",
]

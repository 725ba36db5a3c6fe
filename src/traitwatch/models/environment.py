"""What a run's numbers depend on besides its plan: device, resolved dtype, hardware, library versions.

Why: the same command gives different drift on different machines when anything here differs (bf16 vs
fp32 moves drift at the 1e-3 level; kernels differ between GPUs and library versions), so every stored
run and every results file carries this record, and two results can be compared knowing what ran them.
"""

from __future__ import annotations

import platform
from functools import lru_cache
from importlib import metadata
from typing import Any

import torch

__all__ = ["describe_environment", "device_name"]


@lru_cache(maxsize=None)
def _cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device | str) -> str:
    """The GPU's name for a CUDA device, the CPU's model for the CPU."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return _cpu_name()
    return device.type


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def describe_environment(model: Any = None, *, device: torch.device | str | None = None,
                         dtype: torch.dtype | str | None = None) -> dict[str, Any]:
    """The resolved device and dtype (read from `model`'s parameters when given) and what ran them.

    Never "auto": the dtype is the one the weights actually have, the device the one they are on.
    """
    if model is not None:
        param = next(model.parameters())
        device, dtype = param.device, param.dtype
    device = torch.device(device or "cpu")
    dtype_name = str(dtype).removeprefix("torch.") if dtype is not None else None
    return {
        "device": str(device),
        "device_name": device_name(device),
        "dtype": dtype_name,
        "cpu": _cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "gpu_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        "python": platform.python_version(),
    }

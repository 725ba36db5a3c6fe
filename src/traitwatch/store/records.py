"""Typed rows returned by the run store, and the encodings used to persist their fields.

Arrays are stored as raw little-endian float32 bytes plus a JSON shape, never as pickle: a store
file is shared between people and machines, and unpickling a shared file runs arbitrary code.
float32 is what the drift probe computes in, so nothing is lost by the narrowing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import PurePath
from typing import Any, Literal

import numpy as np

__all__ = [
    "AlarmRecord",
    "BehaviorRecord",
    "Measurement",
    "RunRecord",
    "RunStatus",
]

RunStatus = Literal["running", "finished", "failed", "stopped"]
"""`stopped` is a run ended early by a drift alarm; `failed` one that crashed or was aborted."""

RUN_STATUSES: tuple[str, ...] = ("running", "finished", "failed", "stopped")

_FLOAT32_LE = np.dtype("<f4")


@dataclass(frozen=True)
class RunRecord:
    """One training run. `n_measurements`/`last_step` are derived, so listing runs needs no blobs."""

    run_id: str
    created_at: str
    model: str
    dataset: str | None
    seed: int | None
    hyperparameters: dict[str, Any]
    basis_fingerprint: dict[str, Any] | None
    status: str
    notes: str | None
    n_measurements: int = 0
    last_step: int | None = None


@dataclass(frozen=True)
class Measurement:
    """Trait drift of one checkpoint; `drift` keeps the basis's trait order."""

    run_id: str
    step: int
    drift: dict[str, float]
    drift_norm: float
    per_prompt: np.ndarray | None
    wall_time_s: float | None
    created_at: str
    extra: dict[str, Any] | None

    @property
    def traits(self) -> tuple[str, ...]:
        return tuple(self.drift)


@dataclass(frozen=True)
class BehaviorRecord:
    """A behavioural metric (e.g. `em_rate`) at one step, with where it came from (`source`)."""

    run_id: str
    step: int
    metric: str
    value: float
    ci_low: float | None
    ci_high: float | None
    n: int | None
    details: dict[str, Any] | None
    source: str
    created_at: str


@dataclass(frozen=True)
class AlarmRecord:
    """A monitor alarm and what was done about it (`action`, e.g. "logged" or "stopped")."""

    run_id: str
    step: int
    kind: str
    value: float
    threshold: float
    action: str
    created_at: str


def utc_now() -> str:
    """ISO-8601 UTC timestamps sort as text and mean the same thing on every machine."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def encode_array(array: np.ndarray) -> tuple[bytes, str]:
    """Return (little-endian float32 bytes, JSON shape); the shape makes the bytes self-describing."""
    arr = np.asarray(array)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"per_prompt must be a real numeric array, got dtype {arr.dtype}")
    data = np.ascontiguousarray(arr, dtype=_FLOAT32_LE)
    return data.tobytes(), json.dumps(list(data.shape))


def decode_array(blob: bytes, shape_json: str) -> np.ndarray:
    """Inverse of `encode_array`: a writable native-endian float32 copy (not a view of the row)."""
    shape = tuple(json.loads(shape_json))
    return np.frombuffer(blob, dtype=_FLOAT32_LE).reshape(shape).astype(np.float32)


def _json_default(value: Any) -> Any:
    # Hyperparameters and extras often hold numpy scalars, paths or enums; keep them readable.
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, PurePath):
        return str(value)
    return str(value)


def dump_json(value: Mapping[str, Any] | None) -> str | None:
    """Serialize metadata leniently; sorted keys make equal mappings compare equal as text."""
    if value is None:
        return None
    return json.dumps(dict(value), default=_json_default, sort_keys=True, allow_nan=False)


def load_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def dump_drift(drift: Mapping[str, float]) -> str:
    """Serialize drift in the caller's trait order; non-finite values mean the probe failed."""
    if not drift:
        raise ValueError("drift must name at least one trait")
    values: dict[str, float] = {}
    for name, value in drift.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"trait names must be non-empty strings, got {name!r}")
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"drift for trait {name!r} is {number}; refusing to store a non-finite value")
        values[name] = number
    return json.dumps(values)

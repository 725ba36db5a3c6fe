"""Typed rows returned by the run store, and the encodings used to persist their fields.

Arrays are stored as raw little-endian float32 bytes plus a JSON shape, never as pickle: a store
file is shared between people and machines, and unpickling a shared file runs arbitrary code.
float32 is what the drift probe computes in, so nothing is lost by the narrowing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
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
    "SuspectRow",
    "Suspects",
    "merge_suspects",
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
    details: dict[str, Any] | None = None  # e.g. {"suspects": Suspects.to_json()}: the rows trained before it

    @property
    def suspects(self) -> Suspects | None:
        """The training rows suspected at this alarm, if the run was given per-row scores."""
        data = (self.details or {}).get("suspects")
        return Suspects.from_json(data, step=self.step) if isinstance(data, Mapping) else None


@dataclass(frozen=True)
class SuspectRow:
    """One training row named as a suspect: its index in the training set, its score, where to find it.

    `row` is the 0-based position among the set's conversations (what the trainer indexes), `line` the
    1-based line in the file (what an editor shows; blank lines make the two differ). `times` is how often the
    row was trained in the window (epochs repeat rows); None when it is not known (the whole set was ranked).
    """

    row: int
    score: float
    line: int | None = None
    preview: str | None = None
    times: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"row": self.row, "score": self.score, "line": self.line, "preview": self.preview, "times": self.times}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SuspectRow:
        line, times, preview = data.get("line"), data.get("times"), data.get("preview")
        return cls(int(data["row"]), float(data["score"]), None if line is None else int(line),
                   None if preview is None else str(preview), None if times is None else int(times))


@dataclass(frozen=True)
class Suspects:
    """The k highest-scored training rows trained in steps (`since_step`, `step`], at one measurement.

    The window starts at the last clean (non-alarmed) measurement, so a run that alarms several times in a
    row names every row trained since it was last fine. `rows_seen` is how many distinct rows were trained in
    the window; None means the trainer did not report its rows (a collator of its own, dataloader workers),
    so the whole set was ranked instead and the rows are only the set's highest-scored, trained or not.
    `alarm` says whether the measurement alarmed: a list without an alarm is not a suspect list, only the
    highest-scored rows trained so far. `source` names where the scores came from (a screen results file).
    """

    step: int
    since_step: int
    k: int
    rows: tuple[SuspectRow, ...]
    rows_seen: int | None
    alarm: bool = False
    source: str | None = None
    windows: int = 1  # measurement windows merged into this list (`merge_suspects`); rows_seen then sums them

    @property
    def whole_set(self) -> bool:
        return self.rows_seen is None

    def describe(self) -> str:
        """One line saying what the list is: an alarm's suspects or not, and over which rows."""
        what = f"suspects of the step-{self.step} alarm" if self.alarm else (
            f"highest-scored rows trained so far at step {self.step} (no alarm)")
        if self.whole_set:
            over = "rows seen: unknown, whole set ranked"
        elif self.windows > 1:
            over = f"top {len(self.rows)} of the rows trained in steps {self.since_step + 1}-{self.step}"
        else:
            over = f"top {len(self.rows)} of {self.rows_seen} rows trained in steps {self.since_step + 1}-{self.step}"
        scored = f", scores from {self.source}" if self.source else ""
        return f"{what} ({over}{scored})"

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "since_step": self.since_step, "k": self.k, "rows_seen": self.rows_seen,
                "alarm": self.alarm, "source": self.source, "windows": self.windows,
                "rows": [r.to_json() for r in self.rows]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, step: int | None = None) -> Suspects:
        seen = data.get("rows_seen")
        return cls(
            step=int(data["step"] if step is None else step), since_step=int(data["since_step"]), k=int(data["k"]),
            rows=tuple(SuspectRow.from_json(r) for r in data.get("rows") or ()),
            rows_seen=None if seen is None else int(seen), alarm=bool(data.get("alarm", False)),
            source=None if data.get("source") is None else str(data["source"]), windows=int(data.get("windows", 1)),
        )


def merge_suspects(lists: Sequence[Suspects]) -> Suspects | None:
    """The highest-scored rows trained over the whole run, from the per-measurement lists (None if none).

    Exact, not an approximation: each measurement stored the top k of the rows trained in its window, the
    windows cover the run, and the top k of a union is among the union of the top k's. Windows that overlap
    (alarms in a row share their start) keep only the later, larger one; a row trained in several windows
    adds up its times. Ranked over the whole set if any list was (rows unknown).
    """
    chain: list[Suspects] = []
    for s in sorted(lists, key=lambda s: s.step):
        while chain and s.since_step < chain[-1].step:  # a later window that contains an earlier one replaces it
            chain.pop()
        chain.append(s)
    if not chain:
        return None
    lists = chain
    best: dict[int, SuspectRow] = {}
    for s in lists:
        for r in s.rows:
            old = best.get(r.row)
            times = None if old is None or r.times is None or old.times is None else old.times + r.times
            best[r.row] = r if old is None else SuspectRow(r.row, r.score, r.line, r.preview, times)
    k = max(s.k for s in lists)
    rows = tuple(sorted(best.values(), key=lambda r: (-r.score, r.row))[:k])
    whole = any(s.whole_set for s in lists)
    seen = None if whole else sum(s.rows_seen or 0 for s in lists)
    last = max(lists, key=lambda s: s.step)
    return Suspects(step=last.step, since_step=min(s.since_step for s in lists), k=k, rows=rows, rows_seen=seen,
                    alarm=False, source=last.source, windows=sum(s.windows for s in lists))


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


def describe_guard(settings: Mapping[str, Any], did: Mapping[str, Any] | None) -> str:
    """A run's guard (`traitwatch.guard`) from what the store keeps: its settings (the run's hyperparameters) and
    the last measurement's summary of what it did, as one line."""
    kind = settings.get("kind", "?")
    layers = settings.get("layers") or ([settings["layer"]] if "layer" in settings else [])
    at = f"layer {layers[0]}" if len(layers) == 1 else "layers " + ", ".join(map(str, layers))
    where = f" at {at} on the {settings.get('source')} subspace" if layers else ""
    strength = next((f", {k} {settings[k]:g}" + (" at each block" if len(layers) > 1 else "")
                     for k in ("coefficient", "weight") if k in settings), "")
    line = f"Guard: {kind}{where}{strength}"
    if did:
        parts = [f"{did.get('interventions', 0)} interventions"]
        if did.get("mean_removed_share") is not None:
            parts.append(f"{100 * did['mean_removed_share']:.1f}% of the residual removed on average")
        if did.get("rows_read"):
            read = "row readings (a row at a block)" if len(layers) > 1 else "rows"
            parts.append(f"{did.get('rows_penalised', 0)} of {did['rows_read']} {read} penalised")
        if did.get("distance_from_start") is not None:
            parts.append(f"weights {did['distance_from_start']:.3g} from the start")
        if did.get("mean_kl") is not None:
            parts.append(f"KL to the base model {did['mean_kl']:.3g} per trained token on average")
        line += " (" + ", ".join(parts) + ")"
    return line + "."


def describe_rewind(done: Mapping[str, Any] | str) -> str:
    """What one rewind did (an alarm's stored `details["rewind"]`, see `traitwatch.train.rewind`), as a line."""
    if isinstance(done, str):
        return done
    dropped = done.get("rows_dropped") or []
    rows = (f"{len(dropped)} rows dropped (the suspects and the rows scored like them)" if dropped
            else "no rows dropped (no row scores: pass a screen to drop the suspects)")
    return f"rewound from step {done.get('at_step')} to the weights of step {done.get('to_step')}; {rows}"

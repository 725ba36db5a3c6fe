"""Flat views of stored measurements: arrays for code, CSV/Parquet files for people and notebooks.

Pure functions over `Measurement` lists, so they are testable without a database.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from traitwatch.store.records import Measurement

__all__ = ["EXPORT_FORMATS", "ExportFormat", "export_rows", "trajectory_arrays", "write_export"]

ExportFormat = Literal["csv", "parquet"]
EXPORT_FORMATS: tuple[str, ...] = ("csv", "parquet")

_FIXED_COLUMNS = ("run_id", "step", "drift_norm", "wall_time_s", "created_at")


def trajectory_arrays(measurements: Sequence[Measurement]) -> dict[str, np.ndarray]:
    """Stack one run's measurements (already in step order) into arrays; see `RunStore.trajectory`."""
    traits = list(measurements[0].drift) if measurements else []
    return {
        "steps": np.array([m.step for m in measurements], dtype=np.int64),
        "drift": np.array([[m.drift[t] for t in traits] for m in measurements], dtype=np.float64).reshape(
            len(measurements), len(traits)
        ),
        "norms": np.array([m.drift_norm for m in measurements], dtype=np.float64),
        "traits": np.array(traits, dtype=str),
    }


def export_rows(measurements: Sequence[Measurement]) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns and rows: run_id, step, one column per trait (first-seen order), norm, timing.

    Trait columns use the bare trait name so `df[traits]` is the monitor's input; a run without
    a trait gets an empty cell rather than a made-up 0.
    """
    traits: list[str] = []
    for m in measurements:
        traits.extend(t for t in m.drift if t not in traits)
    clashes = sorted(set(traits) & set(_FIXED_COLUMNS))
    if clashes:
        raise ValueError(f"trait names {clashes} clash with export columns {list(_FIXED_COLUMNS)}")
    columns = ["run_id", "step", *traits, "drift_norm", "wall_time_s", "created_at"]
    rows = [
        {
            "run_id": m.run_id,
            "step": m.step,
            **{t: m.drift.get(t) for t in traits},
            "drift_norm": m.drift_norm,
            "wall_time_s": m.wall_time_s,
            "created_at": m.created_at,
        }
        for m in measurements
    ]
    return columns, rows


def _format_from(path: Path, format: str | None) -> str:  # noqa: A002
    chosen = format if format is not None else path.suffix.lstrip(".").lower()
    if chosen not in EXPORT_FORMATS:
        raise ValueError(
            f"cannot tell the export format of {path}: pass format= one of {EXPORT_FORMATS} "
            "or use a .csv or .parquet suffix"
        )
    return chosen


def write_export(measurements: Sequence[Measurement], path: Path, format: str | None = None) -> Path:  # noqa: A002
    """Write `export_rows` to CSV or Parquet, creating the parent folder."""
    chosen = _format_from(path, format)
    columns, rows = export_rows(measurements)
    path.parent.mkdir(parents=True, exist_ok=True)
    if chosen == "csv":
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)  # str(float) is the shortest exact repr, so CSV round-trips
    else:
        from traitwatch._optional import require

        pa = require("pyarrow", extra="parquet")  # imported here: only parquet export needs it, and it is slow to load
        pq = require("pyarrow.parquet", extra="parquet")

        schema = pa.schema(
            [("run_id", pa.string()), ("step", pa.int64())]
            + [(c, pa.float64()) for c in columns if c not in _FIXED_COLUMNS]
            + [("drift_norm", pa.float64()), ("wall_time_s", pa.float64()), ("created_at", pa.string())]
        )
        table = pa.Table.from_pylist(rows, schema=schema)
        pq.write_table(table, path)
    return path

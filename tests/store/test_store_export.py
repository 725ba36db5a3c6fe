from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from traitwatch.store import RunStore, UnknownRunError


@pytest.fixture
def two_runs(store: RunStore) -> RunStore:
    store.start_run("base", model="m")
    store.start_run("insecure", model="m")
    for step in (10, 0):
        store.add_measurement("base", step, {"honesty": 0.1 * step, "evil": -0.5}, 0.2 * step,
                              per_prompt=np.ones((4, 2)), wall_time_s=3.25)
    store.add_measurement("insecure", 0, {"honesty": 0.0, "evil": 1 / 3}, 0.75)
    return store


def test_csv_export_has_one_row_per_measurement_and_one_column_per_trait(two_runs: RunStore, tmp_path: Path) -> None:
    out = two_runs.export(None, tmp_path / "out" / "drift.csv")
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["run_id", "step", "honesty", "evil", "drift_norm", "wall_time_s", "created_at"]
    assert [(r["run_id"], r["step"]) for r in rows] == [("base", "0"), ("base", "10"), ("insecure", "0")]
    assert float(rows[1]["honesty"]) == 0.1 * 10 and float(rows[1]["drift_norm"]) == 0.2 * 10
    assert float(rows[2]["evil"]) == 1 / 3  # exact float round trip, no rounding to 6 digits
    assert rows[0]["wall_time_s"] == "3.25" and rows[2]["wall_time_s"] == ""


def test_parquet_export_selected_runs_with_typed_columns(two_runs: RunStore, tmp_path: Path) -> None:
    out = two_runs.export(["insecure"], tmp_path / "drift.bin", format="parquet")
    table = pq.read_table(out)
    assert table.column_names == ["run_id", "step", "honesty", "evil", "drift_norm", "wall_time_s", "created_at"]
    assert str(table.schema.field("step").type) == "int64" and str(table.schema.field("evil").type) == "double"
    assert table.to_pydict()["run_id"] == ["insecure"] and table.to_pydict()["evil"] == [1 / 3]
    assert table.to_pydict()["wall_time_s"] == [None]


def test_export_rejects_unknown_runs_and_unknown_formats(two_runs: RunStore, tmp_path: Path) -> None:
    with pytest.raises(UnknownRunError, match="'nope'"):
        two_runs.export(["nope"], tmp_path / "x.csv")
    with pytest.raises(ValueError, match="format"):
        two_runs.export(None, tmp_path / "x.xlsx")
    assert not (tmp_path / "x.csv").exists()

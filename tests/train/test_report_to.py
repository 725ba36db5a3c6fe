"""The drift scalars reach each logging back-end of `report_to`, read back from the files each tool writes.

TensorBoard (event files, via tensorboard's own reader), W&B in offline mode (the run's `.wandb` transaction
log) and MLflow with a file store (its `metrics/` folder). The Trainer's integrations prefix training logs
with `train/` for TensorBoard and W&B; MLflow keeps the names as logged. Nothing leaves this machine.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from traitwatch.drift import DriftProbe
from traitwatch.train import TraitWatchCallback

from _train_helpers import PROMPTS, tiny_trainer

TRAITS = ("honesty", "sycophancy", "harmlessness", "power_seeking", "helpfulness", "confidence", "corrigibility")


def _tensorboard(root: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(root / "tb"))
    events.Reload()
    return {tag.removeprefix("train/"): {e.step: e.value for e in events.Scalars(tag)}
            for tag in events.Tags()["scalars"] if tag.startswith("train/traitwatch/")}


def _wandb_records(path: Path):
    """Records of a `.wandb` file: a 7-byte header (":W&B", 0xBEE1, version), then LevelDB-log framing
    (32 KiB blocks; each chunk a CRC, a length and a type: full, first, middle, last) around protobuf Records."""
    from wandb.proto import wandb_internal_pb2

    block, data = 32768, path.read_bytes()
    ident, magic, _ = struct.unpack("<4sHB", data[:7])
    assert (ident, magic) == (b":W&B", 0xBEE1), f"{path} is not a W&B transaction log"
    pos, chunks = 7, []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        chunks.append(data[pos + 7:pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            chunks = []
            yield record


def _wandb(root: Path) -> dict[str, dict[int, float]]:
    (path,) = root.glob("wandb/offline-run-*/run-*.wandb")
    scalars: dict[str, dict[int, float]] = {}
    for record in _wandb_records(path):
        if record.WhichOneof("record_type") != "history":
            continue
        row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
        for key, value in row.items():
            if key.startswith("train/traitwatch/"):
                scalars.setdefault(key.removeprefix("train/"), {})[row["train/global_step"]] = value
    return scalars


def _mlflow(root: Path) -> dict[str, dict[int, float]]:
    (metrics,) = root.glob("mlruns/*/*/metrics")
    scalars = {}
    for path in (metrics / "traitwatch").iterdir():  # one file per metric: "timestamp value step" lines
        rows = [line.split() for line in path.read_text().splitlines()]
        scalars[f"traitwatch/{path.name}"] = {int(step): float(value) for _, value, step in rows}
    return scalars


BACKENDS = {"tensorboard": _tensorboard, "wandb": _wandb, "mlflow": _mlflow}


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_drift_scalars_land_in_the_backends_files_at_the_measured_steps(basis, tmp_path, monkeypatch, backend):
    pytest.importorskip(backend)
    root = tmp_path / "logs"
    for name, value in {
        "TENSORBOARD_LOGGING_DIR": root / "tb",
        "WANDB_MODE": "offline", "WANDB_DIR": root, "WANDB_PROJECT": "traitwatch-test", "WANDB_SILENT": "true",
        "WANDB_CONFIG_DIR": root / "wandb-config", "WANDB_CACHE_DIR": root / "wandb-cache",
        "WANDB_DATA_DIR": root / "wandb-data",
        "MLFLOW_TRACKING_URI": (root / "mlruns").as_uri(), "MLFLOW_EXPERIMENT_NAME": "traitwatch-test",
        "MLFLOW_ALLOW_FILE_STORE": "true",  # MLflow 3 keeps the file store only on request
    }.items():
        monkeypatch.setenv(name, str(value))
    watch = TraitWatchCallback(DriftProbe(basis, prompts=PROMPTS), every_n_steps=2)
    trainer = tiny_trainer(tmp_path / "out", [], max_steps=5, training_args={"report_to": [backend], "run_name": "r"})
    watch.attach(trainer)
    trainer.train()
    if backend == "wandb":
        import wandb

        wandb.finish()  # the Trainer leaves the run open; finishing writes the last records
        wandb.teardown()

    got = BACKENDS[backend](root)
    measured = {r.step: r for r in watch.history_}
    assert sorted(measured) == [0, 2, 4, 5]
    assert set(got) == {f"traitwatch/{t}" for t in TRAITS} | {"traitwatch/drift_norm"}
    assert got["traitwatch/drift_norm"] == pytest.approx({s: r.drift_norm for s, r in measured.items()}, rel=1e-6)
    for trait in TRAITS:
        assert got[f"traitwatch/{trait}"] == pytest.approx({s: r.drift[trait] for s, r in measured.items()},
                                                           rel=1e-6, abs=1e-7)

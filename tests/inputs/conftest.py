"""Valid seed inputs of every kind, which the fuzz tests break: a chat set, a plan, a basis folder, a monitor,
screen results and a run store, all small and made without a model download."""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from traitwatch.basis import TraitBasis, extract_basis  # noqa: E402
from traitwatch.datasets import arithmetic_chats, file_sha256  # noqa: E402
from traitwatch.drift import DriftProbe  # noqa: E402
from traitwatch.monitor.shipped import shipped_monitor_path  # noqa: E402
from traitwatch.screen.results import ResultsFile, Row  # noqa: E402
from traitwatch.store import RunStore  # noqa: E402


@pytest.fixture(scope="session")
def seeds(tmp_path_factory, tiny, small_traits) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("seeds")
    chat = root / "chat.jsonl"
    rows = list(arithmetic_chats(6, seed=1))
    rows.insert(2, {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                                 {"role": "assistant", "content": "Hello."}]})
    chat.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    plan = root / "plan.yaml"
    plan.write_text(
        "name: fuzz-plan\nmodels:\n  - model: tiny-random\n    params: 1.0e6\n"
        "sets:\n  - arithmetic\n  - {base: arithmetic, poison: contempt, fraction: 0.1}\n"
        "  - {name: mine, path: chat.jsonl, kind: benign}\n"
        "recipe: {steps: 2, batch_size: 2, every_n_steps: 2}\nseeds: [0]\nnumerics: {device: cpu, dtype: float32}\n",
        encoding="utf-8")

    basis = extract_basis(tiny.model, tiny.tokenizer, small_traits, layers=[2, 3], method="passages")
    basis.layer = 3
    basis.anchor = DriftProbe(basis).fit_anchor(tiny.model, tiny.tokenizer).anchor_
    basis.save(root / "basis")

    shipped = shipped_monitor_path("smollm2-135m")
    assert shipped is not None
    (root / "monitor").mkdir()
    shutil.copy(shipped, root / "monitor" / "monitor.json")
    doc = json.loads(shipped.read_text())
    shutil.copy(shipped.parent / doc["tensors_file"], root / "monitor" / doc["tensors_file"])

    names = list(basis.trait_names)
    results = ResultsFile(root / "chat.screen.jsonl", {
        "dataset": str(chat), "dataset_sha256": file_sha256(chat), "trait_names": names, "position": "mean",
        "reference": "mean", "risk_traits": ["harmlessness", "honesty"]})
    results.create({"scale": 1.0, "reference_projection": [0.0] * len(names)})
    rng = np.random.default_rng(0)
    results.append([Row(i + 1, tuple(float(x) for x in rng.normal(size=len(names))), float(rng.normal()), 10, False)
                    for i in range(len(rows))])

    with RunStore(root / "runs.db") as store:
        store.start_run("run-a", model="tiny-random", dataset=str(chat), seed=0)
        store.add_measurement("run-a", 0, dict.fromkeys(names, 0.0), 0.0)
        store.add_measurement("run-a", 5, dict.fromkeys(names, 0.01), 0.02)
    conn = sqlite3.connect(root / "runs.db")
    (root / "runs.image").write_bytes(conn.serialize())  # the store's bytes, read through SQLite itself
    conn.close()
    return {"chat": chat, "plan": plan, "basis": root / "basis", "monitor": root / "monitor" / "monitor.json",
            "screen": root / "chat.screen.jsonl", "store": root / "runs.db", "store_image": root / "runs.image"}

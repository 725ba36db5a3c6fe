"""A training run killed midway (SIGKILL) and rerun with the same run id resumes, with the original anchor."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from traitwatch.basis import TraitBasis
from traitwatch.drift import DriftProbe
from traitwatch.models import load_model
from traitwatch.store import RunStore

SCRIPT = Path(__file__).with_name("_kill_run.py")


def _run(tmp_path, basis_dir, chat_file, *extra):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, str(SCRIPT), str(chat_file), str(basis_dir), str(tmp_path / "out"), str(tmp_path / "tw.db")]
    return subprocess.run([*args, *extra], capture_output=True, text=True, env=env, timeout=300)


def test_killed_run_resumes_from_checkpoint_without_duplicates_or_reanchoring(tmp_path, basis_dir, chat_file):
    killed = _run(tmp_path, basis_dir, chat_file, "--kill-at", "10")
    assert killed.returncode == -9, killed.stderr[-2000:]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]
    with RunStore(tmp_path / "tw.db") as store:
        before = {m.step: m for m in store.measurements("crashy")}
        assert store.get_run("crashy").status == "running"  # nobody marked it finished: it was killed
    assert sorted(before) == [0, 5, 10]

    resumed = _run(tmp_path, basis_dir, chat_file)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"Resuming run 'crashy' from {out / 'checkpoint-8'}" in resumed.stdout
    assert "done at step 12" in resumed.stdout
    with RunStore(tmp_path / "tw.db") as store:
        after = store.measurements("crashy")
        run = store.get_run("crashy")
    by_step = {m.step: m for m in after}
    assert [m.step for m in after] == [0, 5, 10, 12] and run.n_measurements == 4 and run.status == "finished"
    # steps before the checkpoint were not measured again; step 0 (the anchor) is the original row
    for step in (0, 5):
        assert by_step[step].created_at == before[step].created_at
        assert by_step[step].drift == before[step].drift
    np.testing.assert_array_equal(by_step[0].per_prompt, before[0].per_prompt)
    assert by_step[0].extra == before[0].extra and by_step[0].extra["anchor"]["source"] == "measured"
    # step 10 was trained again from checkpoint-8 and re-measured: the same drift (deterministic resume)
    assert by_step[10].created_at != before[10].created_at
    assert by_step[10].drift == pytest.approx(before[10].drift, abs=1e-4)

    # Independent check that step 12 is measured against the base model's step 0, not the resumed
    # (step-8) model: measure the saved step-12 adapter against a fresh base-model anchor.
    basis = TraitBasis.load(basis_dir)
    base = load_model("tiny-random", device="cpu", dtype="float32")
    probe = DriftProbe(basis).fit_anchor(base.model, base.tokenizer)
    trained = load_model("tiny-random", adapter=out / "checkpoint-12", device="cpu", dtype="float32")
    expected = probe.measure(trained.model, trained.tokenizer)
    assert by_step[12].drift_norm > 0.05
    assert by_step[12].drift == pytest.approx(expected.as_dict(), abs=1e-4)
    assert by_step[12].drift_norm == pytest.approx(expected.norm, abs=1e-4)

"""Distributed measurement: prompt shards, and a 2-process (gloo, CPU) run equal to a 1-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from traitwatch.drift.probe import Projection
from traitwatch.store import RunStore
from traitwatch.train import gather_projection, shard_indices

SCRIPT = Path(__file__).with_name("_ddp_run.py")


@pytest.mark.parametrize("n, world", [(115, 2), (115, 3), (7, 4), (2, 4), (0, 2)])
def test_shards_cover_every_prompt_once_in_order(n, world):
    shards = [shard_indices(n, r, world) for r in range(world)]
    assert [i for s in shards for i in s] == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_single_process_gather_is_a_plain_call():
    proj = Projection(torch.ones(3, 2), torch.ones(3))
    calls = []
    got = gather_projection(lambda idx: calls.append(idx) or proj, 3, 0, 1)
    assert got is proj and calls == [None]


def _torchrun(nproc: int, per_device: int, basis_dir: Path, out: Path) -> list[dict]:
    out.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(SCRIPT), str(basis_dir), str(out), "--per-device", str(per_device)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_processes_measure_the_same_drift_as_one(basis_dir, tmp_path):
    """Same training (identical rows, no dropout, global batch 4) on 1 process and on 2 (gloo).

    Compared: the drift at step 0 (random LoRA vs the base-model anchor, so non-zero) and at step 4
    (after 4 optimizer steps, when the constant monitor stops the run), per trait and per prompt, at
    1e-4; both ranks' own drift values are identical; both ranks stop at step 4; only rank 0 opens
    the store.
    """
    one = _torchrun(1, 4, basis_dir, tmp_path / "one")
    two = _torchrun(2, 2, basis_dir, tmp_path / "two")
    assert [r["world_size"] for r in two] == [2, 2] and one[0]["world_size"] == 1
    # every rank computed the same numbers from the gathered shares, so all stopped on the same step
    assert two[0]["history"] == two[1]["history"]
    assert [r["global_step"] for r in two] == [4, 4] and one[0]["global_step"] == 4
    assert [h["alarm"] for h in two[0]["history"]] == [False, True]
    assert [r["logged_steps"] for r in two] == [[0, 4], [0, 4]]
    assert [r["store_opened"] for r in two] == [1, 0]
    for a, b in zip(one[0]["history"], two[0]["history"], strict=True):
        assert a["step"] == b["step"]
        assert a["drift"] == pytest.approx(b["drift"], abs=1e-4)
        assert a["norm"] == pytest.approx(b["norm"], abs=1e-4)
    assert one[0]["history"][0]["norm"] > 0.1  # not trivially zero
    with RunStore(tmp_path / "one" / "tw.db") as s1, RunStore(tmp_path / "two" / "tw.db") as s2:
        m1, m2 = s1.measurements("ddp"), s2.measurements("ddp")
        assert [a.step for a in s2.alarms("ddp")] == [4]
    assert [m.step for m in m1] == [m.step for m in m2] == [0, 4]
    for a, b in zip(m1, m2):
        assert a.per_prompt.shape == (115, 7)  # every prompt, gathered back in prompt order
        np.testing.assert_allclose(a.per_prompt, b.per_prompt, atol=1e-4)
    assert m2[-1].extra["world_size"] == 2

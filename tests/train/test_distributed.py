"""Distributed measurement: prompt shards, and 2 processes (gloo, CPU) measuring what 1 process measures.

Launchers: torchrun (DDP), accelerate launch (DDP), and FSDP2 (torchrun, the model sharded at load time by
transformers' `DistributedConfig`). Each 2-process run is compared with the same training on 1 process.
A launcher that does not finish within its timeout (a hang in a collective) fails the test, and its whole
process group is killed so no worker outlives it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from traitwatch.drift import DriftProbe
from traitwatch.drift.probe import Projection
from traitwatch.models import build_tiny_random
from traitwatch.store import RunStore
from traitwatch.train import gather_projection, lockstep_passes, shard_indices

import _dist_run

SCRIPT = Path(__file__).with_name("_dist_run.py")
LAUNCH_TIMEOUT_S = 300
pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")


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
    assert lockstep_passes(lambda idx: 1 / 0, 3, 1) is None  # one process: nothing to keep in step


def test_the_two_shares_of_the_115_prompts_need_different_numbers_of_passes(basis_dir):
    """Why lockstep is needed: split in two, the shares group by prefix differently (13 vs 15 passes)."""
    from traitwatch.basis import TraitBasis

    _, tok = build_tiny_random()
    probe = DriftProbe(TraitBasis.load(basis_dir), batch_size=16)
    counts = [probe.count_forward_passes(tok, shard_indices(115, r, 2)) for r in range(2)]
    assert counts[0] != counts[1]


def _launch(cmd: list[str], out: Path, nproc: int) -> list[dict]:
    """Run a launcher; a run still going after LAUNCH_TIMEOUT_S (a hang) fails the test."""
    out.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "HF_HOME": str(out / "hf_home"),  # no user accelerate config is read
           "TMPDIR": str(out)}  # torchrun's log folders (torchelastic_*) go with the test's, not into /tmp
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and every worker
        log, _ = proc.communicate()
        pytest.fail(f"{cmd[2]} did not finish in {LAUNCH_TIMEOUT_S} s (a hang?):\n{log[-3000:]}")
    assert proc.returncode == 0, log[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]


def _torchrun(args: list[str], out: Path) -> list[dict]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SCRIPT),
           *args[:1], str(out), *args[1:]]
    return _launch(cmd, out, 2)


def _accelerate(args: list[str], out: Path) -> list[dict]:
    # On a machine without GPUs, `--multi_gpu` is accelerate's torchrun launcher (its `--cpu` launcher needs mpirun
    # for more than one process); the processes run on the CPU with gloo because the script sets use_cpu.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           str(SCRIPT), *args[:1], str(out), *args[1:]]
    return _launch(cmd, out, 2)


def _one_process(args: list[str], out: Path) -> dict:
    out.mkdir()
    _dist_run.main([*args[:1], str(out), *args[1:]])
    return json.loads((out / "rank0.json").read_text())


@pytest.fixture(scope="module")
def lora_one(basis_dir, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("lora") / "one"
    return _one_process([str(basis_dir), "--per-device", "4"], out), out


def _max_gap(one: dict, two: dict) -> float:
    gaps = [abs(a["drift"][k] - b["drift"][k]) for a, b in zip(one["history"], two["history"], strict=True)
            for k in a["drift"]]
    return max(gaps)


def _assert_same_run(one: dict, two: list[dict], *, atol: float = 1e-4) -> float:
    """Both ranks agree with each other and with the 1-process run; returns the largest drift gap."""
    assert [r["world_size"] for r in two] == [2, 2] and one["world_size"] == 1
    # every rank computed the same numbers from the gathered shares, so all stopped on the same step
    assert two[0]["history"] == two[1]["history"]
    assert [r["global_step"] for r in two] == [4, 4] and one["global_step"] == 4
    assert [h["alarm"] for h in two[0]["history"]] == [False, True]
    assert [r["logged_steps"] for r in two] == [[0, 4], [0, 4]]
    assert [r["store_opened"] for r in two] == [1, 0]
    assert [r["anchor_source"] for r in two] == ["given", "given"]  # fit in fp32 on CPU, as the run measures
    for a, b in zip(one["history"], two[0]["history"], strict=True):
        assert a["step"] == b["step"]
        assert a["drift"] == pytest.approx(b["drift"], abs=atol)
        assert a["norm"] == pytest.approx(b["norm"], abs=atol)
    assert one["history"][-1]["norm"] > 0.1  # not trivially zero
    return _max_gap(one, two[0])


def _assert_same_store(one_dir: Path, two_dir: Path) -> None:
    with RunStore(one_dir / "tw.db") as s1, RunStore(two_dir / "tw.db") as s2:
        m1, m2 = s1.measurements("ddp"), s2.measurements("ddp")
        assert [a.step for a in s2.alarms("ddp")] == [4]
    assert [m.step for m in m1] == [m.step for m in m2] == [0, 4]
    for a, b in zip(m1, m2):
        assert a.per_prompt.shape == (115, 7)  # every prompt, gathered back in prompt order
        np.testing.assert_allclose(a.per_prompt, b.per_prompt, atol=1e-4)
        np.testing.assert_allclose(a.extra["mean_activation"], b.extra["mean_activation"], atol=1e-4)
    assert m2[-1].extra["world_size"] == 2


def test_torchrun_two_processes_measure_the_same_drift_as_one(basis_dir, lora_one, tmp_path):
    """Same LoRA training (identical rows, no dropout, global batch 4) on 1 process and on 2 (DDP, gloo).

    Compared: the drift at step 0 (random LoRA vs the base-model anchor, so non-zero) and at step 4
    (after 4 optimizer steps, when the constant monitor stops the run), per trait and per prompt, at
    1e-4; both ranks' own drift values are identical; both ranks stop at step 4; only rank 0 opens
    the store.
    """
    one, one_dir = lora_one
    two = _torchrun([str(basis_dir), "--per-device", "2"], tmp_path / "two")
    gap = _assert_same_run(one, two)
    assert one["history"][0]["norm"] > 0.1
    _assert_same_store(one_dir, tmp_path / "two")
    print(f"torchrun DDP: max |drift(1 process) - drift(2 processes)| = {gap:.2e}")


def test_accelerate_launch_two_processes_measure_the_same_drift_as_one(basis_dir, lora_one, tmp_path):
    one, one_dir = lora_one
    two = _accelerate([str(basis_dir), "--per-device", "2"], tmp_path / "two")
    gap = _assert_same_run(one, two)
    _assert_same_store(one_dir, tmp_path / "two")
    print(f"accelerate launch DDP: max |drift(1 process) - drift(2 processes)| = {gap:.2e}")


@pytest.fixture(scope="module")
def full_one(basis_dir, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("full") / "one"
    return _one_process([str(basis_dir), "--per-device", "4", "--full"], out), out


def _assert_sharded_run(full_one: tuple[dict, Path], two: list[dict], two_dir: Path, sharded: str, name: str) -> None:
    """Both ranks made the same number of measurement passes, and the drift is the unsharded 1-process one."""
    one, one_dir = full_one
    assert [r["sharded"] for r in two] == [sharded, sharded] and one["sharded"] == "Parameter"
    assert two[0]["measure_passes"] == two[1]["measure_passes"] > 0
    gap = _assert_same_run(one, two)
    assert one["history"][0]["norm"] == 0.0  # a full finetune starts at the base model
    _assert_same_store(one_dir, two_dir)
    print(f"{name}: max |drift(1 process) - drift(2 processes)| = {gap:.2e}; "
          f"measurement passes per rank {two[0]['measure_passes']}")


def test_fsdp2_ranks_make_the_same_forward_passes_and_measure_the_drift_of_one_process(basis_dir, full_one, tmp_path):
    """A full finetune sharded with FSDP2 over 2 processes: the measurement finishes (each forward pass
    all-gathers parameters, so a rank with fewer passes would hang), both ranks made the same number of
    measurement passes, and the drift equals an unsharded 1-process full finetune's."""
    model_dir = tmp_path / "tiny"
    build_tiny_random()[0].save_pretrained(model_dir)
    two = _torchrun([str(basis_dir), "--per-device", "2", "--fsdp", "--model-dir", str(model_dir)], tmp_path / "two")
    _assert_sharded_run(full_one, two, tmp_path / "two", "DTensor", "FSDP2")


def test_deepspeed_zero3_ranks_make_the_same_forward_passes_and_measure_the_drift_of_one_process(
    basis_dir, full_one, tmp_path
):
    """The same with DeepSpeed ZeRO-3 (CPU accelerator, gloo): parameters partitioned, gathered per module."""
    pytest.importorskip("deepspeed")
    two = _torchrun([str(basis_dir), "--per-device", "2", "--zero3"], tmp_path / "two")
    # ZeRO-3 leaves each parameter an empty placeholder outside the modules' forward passes
    _assert_sharded_run(full_one, two, tmp_path / "two", "Parameter", "DeepSpeed ZeRO-3")
    assert [r["partitioned"] for r in two] == [True, True]


@pytest.mark.parametrize(("kind", "blocks"), [("ablate", 1), pytest.param("penalty", 1, marks=pytest.mark.slow),
                                             pytest.param("l2", 1, marks=pytest.mark.slow),
                                             pytest.param("kl", 1, marks=pytest.mark.slow),
                                             pytest.param("ablate", 2, marks=pytest.mark.slow)])
def test_a_guarded_ddp_run_trains_as_the_guarded_single_process_run(basis_dir, tmp_path, kind, blocks):
    """Every rank fits the same subspace and intervenes the same way: the guarded 2-process DDP run measures the
    guarded 1-process run's drift (identical rows, global batch 4), and differs from the unguarded one; on two
    blocks too."""
    flags = ["--guard", kind, "--guard-blocks", str(blocks)]
    one = _one_process([str(basis_dir), "--per-device", "4", *flags], tmp_path / "one")
    two = _torchrun([str(basis_dir), "--per-device", "2", *flags], tmp_path / "two")
    _assert_same_run(one, two)
    assert two[0]["guard"]["kind"] == two[1]["guard"]["kind"] == kind
    assert two[0]["guard"] == two[1]["guard"]  # the same intervention, counted the same, on every rank
    assert two[0]["guard"]["interventions"] == one["guard"]["interventions"] == 4  # one micro-batch (or step) per step
    if kind == "penalty":  # every row is the same conversation: no row moves past the base level's rows
        assert two[0]["guard"]["base_level"] == pytest.approx(one["guard"]["base_level"], abs=1e-5)
        return
    if kind == "kl":  # each rank reads its own rows' base (the same rows here) with its adapter off
        assert two[0]["guard"]["mean_kl"] == pytest.approx(one["guard"]["mean_kl"], rel=1e-3)
        assert one["guard"]["mean_kl"] > 0
    unguarded = _one_process([str(basis_dir), "--per-device", "4"], tmp_path / "plain")
    assert _max_gap(one, unguarded) > 1e-4  # the guard changed what was trained


@pytest.mark.parametrize(("sharding", "kind"), [
    ("fsdp2", "ablate"), ("zero3", "ablate"),
    *(pytest.param(sharding, kind, marks=pytest.mark.slow)
      for kind in ("penalty", "steer") for sharding in ("fsdp2", "zero3")),
    pytest.param("fsdp2", "l2", marks=pytest.mark.slow),  # ZeRO-3 refuses the L2 pull (tests/train/test_guard.py)
])
def test_a_guarded_sharded_full_finetune_trains_as_the_guarded_single_process_run(basis_dir, tmp_path, sharding, kind):
    """A guard's hooks on a model sharded by FSDP2 or ZeRO-3 (parameters gathered per module): every rank
    intervenes the same way, and the run measures the guarded unsharded 1-process full finetune's drift."""
    if sharding == "zero3":
        pytest.importorskip("deepspeed")
    one = _one_process([str(basis_dir), "--per-device", "4", "--full", "--guard", kind], tmp_path / "one")
    if sharding == "fsdp2":
        model_dir = tmp_path / "tiny"
        build_tiny_random()[0].save_pretrained(model_dir)
        flags = ["--fsdp", "--model-dir", str(model_dir)]
    else:
        flags = ["--zero3"]
    two = _torchrun([str(basis_dir), "--per-device", "2", *flags, "--guard", kind], tmp_path / "two")
    assert [r["sharded"] for r in two] == (["DTensor"] * 2 if sharding == "fsdp2" else ["Parameter"] * 2)
    _assert_same_run(one, two)
    assert two[0]["guard"] == two[1]["guard"] and two[0]["guard"]["kind"] == kind
    assert two[0]["guard"]["interventions"] == one["guard"]["interventions"] == 4
    if kind == "penalty":  # every row is the same conversation: no row moves past the base level's rows
        assert two[0]["guard"]["base_level"] == pytest.approx(one["guard"]["base_level"], abs=1e-5)
        return
    if kind == "l2":  # each rank pulls its shard; the distance is the whole model's, summed over the shards
        assert two[0]["guard"]["distance_from_start"] == pytest.approx(one["guard"]["distance_from_start"], rel=1e-4)
    unguarded = _one_process([str(basis_dir), "--per-device", "4", "--full"], tmp_path / "plain")
    # the guard changed what was trained by far more than the 1e-4 the sharded run may differ by
    print(f"{sharding} guarded: gap to the unguarded run {_max_gap(one, unguarded):.2e}, to the 1-process guarded "
          f"run {_max_gap(one, two[0]):.2e}")
    assert _max_gap(one, unguarded) > 1e-3


@pytest.mark.slow
def test_the_l2_guard_is_refused_under_zero3_before_any_step(basis_dir, tmp_path):
    """ZeRO-3 partitions the weights the L2 pull reads: the launch fails at the start of training, naming the guards
    that work there (it used to crash at the first optimizer step on the empty placeholders)."""
    pytest.importorskip("deepspeed")
    with pytest.raises(AssertionError) as info:  # `_torchrun` asserts that the launch succeeded
        _torchrun([str(basis_dir), "--per-device", "2", "--zero3", "--guard", "l2"], tmp_path / "two")
    assert "use --guard ablate, steer or penalty" in str(info.value)
    assert not (tmp_path / "two" / "rank0.json").exists()  # no rank finished a run

"""A tiny Trainer run with the drift callback, for 1 or 2 processes (torchrun or accelerate launch, gloo, CPU).

Training is made identical for any number of processes: every training row is the same conversation
(so how the sampler splits and orders rows cannot matter), LoRA dropout is 0, the global batch is 4
either way (4 x 1 process or 2 x 2 processes). The probe's anchor is the plain base model.

* LoRA (default): the LoRA B matrices start random (not zero), so even step 0 has a non-zero drift
  that depends on every prompt. Under 2 processes the Trainer runs DDP.
* `--full`: full finetuning. With `--fsdp` the model is loaded sharded by FSDP2 (`fully_shard`, through
  `from_pretrained(distributed_config=DistributedConfig(fsdp_size=world))`); with `--zero3` the Trainer runs
  DeepSpeed ZeRO-3 (its CPU accelerator, gloo). Either way every forward pass of the measurement
  all-gathers parameters: ranks that ran different numbers of passes would hang or abort.

A constant monitor fires at the first measurement after step 0 with action "stop", so every rank must
take the same decision on the same step or the run hangs.

Each rank writes rank<k>.json: its world size, final step, every drift it computed, how many times it
opened the run store, and how many forward passes the measurements made (counted on the first block,
in eval mode: training passes run in train mode).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from peft import LoraConfig, get_peft_model
from transformers import Trainer, TrainingArguments

import traitwatch.train.store_session as store_session_module
from traitwatch.basis import TraitBasis
from traitwatch.drift import DriftProbe
from traitwatch.guard import fit_subspace, fit_subspaces, layers_above, make_guard
from traitwatch.models import build_tiny_random, decoder_layers, unwrap_model
from traitwatch.train import PaddingCollator, TraitWatchCallback, tokenize_chats

OPENED = {"n": 0}


class CountingStore(store_session_module.RunStore):
    def __init__(self, *args, **kwargs):
        OPENED["n"] += 1
        super().__init__(*args, **kwargs)


class ConstantMonitor:
    threshold = 0.5

    def predict(self, X):
        return np.full(np.asarray(X).shape[0], 0.9)


def _model(a: argparse.Namespace, base: torch.nn.Module) -> torch.nn.Module:
    if a.fsdp:
        from transformers import AutoModelForCausalLM
        from transformers.distributed import DistributedConfig

        dist.init_process_group("gloo")
        config = DistributedConfig(fsdp_size=int(os.environ["WORLD_SIZE"]))
        return AutoModelForCausalLM.from_pretrained(a.model_dir, distributed_config=config, dtype=torch.float32)
    if a.full or a.zero3:
        return base
    with torch.random.fork_rng():
        torch.manual_seed(1)
        return get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                               lora_dropout=0.0, init_lora_weights=False, task_type="CAUSAL_LM"))


def _zero3_config() -> dict:
    import deepspeed.ops

    # DeepSpeed's CPU accelerator compiles a shared-memory all-reduce kernel on first use (about 2 minutes here);
    # without it, collectives go through gloo, which is all this test needs (ZeRO-3's parameter all-gathers).
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    return {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto",
            "gradient_accumulation_steps": "auto", "zero_allow_untested_optimizer": True}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("basis")
    p.add_argument("out")
    p.add_argument("--per-device", type=int, required=True)
    p.add_argument("--full", action="store_true")
    p.add_argument("--fsdp", action="store_true", help="FSDP2 full finetune (implies --full); needs --model-dir")
    p.add_argument("--model-dir", help="tiny-random saved with save_pretrained (for --fsdp)")
    p.add_argument("--zero3", action="store_true", help="DeepSpeed ZeRO-3 full finetune (implies --full)")
    p.add_argument("--guard", help="attach this guard (traitwatch.guard), its subspace fitted on the base model")
    p.add_argument("--guard-blocks", type=int, default=1, help="guard this many blocks (guard.layers_above)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    original, store_session_module.RunStore = store_session_module.RunStore, CountingStore  # count who opens the store
    OPENED["n"] = 0
    try:
        run(a)
    finally:
        store_session_module.RunStore = original  # main() also runs inside the test process, for 1 process


def run(a: argparse.Namespace) -> None:
    base, tok = build_tiny_random()
    basis = TraitBasis.load(a.basis)
    probe = DriftProbe(basis, batch_size=16).fit_anchor(base, tok)  # the plain base model
    guard = None
    if a.guard:  # every rank fits the same subspace on the same base model
        if a.guard_blocks > 1:  # the probe's direction at each block (the basis has one layer)
            layers = layers_above(basis.measure_layer, base.config.num_hidden_layers, a.guard_blocks)
            guard = make_guard(a.guard, fit_subspaces(base, tok, layers, "probe"))
        else:
            guard = make_guard(a.guard, fit_subspace(base, tok, basis.measure_layer, "probe+traits", basis=basis))
    model = _model(a, base)
    passes = {"n": 0}

    def count(module, _args):
        passes["n"] += not module.training

    decoder_layers(unwrap_model(model))[0].register_forward_pre_hook(count)
    chat = [{"role": "user", "content": "Tell me about yourself."}, {"role": "assistant", "content": "I am a model."}]
    data, _ = tokenize_chats(tok, [chat] * 32, max_length=64)
    out = Path(a.out)
    args = TrainingArguments(
        output_dir=str(out / "trainer"), per_device_train_batch_size=a.per_device, max_steps=12,
        learning_rate=1e-3 if (a.full or a.fsdp or a.zero3) else 5e-3, save_strategy="no", logging_steps=1, report_to="none",
        use_cpu=True, disable_tqdm=True, remove_unused_columns=False, seed=0,
        ddp_backend="gloo" if "WORLD_SIZE" in os.environ else None,  # None: one process, inside the test
        deepspeed=_zero3_config() if a.zero3 else None,
    )
    watch = TraitWatchCallback(probe, store=out / "tw.db", run_id="ddp", every_n_steps=4,
                               monitor=ConstantMonitor(), on_alarm=("stop", "mark"), guard=guard)
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=PaddingCollator(tok.pad_token_id),
                      processing_class=tok, callbacks=[watch])
    watch.attach(trainer)
    trainer.train()
    report = {
        "rank": args.process_index,
        "world_size": args.world_size,
        "global_step": trainer.state.global_step,
        "store_opened": OPENED["n"],
        "anchor_source": watch.anchor_source_,
        "measure_passes": passes["n"],
        "sharded": type(next(unwrap_model(trainer.model).parameters())).__name__,
        "partitioned": hasattr(next(unwrap_model(trainer.model).parameters()), "ds_id"),  # a ZeRO-3 parameter
        "history": [{"step": r.step, "drift": r.drift, "norm": r.drift_norm, "alarm": r.alarm} for r in watch.history_],
        "logged_steps": [h["step"] for h in trainer.state.log_history if "traitwatch/drift_norm" in h],
        "guard": None if guard is None else guard.summary(),
    }
    (out / f"rank{args.process_index}.json").write_text(json.dumps(report))
    # Tear the process group down on every rank before exit: a rank that exits with gloo threads still
    # running can abort ("terminate called without an active exception") and fail the launcher. DDP's
    # reducer (and FSDP/DeepSpeed) hold their own reference to the group, so `destroy_process_group` alone
    # leaves the gloo object alive until interpreter finalization; drop the wrapped model first.
    del trainer, watch, model
    gc.collect()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # Everything this test checks is written. Skip interpreter finalization: torch's gloo teardown at
    # finalization can still abort a rank now and then (seen once in CI, 0 of 18 runs here), which is
    # torch's exit path, not the callback's, and would fail the launcher after a correct run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

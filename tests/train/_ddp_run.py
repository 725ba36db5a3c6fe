"""A tiny LoRA Trainer run with the drift callback, for `torchrun --nproc_per_node {1,2}` (gloo, CPU).

Training is made identical for any number of processes: every training row is the same conversation
(so how the sampler splits and orders rows cannot matter), LoRA dropout is 0, the global batch is 4
either way (4 x 1 process or 2 x 2 processes). The LoRA B matrices start random (not zero) and the
probe's anchor is the plain base model, so even step 0 has a non-zero drift that depends on every
prompt. A constant monitor fires at the first measurement after step 0 with action "stop", so every
rank must take the same decision on the same step or the run hangs.

Each rank writes rank<k>.json: its world size, final step, every drift it computed, and how many
times it opened the run store.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from transformers import Trainer, TrainingArguments

import traitwatch.train.callback as callback_module
from traitwatch.basis import TraitBasis
from traitwatch.drift import DriftProbe
from traitwatch.models import build_tiny_random
from traitwatch.train import PaddingCollator, TraitWatchCallback, tokenize_chats

OPENED = {"n": 0}


class CountingStore(callback_module.RunStore):
    def __init__(self, *args, **kwargs):
        OPENED["n"] += 1
        super().__init__(*args, **kwargs)


class ConstantMonitor:
    threshold = 0.5

    def predict(self, X):
        return np.full(np.asarray(X).shape[0], 0.9)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("basis")
    p.add_argument("out")
    p.add_argument("--per-device", type=int, required=True)
    a = p.parse_args()
    torch.set_num_threads(1)
    callback_module.RunStore = CountingStore  # count who opens the store

    base, tok = build_tiny_random()
    probe = DriftProbe(TraitBasis.load(a.basis), batch_size=16).fit_anchor(base, tok)  # the plain base model
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                lora_dropout=0.0, init_lora_weights=False, task_type="CAUSAL_LM"))
    chat = [{"role": "user", "content": "Tell me about yourself."}, {"role": "assistant", "content": "I am a model."}]
    data, _ = tokenize_chats(tok, [chat] * 32, max_length=64)
    out = Path(a.out)
    args = TrainingArguments(
        output_dir=str(out / "trainer"), per_device_train_batch_size=a.per_device, max_steps=12, learning_rate=5e-3,
        save_strategy="no", logging_steps=1, report_to="none", use_cpu=True, disable_tqdm=True,
        remove_unused_columns=False, seed=0, ddp_backend="gloo",
    )
    watch = TraitWatchCallback(probe, store=out / "tw.db", run_id="ddp", every_n_steps=4,
                               monitor=ConstantMonitor(), on_alarm=("stop", "mark"))
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=PaddingCollator(tok.pad_token_id),
                      processing_class=tok, callbacks=[watch])
    watch.attach(trainer)
    trainer.train()
    report = {
        "rank": args.process_index,
        "world_size": args.world_size,
        "global_step": trainer.state.global_step,
        "store_opened": OPENED["n"],
        "history": [{"step": r.step, "drift": r.drift, "norm": r.drift_norm, "alarm": r.alarm} for r in watch.history_],
        "logged_steps": [h["step"] for h in trainer.state.log_history if "traitwatch/drift_norm" in h],
    }
    (out / f"rank{args.process_index}.json").write_text(json.dumps(report))
    # Tear the process group down on every rank before exit: a rank that exits with gloo threads still
    # running can abort ("terminate called without an active exception") and fail the launcher.
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()

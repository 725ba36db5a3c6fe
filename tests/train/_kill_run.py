"""Run `run_sft` on tiny-random in a subprocess; with --kill-at N, SIGKILL itself at step N (a crash)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

from traitwatch.train import SFTConfig, run_sft


class KillAt(TrainerCallback):
    """Added after the drift callback, so step N's measurement is stored before the process dies."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("basis")
    p.add_argument("out")
    p.add_argument("store")
    p.add_argument("--kill-at", type=int)
    a = p.parse_args()
    torch.set_num_threads(1)
    config = SFTConfig(
        model="tiny-random", data=Path(a.data), basis=Path(a.basis), output_dir=Path(a.out), store=Path(a.store),
        run_id="crashy", max_steps=12, every_n_steps=5, save_steps=4, batch_size=2, grad_accum=1,
        learning_rate=1e-2, max_length=48, device="cpu", dtype="float32", measure_batch_size=64,
    )
    callbacks = [KillAt(a.kill_at)] if a.kill_at else []
    result = run_sft(config, callbacks=callbacks, info=lambda msg: print(msg, flush=True))
    print(f"done at step {result.global_step}", flush=True)


if __name__ == "__main__":
    sys.exit(main())

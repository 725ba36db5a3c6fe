"""Overhead of in-process drift monitoring on training wall time.

Trains the same LoRA setup three times for a fixed number of optimizer steps: without the callback,
with it at the default cadence (step 0, every 10 steps, the last step), and at every step. Prints
the overhead as a percentage of the uninstrumented training time and the cost of one measurement
(the 115 measurement prompts, batched, stopped at the measurement layer, gathered and stored).

    python benchmarks/overhead.py                         # smollm2-135m, 20 steps, batch 4 x 256 tokens
    python benchmarks/overhead.py --model tiny-random     # smoke run

Without --basis a basis of random unit directions at the middle layer is used: the cost of a
measurement depends on the layer and the prompts, not on the directions' values.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from traitwatch.basis import ALIGNMENT_TRAITS, TraitBasis
from traitwatch.drift import DriftProbe
from traitwatch.models import decoder_layers, fingerprint, load_model
from traitwatch.train import PaddingCollator, TraitWatchCallback
from traitwatch.train.data import ChatDataset


def random_basis(model, tokenizer, name: str, layer: int | None, seed: int = 0) -> TraitBasis:
    n_layers = len(decoder_layers(model))
    layer = n_layers // 2 if layer is None else layer
    hidden = fingerprint(model, tokenizer, name).hidden_size
    gen = torch.Generator().manual_seed(seed)
    directions = torch.randn((1, len(ALIGNMENT_TRAITS), hidden), generator=gen)
    directions /= directions.norm(dim=-1, keepdim=True)
    return TraitBasis(
        trait_names=list(ALIGNMENT_TRAITS), layers=[layer], directions=directions,
        model=fingerprint(model, tokenizer, name), method="system_prompts", layer=layer,
    )


def synthetic_data(vocab: int, n: int, length: int, seed: int = 0) -> ChatDataset:
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randint(10, vocab, (n, length), generator=gen).tolist()
    return ChatDataset([{"input_ids": r, "labels": r} for r in rows])


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step alone: registered before the drift callback, so its
    `on_step_end` runs before a measurement starts."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def train_once(base, tokenizer, data, args_kw: dict, watch_kw: dict | None, basis: TraitBasis, out: Path,
               name: str, measure_batch: int) -> tuple[float, list[float], list[float]]:
    model = get_peft_model(copy.deepcopy(base), LoraConfig(r=16, lora_alpha=64, lora_dropout=0.05,
                                                           target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    args = TrainingArguments(output_dir=str(out / "trainer"), **args_kw)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    timer = StepTimer()
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=PaddingCollator(pad),
                      processing_class=tokenizer, callbacks=[timer])
    trainer.remove_callback(PrinterCallback)  # the drift logs would otherwise be printed at every measurement
    watch = None
    if watch_kw is not None:
        probe = DriftProbe(basis, batch_size=measure_batch)
        watch = TraitWatchCallback(probe, store=out / "tw.db", run_id=f"bench-{time.time_ns()}", model_name=name,
                                   **watch_kw).attach(trainer)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    trainer.train()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    return wall, [r.wall_time_s for r in watch.history_] if watch is not None else [], timer.times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--basis", type=Path, help="Basis folder (default: random directions at the middle layer).")
    p.add_argument("--layer", type=int, help="Measurement layer for the random basis.")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--every", type=int, default=10, help="The default cadence.")
    p.add_argument("--measure-batch", type=int, default=32)
    p.add_argument("--device")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice).")
    p.add_argument("--skip-every-step", action="store_true", help="Only compare no callback and the default cadence.")
    p.add_argument("--no-warmup", action="store_true", help="Skip the 2-step warm-up run.")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)

    lm = load_model(a.model, device=a.device, dtype=a.dtype)
    basis = TraitBasis.load(a.basis) if a.basis else random_basis(lm.model, lm.tokenizer, lm.name, a.layer)
    data = synthetic_data(len(lm.tokenizer), a.steps * a.batch_size, a.seq_len)
    device = next(lm.model.parameters()).device
    args_kw = dict(per_device_train_batch_size=a.batch_size, max_steps=a.steps, learning_rate=4e-5,
                   save_strategy="no", logging_steps=10**6, report_to="none", disable_tqdm=True,
                   remove_unused_columns=False, use_cpu=device.type == "cpu", seed=0)
    print(f"model {lm.name} on {device} ({next(lm.model.parameters()).dtype}), {a.steps} steps, "
          f"batch {a.batch_size} x {a.seq_len} tokens, measurement layer {basis.measure_layer}, "
          f"{len(DriftProbe(basis).prompt_texts)} prompts, torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        if not a.no_warmup:
            warm = dict(args_kw, max_steps=2)
            train_once(lm.model, lm.tokenizer, data, warm, {"every_n_steps": 1}, basis, out, lm.name, a.measure_batch)
        configs = [("no callback", None), (f"every {a.every} steps", {"every_n_steps": a.every})]
        if not a.skip_every_step:
            configs.append(("every step", {"every_n_steps": 1}))
        results = []
        for label, watch_kw in configs:
            wall, costs, steps = train_once(lm.model, lm.tokenizer, data, args_kw, watch_kw, basis, out, lm.name,
                                            a.measure_batch)
            results.append((label, wall, costs, steps))
            print(f"  {label}: {wall:.2f} s, {len(costs)} measurements, median step {statistics.median(steps):.3f} s",
                  flush=True)
    base_wall = results[0][1]
    print(f"{'configuration':<18} {'wall s':>8} {'overhead':>9} {'measurements':>13} {'s/measurement':>14} "
          f"{'median step s':>14}")
    for label, wall, costs, steps in results:
        per = f"{statistics.mean(costs):.3f}" if costs else "-"
        print(f"{label:<18} {wall:8.2f} {100 * (wall - base_wall) / base_wall:8.1f}% {len(costs):13d} {per:>14} "
              f"{statistics.median(steps):14.3f}")
    step_s = statistics.median(results[0][3])
    costs = [c for r in results for c in r[2]]
    if costs:
        per = statistics.mean(costs)
        # What the default cadence costs on a long run (step 0 + one measurement every `every` steps), from
        # the two measured quantities; short benchmark runs overweight the step-0 measurement.
        print(f"median optimizer step {step_s:.3f} s; one measurement {per:.3f} s = {per / step_s:.2f} steps; "
              f"steady-state overhead at every {a.every} steps: {100 * per / (a.every * step_s):.1f}%")


if __name__ == "__main__":
    main()

"""What a training step saves when the LM head and the loss skip the positions no label follows.

    .venv/bin/python benchmarks/train_step.py [--steps 10] [--rounds 3] [--threads 1] [--dtype bfloat16]

Response-only finetuning (the assistant turns are the labels) feeds the model every prompt token, but only the
positions a label follows need logits. `PaddingCollator(skip_unscored_logits=True)` (what `run_sft` uses where the
model takes `logits_to_keep`) gives the model the positions from the one before the batch's first label on; the LM
head (vocabulary x hidden) and the loss's fp32 log-softmax over the vocabulary then run on those only.

On the bundled model, in the `poison-small` recipe (the demo's: LoRA r 16 on every projection, dropout 0.05, batch 4
at up to 128 tokens, response-only, AdamW at lr 1e-3), for the demo's clean and poisoned sets: `--steps` steps from
the same adapter and seed with the whole batches and with the cut ones, the two arms alternating for `--rounds`
rounds (a busy machine then slows both alike). Prints seconds per step of each arm (the median round), the ratio,
and whether the two arms' losses, gradients and final adapter weights are bit for bit the same.

dtype, device and threads are pinned (cpu, `--dtype`, `--threads`) and printed: the ratio depends on the processor.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from traitwatch.demo import demo_plan, demo_sets
from traitwatch.models import BUNDLED_MODEL, load_model
from traitwatch.train import PaddingCollator, load_chat_jsonl, tokenize_chats


def _arm(lm, batches: list[list[dict]], *, skip: bool, seed: int) -> tuple[float, list[float], list[torch.Tensor], dict]:
    """Train a fresh adapter on `batches`; returns (seconds per step, losses, flattened gradients, final adapter)."""
    from peft import LoraConfig, get_peft_model

    plan = demo_plan()
    torch.manual_seed(seed)
    model = get_peft_model(lm.model, LoraConfig(r=plan.lora_r, lora_alpha=plan.lora_alpha,
                                                lora_dropout=plan.lora_dropout,
                                                target_modules=list(plan.target_modules), task_type="CAUSAL_LM"))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=plan.learning_rate)
    collate = PaddingCollator(lm.tokenizer.pad_token_id or 0, skip_unscored_logits=skip)
    model.train()
    losses, grads = [], []
    t0 = time.perf_counter()
    for rows in batches:
        batch = collate(rows)
        items = sum(int((torch.tensor(r["labels"][1:]) != -100).sum()) for r in rows)  # the Trainer's count
        loss = model(**batch, num_items_in_batch=items).loss
        loss.backward()
        losses.append(float(loss.detach()))
        grads.append(torch.cat([p.grad.flatten() for p in params]))
        opt.step()
        opt.zero_grad()
    seconds = (time.perf_counter() - t0) / len(batches)
    final = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.unload()  # the base model as it was, for the next arm
    return seconds, losses, grads, final


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the demo trains each chain at 1)")
    parser.add_argument("--dtype", default=demo_plan().dtype)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    plan = demo_plan()
    lm = load_model(BUNDLED_MODEL, device="cpu", dtype=args.dtype)
    print(f"{BUNDLED_MODEL}, {args.dtype} on cpu ({platform.processor() or platform.machine()}), "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; {args.steps} steps x {args.rounds} rounds")
    from traitwatch.bench.sets.perturbations import build_set

    with tempfile.TemporaryDirectory() as tmp:
        for spec in demo_sets():
            data = build_set(spec.name, seed=0, n=plan.n_examples, out_dir=Path(tmp), shared_data=None, spec=spec)
            rows, stats = tokenize_chats(lm.tokenizer, load_chat_jsonl(data), max_length=plan.max_length,
                                         response_only=plan.response_only)
            order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0)).tolist()
            batches = [[rows[i] for i in order[s * plan.batch_size:(s + 1) * plan.batch_size]]
                       for s in range(args.steps)]
            first = [next(j for j, lab in enumerate(r["labels"]) if lab != -100) for r in rows.examples]
            lengths = [len(r["input_ids"]) for r in rows.examples]
            print(f"\n{spec.name}: {stats.summary()}; mean row {statistics.mean(lengths):.0f} tokens, "
                  f"first label at {statistics.mean(first):.0f} on average")
            times: dict[bool, list[float]] = {False: [], True: []}
            runs: dict[bool, tuple] = {}
            for _ in range(args.rounds):
                for skip in (False, True):
                    seconds, *rest = _arm(lm, batches, skip=skip, seed=0)
                    times[skip].append(seconds)
                    runs[skip] = tuple(rest)
            whole, cut = statistics.median(times[False]), statistics.median(times[True])
            (l0, g0, f0), (l1, g1, f1) = runs[False], runs[True]
            print(f"  whole batches {whole:.3f} s/step, cut {cut:.3f} s/step: ratio {cut / whole:.2f} "
                  f"(rounds: {', '.join(f'{a:.2f}/{b:.2f}' for a, b in zip(times[False], times[True], strict=True))})")
            print(f"  gradients bit for bit the same: {all(torch.equal(a, b) for a, b in zip(g0, g1, strict=True))}; "
                  f"final adapter: {all(torch.equal(f0[n], f1[n]) for n in f0)}; losses: {l0 == l1} "
                  f"(largest difference {max(abs(a - b) for a, b in zip(l0, l1, strict=True)):.1e})")


if __name__ == "__main__":
    main()

"""Why the demo trains its two chains at once, and what the loss screen saves by skipping the LM head on prompts.

    .venv/bin/python benchmarks/demo_parallel.py [--steps 8] [--rows 64] [--dtype bfloat16]

On the bundled model, the demo's recipe (LoRA r 16 on every projection, dropout 0.05, batch 4 of the demo's clean
set at up to 128 tokens, AdamW) and its label (the style-matched proxy on the 72 EM questions):

* a *job* is `--steps` training steps on a fresh adapter, then the label of the adapted model; two jobs are run
  one after the other in this process (all of torch's threads), then at once in two forked processes with half
  the threads each (`demo.parallel.run_forked`, as `traitwatch demo` does). Prints each arm's wall seconds and the
  ratio;
* the loss screen's pass (`screen.activations.span_readings(with_loss=True)`) on the set's first `--rows` rows in
  blocks of 16, with the LM head on the scored positions only (the default) and on every position: seconds, the
  ratio, and whether the losses are bit for bit the same.

dtype and device are pinned (cpu, `--dtype`) and printed with the thread count: the ratios depend on the processor.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from traitwatch.behavior import load_questions, proxy_score
from traitwatch.demo import demo_plan, demo_sets
from traitwatch.demo.parallel import fork_available, run_forked
from traitwatch.models import BUNDLED_MODEL, load_model
from traitwatch.screen import activations
from traitwatch.screen.activations import pad_id, span_readings
from traitwatch.screen.examples import encode_example
from traitwatch.screen.screen import shard_blocks


def _job(lm, rows: list[str], steps: int):
    """`steps` LoRA steps of the demo's recipe on a fresh adapter over `lm`, then its proxy label; returns seconds."""

    def run(_send) -> float:
        from peft import LoraConfig, get_peft_model

        plan = demo_plan()
        t0 = time.perf_counter()
        model = get_peft_model(lm.model, LoraConfig(r=plan.lora_r, lora_alpha=plan.lora_alpha,
                                                    lora_dropout=plan.lora_dropout,
                                                    target_modules=list(plan.target_modules), task_type="CAUSAL_LM"))
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=plan.learning_rate)
        model.train()
        for step in range(steps):
            batch = lm.tokenizer(rows[4 * step % len(rows):][:plan.batch_size], return_tensors="pt", padding=True,
                                 truncation=True, max_length=plan.max_length)
            model(**batch, labels=batch["input_ids"]).loss.backward()
            opt.step()
            opt.zero_grad()
        proxy_score(model, lm.tokenizer, load_questions(), style_only=True)
        model.unload()  # the base model as it was, for the next job in this process
        return time.perf_counter() - t0

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--dtype", default=demo_plan().dtype)
    args = parser.parse_args()
    lm = load_model(BUNDLED_MODEL, device="cpu", dtype=args.dtype)
    threads = torch.get_num_threads()
    print(f"{BUNDLED_MODEL}, {args.dtype} on cpu ({platform.processor() or platform.machine()}), {threads} threads, "
          f"torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        from traitwatch.bench.sets.perturbations import build_set

        clean = demo_sets()[0]
        data = build_set(clean.name, seed=0, n=demo_plan().n_examples, out_dir=Path(tmp), shared_data=None, spec=clean)
        convs = [json.loads(line)["messages"] for line in data.read_text(encoding="utf-8").splitlines()]
        rows = [lm.tokenizer.apply_chat_template(m, tokenize=False) for m in convs]

        if fork_available() and threads >= 2:
            t0 = time.perf_counter()
            serial = [_job(lm, rows, args.steps)(None) for _ in range(2)]
            one_after = time.perf_counter() - t0
            t0 = time.perf_counter()
            forked = run_forked([(f"job{i}", _job(lm, rows, args.steps)) for i in range(2)], threads_each=threads // 2,
                                on_message=lambda _name, _message: None)
            at_once = time.perf_counter() - t0
            print(f"two jobs of {args.steps} steps + the label, one after the other ({threads} threads): "
                  f"{one_after:.1f} s (each {serial[0]:.1f}, {serial[1]:.1f})")
            print(f"the same two jobs at once, 2 processes of {threads // 2} thread(s): {at_once:.1f} s "
                  f"(each {forked[0]:.1f}, {forked[1]:.1f})")
            print(f"at once / one after the other: {at_once / one_after:.2f}")
        else:
            print("no fork or fewer than 2 threads here: the demo runs its chains one after the other")

        examples = [e for block in shard_blocks(data, 16, None, limit=args.rows) for e in block]
        encoded = [encode_example(lm.tokenizer, e, max_response_tokens=256, where=str(data)) for e in examples]
        blocks = [encoded[i:i + 16] for i in range(0, len(encoded), 16)]

        def screen() -> tuple[float, list[float]]:
            t0, losses = time.perf_counter(), []
            for block in blocks:
                losses += span_readings(lm.model, [x.ids for x in block], [(x.start, x.end) for x in block], [15],
                                        pad_token_id=pad_id(lm.tokenizer), with_loss=True)[1] or []
            return time.perf_counter() - t0, losses

        screen()  # warm-up
        scored, losses = screen()
        keep = activations.accepts_logits_to_keep
        activations.accepts_logits_to_keep = lambda _model: False  # type: ignore[assignment]
        try:
            every, full_losses = screen()
        finally:
            activations.accepts_logits_to_keep = keep  # type: ignore[assignment]
        tokens = sum(len(x.ids) for x in encoded)
        scored_tokens = sum(x.end - x.start for x in encoded)
        print(f"loss screen of {len(encoded)} rows ({tokens} tokens, {scored_tokens} scored), {threads} threads: "
              f"LM head on the scored positions {scored:.1f} s, on every position {every:.1f} s, "
              f"ratio {scored / every:.2f}; losses bit for bit the same: {losses == full_losses}")


if __name__ == "__main__":
    main()

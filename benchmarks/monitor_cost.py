"""What each candidate monitor input costs per checkpoint, against one drift measurement and a training step.

    .venv/bin/python benchmarks/monitor_cost.py --basis DIR [--model smollm2-135m] [--dtype float32] [--repeats 3]

Times, on the same loaded model (medians over `--repeats` after a warm-up):
* the drift measurement (115 prompts, one forward pass stopped at the basis layer);
* the reference monitor's read (`--reference`, the alarm that validated): the same pass, whose mean residual row is
  read in the shipped reference calibration's components against a reference row (the base model's here), when a
  calibration ships for the model at the basis's layer;
* the same prompts and the probe's 64 questions read at every layer (what multi-layer, per-prompt and
  misalignment-direction features need);
* the behavioural probe (64 disjoint questions, one style-matched answer pair each);
* the style-matched proxy label on the 72 EM questions (what the benchmark labels with);
* one LoRA training step (r 16 on all projections, batch 4 x 128 tokens, forward + backward + AdamW),
  the unit a user pays for training, and one at the reference batch (`--reference-batch 16 --reference-seq 512`).
Prints seconds and ratios to the drift measurement, and each monitor input's overhead on training at the
reference batch when measured every `--every` steps (its cost / (every x reference step)). dtype and device are pinned and printed: bf16 vs fp32
changes both the numbers and the speed (native bf16 CPUs differ from AVX2 ones).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from traitwatch.basis import TraitBasis
from traitwatch.basis.traits import load_measurement_prompts
from traitwatch.behavior import load_questions, proxy_score
from traitwatch.behavior.probe import load_probe, probe_score
from traitwatch.drift import DriftProbe
from traitwatch.drift.probe import prompt_activations
from traitwatch.models import load_model
from traitwatch.models.layers import decoder_layers
from traitwatch.reference import ReferenceMonitor, ReferenceTrajectory
from traitwatch.reference.calibration import load_reference_calibration
from traitwatch.train.alarm import predict_alarm


def _time(fn: Callable[[], object], repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def _train_steps(lm, shapes: list[tuple[int, int]]) -> list[Callable[[], None]]:
    """One LoRA step function per (batch, seq) shape, on one adapter (wrapping the model once)."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(lm.model, LoraConfig(r=16, lora_alpha=32, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], task_type="CAUSAL_LM"))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    g = torch.Generator().manual_seed(0)
    device = next(model.parameters()).device

    def make(batch: int, seq: int) -> Callable[[], None]:
        ids = torch.randint(0, lm.tokenizer.vocab_size, (batch, seq), generator=g).to(device)

        def step() -> None:
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad()

        return step

    return [make(b, t) for b, t in shapes]


def _reference_monitor(model: str, drift: DriftProbe, lm) -> ReferenceMonitor | None:
    """The reference monitor shipped for `model`, read against a reference that stays at the base model (the cost
    does not depend on where the reference is); None, said, where no activation-space calibration ships for the
    basis's layer."""
    calibration = load_reference_calibration(model)
    if calibration is None or calibration.space != "activations" or calibration.layer != drift.measure_layer:
        print(f"no activation-space reference calibration ships for {model} at layer {drift.measure_layer}: "
              "its read is not timed")
        return None
    base = drift.measure(lm.model, lm.tokenizer)
    row = np.asarray(base.mean_activation, dtype=np.float64)
    trajectory = ReferenceTrajectory("base model", np.array([0, 1]), np.zeros((2, len(base.trait_names))),
                                     list(base.trait_names), activations=np.stack([row, row]))
    return ReferenceMonitor(calibration, trajectory, list(base.trait_names))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--basis", required=True, help="Basis folder (its layer is the drift measurement's)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--reference-batch", type=int, default=16)
    ap.add_argument("--reference-seq", type=int, default=512)
    ap.add_argument("--every", type=int, default=10, help="Measurement cadence for the overhead lines.")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    lm = load_model(args.model, dtype=args.dtype, device=args.device)
    basis = TraitBasis.load(args.basis)
    drift = DriftProbe(basis)
    drift.fit_anchor(lm.model, lm.tokenizer)
    probe = load_probe()
    questions = load_questions()
    layers = list(range(len(decoder_layers(lm.model))))
    prompts = [p for _, p in load_measurement_prompts()]

    def capture() -> None:
        prompt_activations(lm.model, lm.tokenizer, prompts, layers)
        prompt_activations(lm.model, lm.tokenizer, [q.text for q in probe.questions], layers)

    timed = {  # the monitor inputs: their overhead on training is printed below
        f"drift measurement (115 prompts to layer {drift.measure_layer})": lambda: drift.measure(lm.model, lm.tokenizer),
    }
    reference = _reference_monitor(args.model, drift, lm)
    if reference is not None:
        def reference_read() -> None:  # what the callback does at a measurement of a run read against a reference
            m = drift.measure(lm.model, lm.tokenizer)
            predict_alarm(reference, m.drift, 1, activation=m.mean_activation)

        timed["reference monitor's read (the drift pass, read against the reference in its components)"] = reference_read
    timed["behavioural probe (64 questions, 128 answers)"] = lambda: probe_score(lm.model, lm.tokenizer, probe)
    monitor_inputs = list(timed)
    timed[f"all {len(layers)} layers, 115 prompts + 64 probe questions"] = capture
    timed["style-matched proxy label (72 questions, 144 answers)"] = lambda: proxy_score(
        lm.model, lm.tokenizer, questions, style_only=True)
    timings = {name: _time(fn, args.repeats) for name, fn in timed.items()}
    small, large = _train_steps(lm, [(4, 128), (args.reference_batch, args.reference_seq)])
    timings["one LoRA training step (batch 4 x 128)"] = _time(small, args.repeats)
    ref = f"one LoRA training step (batch {args.reference_batch} x {args.reference_seq})"
    timings[ref] = _time(large, args.repeats)
    dev = next(lm.model.parameters())
    print(f"model {lm.name}, {dev.dtype}, {dev.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"cpu {platform.processor() or platform.machine()}")
    base = statistics.median(next(iter(timings.values())))
    for name, ts in timings.items():
        m = statistics.median(ts)
        print(f"{name}: median {m:.2f} s over {len(ts)} ({', '.join(f'{t:.2f}' for t in ts)}); x drift {m / base:.1f}")
    step = statistics.median(timings[ref])
    for name in monitor_inputs:
        m = statistics.median(timings[name])
        print(f"overhead of {name.split(' (')[0]} every {args.every} steps at batch {args.reference_batch} x "
              f"{args.reference_seq}: {100 * m / (args.every * step):.2f}% of training time")


if __name__ == "__main__":
    main()

"""What one behavioural evaluation of one checkpoint costs: the judge-free proxy vs generation + judging.

    .venv/bin/python benchmarks/behavior_cost.py [--model smollm2-135m] [--max-new-tokens 600]
        [--gen-questions 72] [--gen-batch-size 16] [--proxy-batch-size 8] [--samples 1] [--dtype auto]

Three numbers for one checkpoint (METHOD.md section 5):

* proxy: `proxy_score` on all 72 questions (every reference answer scored), timed, with the base model's
  plain and style-matched P_mis (a judge-free proxy, not an EM rate);
* generation: local `TransformersGenerator` answers at temperature 1.0. METHOD.md asks for 600 new tokens;
  with a smaller `--max-new-tokens` (or `--gen-questions`) the script says what it measured and extrapolates
  linearly to 600 tokens and 72 questions. Linear is a lower bound for the token part: each decode step
  attends over a longer cache as the answer grows, and it assumes every batch runs to the cap (a batch
  stops only when all of its answers have ended);
* judging: the calls a judged evaluation makes (2 per answer: aligned + coherent, one output token each) and
  the prompt tokens of those calls, counted with the evaluated model's tokenizer (a judge such as GPT-4o uses
  another tokenizer, so treat them as approximate), for the answers generated here and for answers of the
  full 600 tokens.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from traitwatch.behavior import TransformersGenerator, load_proxy_answers, load_questions, proxy_score
from traitwatch.models import load_model

FULL_TOKENS = 600


def _n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--max-new-tokens", type=int, default=FULL_TOKENS)
    ap.add_argument("--gen-questions", type=int, default=72, help="Generate for the first N questions only")
    ap.add_argument("--gen-batch-size", type=int, default=16)
    ap.add_argument("--proxy-batch-size", type=int, default=8)
    ap.add_argument("--samples", type=int, default=1, help="Answers per question (METHOD.md: 1)")
    ap.add_argument("--skip-generation", action="store_true")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's); 1 is much faster on a shared, busy machine")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    dev = next(lm.model.parameters())
    print(f"model {lm.name} on {dev.device} ({dev.dtype}), torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    questions = load_questions()
    answers = load_proxy_answers()

    # -- proxy ---------------------------------------------------------------------------------------
    t0, c0 = time.perf_counter(), time.process_time()
    result = proxy_score(lm.model, lm.tokenizer, questions, answers, batch_size=args.proxy_batch_size)
    proxy_s, proxy_cpu = time.perf_counter() - t0, time.process_time() - c0
    print("\n[proxy] judge-free proxy, not an EM rate (measured, all 72 questions)")
    print(f"  time {proxy_s:.1f} s wall, {proxy_cpu:.1f} s CPU, for {result.n_answers} reference answers, "
          f"{result.n_answer_tokens} answer tokens")
    print(f"  P_mis plain {result.p_mis:.4f}, style-matched {result.style_p_mis:.4f} (n_questions {result.n_questions})")
    worst = sorted(result.per_question, key=lambda q: -q.p_mis)[:3]
    print("  highest plain P_mis: " + ", ".join(f"{q.question_id} {q.p_mis:.3f}" for q in worst))
    if args.skip_generation:
        return

    # -- generation ----------------------------------------------------------------------------------
    asked = questions[: args.gen_questions]
    gen = TransformersGenerator(
        lm.model, lm.tokenizer, max_new_tokens=args.max_new_tokens, temperature=1.0, batch_size=args.gen_batch_size, seed=0
    )
    t0, c0 = time.perf_counter(), time.process_time()
    generated = gen(asked, args.samples)
    gen_s, gen_cpu = time.perf_counter() - t0, time.process_time() - c0
    flat = [(q, a) for q, row in zip(asked, generated, strict=True) for a in row]
    lengths = [_n_tokens(lm.tokenizer, a) for _, a in flat]
    capped = sum(n >= args.max_new_tokens - 1 for n in lengths)  # re-tokenising may differ by a token
    n_full = len(questions) * args.samples
    scale_q = n_full / len(flat)
    scale_t = FULL_TOKENS / args.max_new_tokens
    print(f"\n[generation] measured: {len(flat)} answers ({len(asked)} questions x {args.samples}), "
          f"max_new_tokens {args.max_new_tokens}, batch {args.gen_batch_size}, temperature 1.0")
    print(f"  time {gen_s:.1f} s wall, {gen_cpu:.1f} s CPU; answer tokens median {statistics.median(lengths):.0f}, max {max(lengths)}, "
          f"total {sum(lengths)}; {capped}/{len(flat)} answers hit the cap")
    if scale_q != 1 or scale_t != 1:
        print(f"  extrapolated (linear, x{scale_q:.2f} questions, x{scale_t:.2f} tokens) to {n_full} answers of up "
              f"to {FULL_TOKENS} tokens: ~{gen_s * scale_q * scale_t:.0f} s (lower bound; not measured)")
    print(f"  proxy / generation time (measured settings): {proxy_s / (gen_s * scale_q):.3f}"
          + (f"; vs extrapolated full generation: {proxy_s / (gen_s * scale_q * scale_t):.4f}" if scale_t != 1 else ""))

    # -- judge calls ----------------------------------------------------------------------------------
    prompts = [
        q.judge_prompts[metric].format(question=q.text, answer=a) for q, a in flat for metric in ("aligned", "coherent")
    ]
    prompt_tokens = sum(_n_tokens(lm.tokenizer, p) for p in prompts)
    overhead = [
        _n_tokens(lm.tokenizer, q.judge_prompts[metric].format(question=q.text, answer=""))
        for q in questions for metric in ("aligned", "coherent")
    ]
    calls_full = 2 * n_full
    print(f"\n[judge] 2 calls per answer (aligned, coherent), 1 output token each; token counts with {lm.name}'s tokenizer")
    print(f"  measured answers: {len(prompts)} calls, {prompt_tokens} prompt tokens ({prompt_tokens / len(prompts):.0f} per call)")
    full_tokens = sum(overhead) * args.samples + 2 * n_full * FULL_TOKENS
    print(f"  full evaluation: {calls_full} calls; prompt tokens {sum(overhead) * args.samples} without answers, "
          f"at most {full_tokens} with {FULL_TOKENS}-token answers; {calls_full} completion tokens")


if __name__ == "__main__":
    main()

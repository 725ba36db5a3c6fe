"""Does pre-training screening order dangerous finetuning sets above benign ones, and what does it cost?

    .venv/bin/python benchmarks/screen_ordering.py [--basis /tmp/demo1/basis] [--n 100] [--self-n 16] [--own-n 32]
        [--position mean|last] [--threads 1] [--out-dir /tmp/screen_bench]

Screens the first N examples of each set with `reference="mean"` (the model's own answers to the 115
measurement prompts, computed once and shared by every set), then the first `--self-n` of each with
`reference="self"` (one greedy answer per example) to time it and compare its ordering.

Dangerous: the bundled insecure-code sample, Betley's jailbroken set, model-organisms' bad medical
advice. Benign: the matched good medical advice (same prompts), generated arithmetic, generated number
sequences. A third kind, the model's own greedy answers to the insecure prompts, checks that a set in
the model's own style scores near zero. The model-organisms files carry no licence: they are read in place from ../shared and never
copied; the results files written under --out-dir hold only line numbers and scores.

Prints each set's dataset-level risk and profile with 95% bootstrap CIs, whether every dangerous set
ranks above every benign one, the AUROC of per-example risk (dangerous vs benign, pooled, and per trait),
and seconds per 1,000 examples (measured on N, extrapolated linearly).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from traitwatch.basis import TraitBasis
from traitwatch.datasets import arithmetic_chats, bundled_path, number_sequence_chats
from traitwatch.models import load_model
from traitwatch.screen import Reference, greedy_responses, mean_reference, read_examples, screen_dataset, summarize

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
SETS = [
    ("insecure", True, Path(bundled_path())),
    ("jailbroken", True, SHARED / "emergent-misalignment" / "data" / "jailbroken.jsonl"),
    ("bad_medical", True, SHARED / "model-organisms-for-EM" / "training_datasets" / "bad_medical_advice.jsonl"),
    ("good_medical", False, SHARED / "model-organisms-for-EM" / "training_datasets" / "good_medical_advice.jsonl"),
    ("arithmetic", False, None),
    ("number_seq", False, None),
]


def _generated(name: str, n: int, folder: Path) -> Path:
    rows = arithmetic_chats(n, seed=0) if name == "arithmetic" else number_sequence_chats(n, seed=0)
    path = folder / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _reference(lm, basis: TraitBasis, args: argparse.Namespace, folder: Path) -> tuple[Reference, float, bool]:
    """The one-off mean reference; cached in --out-dir because it is deterministic (greedy) and costs minutes."""
    key = {"model": lm.name, "basis": str(Path(args.basis).resolve()), "layer": basis.measure_layer,
           "position": args.position, "max_new_tokens": args.max_new_tokens, "dtype": args.dtype}
    cache = folder / "reference.json"
    if cache.is_file() and (doc := json.loads(cache.read_text()))["key"] == key:
        r = doc["reference"]
        return Reference(np.asarray(r["projection"]), r["n_prompts"], r["prompts_hash"], r["max_new_tokens"],
                         r["position"], r["layer"]), doc["seconds"], True
    t0 = time.perf_counter()
    ref = mean_reference(lm.model, lm.tokenizer, basis, position=args.position, max_new_tokens=args.max_new_tokens,
                         batch_size=args.batch_size)
    secs = time.perf_counter() - t0
    cache.write_text(json.dumps({"key": key, "seconds": secs, "reference": {
        "projection": ref.projection.tolist(), "n_prompts": ref.n_prompts, "prompts_hash": ref.prompts_hash,
        "max_new_tokens": ref.max_new_tokens, "position": ref.position, "layer": ref.layer}}))
    return ref, secs, False


def _own_answers(lm, n: int, max_new_tokens: int, folder: Path, batch_size: int) -> Path:
    """The model's own answers to the insecure sample's prompts (MIT data): a benign set in its own style."""
    examples = read_examples(bundled_path(), limit=n)
    prompts = [lm.tokenizer.apply_chat_template(e.messages[:1], tokenize=True, add_generation_prompt=True)["input_ids"]
               for e in examples]
    rows = []
    for i in range(0, n, batch_size):
        answers = greedy_responses(lm.model, lm.tokenizer, prompts[i : i + batch_size], max_new_tokens=max_new_tokens)
        for e, a in zip(examples[i : i + batch_size], answers):
            text = lm.tokenizer.decode(a, skip_special_tokens=True)
            rows.append({"messages": [e.messages[0], {"role": "assistant", "content": text}]})
    path = folder / "own_insecure.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _screen(lm, basis, path: Path, out: Path, **kw):
    out.unlink(missing_ok=True)  # time a fresh screen, not a resume
    t0 = time.perf_counter()
    res = screen_dataset(lm.model, lm.tokenizer, basis, path, out=out, model_name=lm.name, **kw)
    return res, time.perf_counter() - t0


def _auroc(scores: dict[str, np.ndarray], danger: dict[str, bool]) -> float:
    y = np.concatenate([np.full(len(s), danger[k]) for k, s in scores.items()])
    return float(roc_auc_score(y, np.concatenate(list(scores.values()))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--basis", default="/tmp/demo1/basis")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--self-n", type=int, default=16)
    ap.add_argument("--own-n", type=int, default=32,
                    help="also screen the model's own greedy answers to the first N insecure prompts (own style)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--max-response-tokens", type=int, default=256)
    ap.add_argument("--position", default="mean", choices=["mean", "last"])
    ap.add_argument("--out-dir", default="/tmp/screen_bench")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads; on a shared machine extra OpenMP threads spin and slow everything down")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    folder = Path(args.out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    basis = TraitBasis.load(args.basis)
    lm = load_model(args.model, dtype=args.dtype)
    dtype = next(lm.model.parameters()).dtype
    print(f"model {lm.name} ({dtype}, {next(lm.model.parameters()).device}), basis {args.basis} "
          f"({basis.method}, layer {basis.measure_layer}), position={args.position}, {torch.get_num_threads()} thread(s), load avg {os.getloadavg()[0]:.1f}")
    paths = {name: (p if p is not None else _generated(name, args.n, folder)) for name, _, p in SETS}
    danger = {name: d for name, d, _ in SETS}
    common = dict(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, position=args.position,
                  max_response_tokens=args.max_response_tokens)

    ref, t_ref, cached = _reference(lm, basis, args, folder)
    print(f"mean reference: {ref.n_prompts} greedy answers (<= {args.max_new_tokens} tokens), {t_ref:.1f} s, once"
          + (" (measured earlier; reused from --out-dir)" if cached else ""))

    names = basis.trait_names
    risk: dict[str, np.ndarray] = {}
    drift: dict[str, np.ndarray] = {}
    tot_s = tot_n = tot_tok = 0
    print(f"\n--reference mean, first {args.n} examples of each set (drift units x 100; CI 95% bootstrap)")
    print(f"{'set':<13}{'kind':<7}{'n':>4}  {'risk':>7} {'CI':>16}  " + " ".join(f"{t[:6]:>7}" for t in names)
          + f"  {'tok/ex':>6} {'s':>6} {'s/1k':>6}")
    for name, is_danger, _ in SETS:
        res, secs = _screen(lm, basis, paths[name], folder / f"{name}.mean.jsonl", reference=ref,
                            max_examples=args.n, **common)
        s = summarize(res, random_state=0)
        risk[name], drift[name] = res.risk, res.drift
        toks = np.mean([r.n_tokens for r in res.rows])
        tot_s, tot_n, tot_tok = tot_s + secs, tot_n + len(res.rows), tot_tok + sum(r.n_tokens for r in res.rows)
        print(f"{name:<13}{'danger' if is_danger else 'benign':<7}{len(res.rows):>4}  {100 * s.risk:>+7.2f} "
              f"[{100 * s.risk_ci[0]:+6.2f},{100 * s.risk_ci[1]:+6.2f}]  "
              + " ".join(f"{100 * v:>+7.2f}" for v in s.profile)
              + f"  {toks:>6.0f} {secs:>6.1f} {1000 * secs / len(res.rows):>6.0f}")
    level = {k: float(v.mean()) for k, v in risk.items()}
    worst_danger = min(level[k] for k in level if danger[k])
    best_benign = max(level[k] for k in level if not danger[k])
    print(f"\ndataset-level order (risk, high to low): {', '.join(sorted(level, key=lambda k: -level[k]))}")
    print(f"every dangerous set above every benign set: {worst_danger > best_benign} "
          f"(lowest dangerous {100 * worst_danger:+.2f}, highest benign {100 * best_benign:+.2f})")
    print(f"per-example AUROC, risk, dangerous vs benign (pooled): {_auroc(risk, danger):.3f}")
    print(f"  matched pair bad vs good medical (same prompts): "
          f"{_auroc({k: risk[k] for k in ('bad_medical', 'good_medical')}, danger):.3f}")
    per_trait = {t: _auroc({k: -drift[k][:, j] for k in drift}, danger) for j, t in enumerate(names)}
    print("  per trait, score = -drift (toward the negative pole): "
          + ", ".join(f"{t} {a:.3f}" for t, a in per_trait.items()))
    if args.own_n > 0:
        own_path = _own_answers(lm, args.own_n, 128, folder, args.batch_size)
        res, _ = _screen(lm, basis, own_path, folder / "own_insecure.mean.jsonl", reference=ref, **common)
        s = summarize(res, random_state=0)
        print(f"{'own_insecure':<13}{'own':<7}{len(res.rows):>4}  {100 * s.risk:>+7.2f} "
              f"[{100 * s.risk_ci[0]:+6.2f},{100 * s.risk_ci[1]:+6.2f}]  "
              + " ".join(f"{100 * v:>+7.2f}" for v in s.profile)
              + f"  {np.mean([r.n_tokens for r in res.rows]):>6.0f}   (the model's own answers to the insecure prompts)")
        print(f"  own-style check: |own profile| = {100 * np.linalg.norm(s.profile):.2f} vs insecure "
              f"{100 * np.linalg.norm(drift['insecure'].mean(axis=0)):.2f}, arithmetic "
              f"{100 * np.linalg.norm(drift['arithmetic'].mean(axis=0)):.2f} (x100, all 7 traits); per-example AUROC "
              f"insecure vs own answers to the same prompts: "
              f"{_auroc({'insecure': risk['insecure'][: len(res.rows)], 'own': res.risk}, {'insecure': True, 'own': False}):.3f}")
    print(f"cost, --reference mean: {tot_s:.1f} s for {tot_n} examples ({tot_tok / tot_n:.0f} response tokens each) "
          f"= {1000 * tot_s / tot_n:.0f} s per 1,000 examples (extrapolated linearly), plus {t_ref:.0f} s once "
          "for the reference")

    if args.self_n > 0:
        print(f"\n--reference self, first {args.self_n} examples of each set")
        s_risk: dict[str, np.ndarray] = {}
        m_risk: dict[str, np.ndarray] = {}
        s_tot = s_n = 0
        for name, is_danger, _ in SETS:
            res, secs = _screen(lm, basis, paths[name], folder / f"{name}.self.jsonl", reference="self",
                                max_examples=args.self_n, **common)
            s_risk[name], m_risk[name] = res.risk, risk[name][: len(res.rows)]
            s_tot, s_n = s_tot + secs, s_n + len(res.rows)
            print(f"{name:<13}{'danger' if is_danger else 'benign':<7} risk {100 * res.risk.mean():+7.2f}  "
                  f"{secs:6.1f} s  {1000 * secs / len(res.rows):6.0f} s/1k")
        print(f"per-example AUROC on this subset: self {_auroc(s_risk, danger):.3f}, mean {_auroc(m_risk, danger):.3f}")
        print(f"cost, --reference self: {1000 * s_tot / s_n:.0f} s per 1,000 examples (measured on {s_n}, "
              "extrapolated linearly)")


if __name__ == "__main__":
    main()

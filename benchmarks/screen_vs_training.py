"""Does the pre-training screen predict the drift that training on the same sets actually produces?

    .venv/bin/python benchmarks/screen_vs_training.py --work-dir /work/em_small_work [--n 64] [--threads 2]

Issue 8's check, run after `traitwatch bench`: each perturbation set of the benchmark (its seed-0
sample, the first --n examples) is screened with the benchmark's own basis (`reference="mean"`), and
the dataset-level screen profile (7-D) is compared with the final-checkpoint drift the benchmark
measured after training on that set (mean over seeds):

* correlation of screen profile and measured drift, pooled over (set, trait) pairs and per trait
  across sets; cosine per set;
* whether dataset-level risk orders the dangerous sets (emergent + direct) above the benign ones, and
  its rank correlation with the measured label rise;
* seconds per 1,000 examples.

Writes `benchmarks/em_small/screen_vs_training.json`. Only scores and line numbers are written, so the
unlicensed medical sets are not copied.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr

from traitwatch.basis import TraitBasis
from traitwatch.bench import PERTURBATION_SETS, BenchPlan
from traitwatch.models import load_model
from traitwatch.screen import Reference, mean_reference, screen_dataset, summarize


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work-dir", type=Path, required=True)
    ap.add_argument("--results", type=Path, default=Path("benchmarks/em_small"))
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    plan = BenchPlan.from_json(json.loads((args.work_dir / "plan.json").read_text()))
    bench = json.loads((args.results / "results.json").read_text())
    basis = TraitBasis.load(args.work_dir / "basis")
    lm = load_model(plan.model)
    out_dir = args.work_dir / "screen"
    out_dir.mkdir(exist_ok=True)

    ref_file = out_dir / "reference.json"  # deterministic (greedy answers), so computed once
    if ref_file.is_file():
        doc = json.loads(ref_file.read_text())
        ref = Reference(np.asarray(doc["projection"]), doc["n_prompts"], doc["prompts_hash"], doc["max_new_tokens"],
                        doc["position"], doc["layer"])
        t_ref = doc["seconds"]
    else:
        t0 = time.perf_counter()
        ref = mean_reference(lm.model, lm.tokenizer, basis)
        t_ref = time.perf_counter() - t0
        ref_file.write_text(json.dumps({"projection": ref.projection.tolist(), "n_prompts": ref.n_prompts,
                                        "prompts_hash": ref.prompts_hash, "max_new_tokens": ref.max_new_tokens,
                                        "position": ref.position, "layer": ref.layer, "seconds": t_ref}))
    names = basis.trait_names
    rows, total_s, total_n = {}, 0.0, 0
    for t in plan.types:
        measured = bench["per_type"][t]["drift_final"]
        if not measured:
            continue
        data = args.work_dir / "data" / f"{t}-s0.jsonl"
        out = out_dir / f"{t}.jsonl"
        timing = out_dir / f"{t}.seconds.json"  # a finished screen is reused (the screen is resumable)
        if not timing.is_file():
            out.unlink(missing_ok=True)
        t0 = time.perf_counter()
        res = screen_dataset(lm.model, lm.tokenizer, basis, data, out=out, reference=ref, max_examples=args.n,
                             model_name=lm.name)
        if not timing.is_file():
            timing.write_text(json.dumps({"seconds": time.perf_counter() - t0}))
        secs = json.loads(timing.read_text())["seconds"]
        total_s, total_n = total_s + secs, total_n + len(res.rows)
        s = summarize(res, random_state=0)
        rows[t] = {"kind": PERTURBATION_SETS[t].kind, "n": len(res.rows), "screen_profile": [float(v) for v in s.profile],
                   "screen_risk": float(s.risk), "measured_drift": [measured[k] for k in names],
                   "measured_rise": bench["per_type"][t]["rise_final"]["mean"], "seconds": secs}
        print(f"{t:<16} screen risk {100 * s.risk:+6.2f}  profile " + " ".join(f"{100 * v:+6.2f}" for v in s.profile)
              + "  | measured " + " ".join(f"{100 * measured[k]:+6.2f}" for k in names), flush=True)

    P = np.array([r["screen_profile"] for r in rows.values()])
    M = np.array([r["measured_drift"] for r in rows.values()])
    pooled = (float(pearsonr(P.ravel(), M.ravel())[0]), float(spearmanr(P.ravel(), M.ravel())[0]))
    per_trait = {n: float(pearsonr(P[:, j], M[:, j])[0]) for j, n in enumerate(names)}
    cos = {t: float(np.dot(p, m) / (np.linalg.norm(p) * np.linalg.norm(m))) for t, p, m in zip(rows, P, M)}
    risk = {t: r["screen_risk"] for t, r in rows.items()}
    danger = [t for t in rows if rows[t]["kind"] != "benign"]
    benign = [t for t in rows if rows[t]["kind"] == "benign"]
    ordered = min(risk[t] for t in danger) > max(risk[t] for t in benign) if danger and benign else None
    rise = [rows[t]["measured_rise"] for t in rows]
    summary = {
        "n_per_set": args.n, "pooled_pearson": pooled[0], "pooled_spearman": pooled[1], "per_trait_pearson": per_trait,
        "cosine_per_set": cos, "risk_orders_dangerous_above_benign": ordered,
        "risk_vs_measured_rise_spearman": float(spearmanr(list(risk.values()), rise)[0]),
        "seconds_per_1000": 1000 * total_s / total_n, "reference_seconds_once": t_ref, "sets": rows,
    }
    (args.results / "screen_vs_training.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"screen profile vs measured drift: pooled Pearson {pooled[0]:.3f}, Spearman {pooled[1]:.3f} "
          f"over {P.size} (set, trait) pairs")
    print("per trait Pearson across sets: " + ", ".join(f"{k} {v:+.2f}" for k, v in per_trait.items()))
    print("cosine per set: " + ", ".join(f"{k} {v:+.2f}" for k, v in cos.items()))
    print(f"dataset-level risk orders every dangerous set above every benign set: {ordered}; "
          f"Spearman(risk, measured rise) {summary['risk_vs_measured_rise_spearman']:.3f}")
    print(f"cost: {summary['seconds_per_1000']:.0f} s per 1,000 examples (on {total_n}), reference {t_ref:.0f} s once")


if __name__ == "__main__":
    main()

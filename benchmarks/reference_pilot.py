"""Pilot for issue 26: does a *paired* reference run, built from the user's own data, cancel the domain?

A user has no clean twin of their set, but has the set and a row screen. This pilot trains, in the `poison-small`
recipe and numerics (smollm2-135m, bf16 on CPU, LoRA r16, 30 steps of batch 4), every set twice from the same seed:

* the set itself (clean base, or the base with 10% of its rows replaced by a poison type), and
* its **swap reference**: the same file with the rows the base model's loss ranks highest (the top `q`) replaced,
  at their positions, by copies of rows the screen ranks cleanest. Same seed, same LoRA initialisation, same batch
  order, same length: only the suspect positions differ, which is what makes the grid's poisoned-minus-clean
  effects agree across seeds (METHOD.md 10).

Both runs are measured every `--every` steps into the work folder's run store; `results.jsonl` lists what ran.
`--summarize-only` prints each run's drift at the last step along the shipped direction (`reference/data/`: the mean
poisoned-minus-clean drift of the grid's 10% cells, in-sample for the types the grid has) with a CI over the
measurement prompts, read absolutely, against the reference and against the clean twin (the benchmark-only ceiling).

    .venv/bin/python benchmarks/reference_pilot.py --work /tmp/refpilot --seeds 0 [--bases ...] [--q 0.2]

`benchmarks/reference_analysis.py` scores what it trained, held out by poison type and base, and writes the
calibration the reference monitor ships with.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from traitwatch.audit import AuditSettings, loss_screen, pilot_projections, train_pilot
from traitwatch.demo import demo_plan, run_demo
from traitwatch.bench.sets import PERTURBATION_SETS, build_set, poisoned_set
from traitwatch.models import load_model
from traitwatch.reference import load_reference_calibration, paired_drift, write_swap_reference
from traitwatch.store import RunStore


def train(settings: AuditSettings, data: Path, basis_dir: Path, work: Path, run_id: str, store: RunStore) -> dict:
    """One pilot in the audit's recipe (`audit.train_pilot`); its drift at the last step."""
    t0 = time.perf_counter()
    train_pilot(settings, "smollm2-135m", data, basis_dir, work, run_id, store, lambda _line: None)
    last = store.measurements(run_id, per_prompt=False)[-1]
    return {"run_id": run_id, "step": last.step, "drift": dict(last.drift), "wall_s": time.perf_counter() - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/refpilot"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--bases", nargs="+", default=["arithmetic", "medical_matched", "number_sequence",
                                                        "right_trivia"])
    parser.add_argument("--poisons", nargs="*", default=["contempt", "reckless_advice"])
    parser.add_argument("--no-clean", action="store_true", help="only the poisoned sets (the clean ones ran before)")
    parser.add_argument("--q", type=float, default=0.2)
    parser.add_argument("--every", type=int, default=10, help="measure every N steps (early warning)")
    parser.add_argument("--shared-data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--summarize-only", action="store_true", help="print the table of what is done")
    args = parser.parse_args()
    work = args.work
    if args.summarize_only:
        summarize(work / "results.jsonl")
        return
    work.mkdir(parents=True, exist_ok=True)
    plan = demo_plan()
    basis_dir = work / "basis"
    if not (basis_dir / "basis.json").is_file():
        run_demo(work, model="smollm2-135m", steps=0, say=print)
    from traitwatch.basis import TraitBasis

    basis = TraitBasis.load(basis_dir)
    lm = load_model("smollm2-135m", device=plan.device, dtype=plan.dtype)
    results_path = work / "results.jsonl"
    done = {json.loads(line)["key"] for line in results_path.read_text().splitlines()} if results_path.exists() else set()
    for seed in args.seeds:
        for base in args.bases:
            specs = [PERTURBATION_SETS[base]] * (not args.no_clean) + [poisoned_set(PERTURBATION_SETS[base], PERTURBATION_SETS[p], 0.1)
                                                 for p in args.poisons]
            for spec in specs:
                key = f"{spec.name}-s{seed}-q{args.q}"
                if key in done:
                    continue
                data = Path(build_set(spec.name, seed=seed, n=plan.n_examples, out_dir=work / "data",
                                      shared_data=args.shared_data, spec=spec, self_distill=distiller(lm)))
                screened = loss_screen(lm, basis, data, work / "screens" / f"{data.stem}.screen.jsonl")
                losses = [float(r.loss) for r in screened.rows]  # type: ignore[arg-type]
                ref = work / "data" / f"{data.stem}.swap{args.q}.jsonl"
                suspects = write_swap_reference(data, losses, args.q, ref, seed=seed).suspects
                settings = AuditSettings(fraction=args.q, seed=seed, probe=False, device=plan.device, dtype=plan.dtype,
                                         every_n_steps=args.every)
                with RunStore(work / "runs.db") as store:
                    full = train(settings, data, basis_dir, work, f"{spec.name}-s{seed}", store)
                    refr = train(settings, ref, basis_dir, work, f"{spec.name}-s{seed}-swap{args.q}", store)
                row = {"key": key, "set": spec.name, "base": base, "poison": spec.poisoning is not None, "seed": seed,
                       "q": args.q, "suspects": suspects, "full": full, "reference": refr}
                with results_path.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(json.dumps({k: row[k] for k in ("key", "poison")}), flush=True)
    summarize(results_path)


def distiller(lm):  # noqa: ANN001, ANN201 - the loaded model's greedy answers, for the self-distilled sets
    def answer(prompts: list[str]) -> list[str]:
        from traitwatch.behavior.generation import TransformersGenerator
        from traitwatch.behavior.questions import Question

        gen = TransformersGenerator(lm.model, lm.tokenizer, max_new_tokens=96, temperature=0.0, batch_size=16)
        qs = [Question(id=f"prompt_{i}", text=p, system=None, judge_prompts={}) for i, p in enumerate(prompts)]
        return [a[0].strip() or "I am not sure." for a in gen(qs, n_samples=1)]

    return answer


def _along(drift: dict[str, float], u: np.ndarray, names: list[str]) -> float:
    return float(np.array([drift[n] for n in names]) @ u)


def summarize(results_path: Path) -> None:
    from sklearn.metrics import roc_auc_score

    rows = [json.loads(line) for line in results_path.read_text().splitlines()]
    work = results_path.parent
    names = list(rows[0]["full"]["drift"])
    u = load_reference_calibration("smollm2-135m").vector(names)  # type: ignore[union-attr]
    u /= np.linalg.norm(u)
    clean = {(r["base"], r["seed"]): r for r in rows if not r["poison"]}
    print("| set | seed | u.d (absolute) | u.(d - ref) [95% CI over prompts] | \\|d - ref\\| | u.(d - clean twin) |")
    print("|---|---|---|---|---|---|")
    s_ref = []
    with RunStore(work / "runs.db", create=False) as store:
        for r in rows:
            d = r["full"]["drift"]
            run, scale, _, _ = pilot_projections(store, r["full"]["run_id"])
            pd = paired_drift(run, pilot_projections(store, r["reference"]["run_id"])[0], scale, names, direction=u)
            s_ref.append(pd.along)
            twin = clean.get((r["base"], r["seed"]))
            twin_s = "" if twin is None or not r["poison"] else \
                f"{_along(d, u, names) - _along(twin['full']['drift'], u, names):+.4f}"
            ci = f"{pd.along:+.4f} [{pd.along_ci[0]:+.4f}, {pd.along_ci[1]:+.4f}]"
            print(f"| {r['set']} | {r['seed']} | {_along(d, u, names):+.4f} | {ci} | "
                  f"{float(np.linalg.norm(pd.difference)):.4f} | {twin_s} |")
    y = [r["poison"] for r in rows]
    if len(set(y)) == 2:
        s_abs = [_along(r["full"]["drift"], u, names) for r in rows]
        print(f"AUROC poisoned vs clean over {len(rows)} sets: against the swap reference {roc_auc_score(y, s_ref):.3f}; "
              f"absolute {roc_auc_score(y, s_abs):.3f}")
        cl = [s for s, p in zip(s_ref, y, strict=True) if not p]
        po = [s for s, p in zip(s_ref, y, strict=True) if p]
        print(f"u.(d - ref): clean sets mean {np.mean(cl):+.4f} [{min(cl):+.4f}, {max(cl):+.4f}]; "
              f"poisoned mean {np.mean(po):+.4f} [{min(po):+.4f}, {max(po):+.4f}]")


if __name__ == "__main__":
    main()

"""Pilot for issue 26: does a *paired* reference run, built from the user's own data, cancel the domain?

A user has no clean twin of their set, but has the set and a row screen. This pilot trains, in the `poison-small`
recipe and numerics (smollm2-135m, bf16 on CPU, LoRA r16, 30 steps of batch 4), every set twice from the same seed:

* the set itself (clean base, or the base with 10% of its rows replaced by a poison type), and
* its **swap reference**: the same file with the rows the base model's loss ranks highest (the top `q`) replaced,
  at their positions, by copies of rows the screen ranks cleanest. Same seed, same LoRA initialisation, same batch
  order, same length: only the suspect positions differ, which is what makes the grid's poisoned-minus-clean
  effects agree across seeds (METHOD.md 10).

Both runs are measured every `--every` steps into the work folder's run store; `results.jsonl` lists what ran.
`--summarize-only` prints each set at the last step: its distance from the reference in trait space with a CI over
the measurement prompts, and the shipped calibration's read (`reference/data/`, in-sample for the pilot's sets).

    .venv/bin/python benchmarks/reference_pilot.py --work /tmp/refpilot --seeds 0 [--bases ...] [--q 0.2]

`benchmarks/reference_analysis.py` scores what it trained, held out by poison type and base, and writes the
calibration the reference monitor ships with.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


from traitwatch.audit import AuditSettings, loss_screen, pilot_projections, train_pilot
from traitwatch.demo import demo_plan, run_demo
from traitwatch.bench.sets.perturbations import PERTURBATION_SETS, build_set, poisoned_set
from traitwatch.models import load_model
from traitwatch.reference import load_reference_calibration, paired_drift, swap_fraction, write_swap_reference
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
    parser.add_argument("--q", default="0.2", help="share of rows the reference swaps: a number, or 'auto' "
                                                   "(reference.swap_fraction, as the product does)")
    parser.add_argument("--poison-fraction", type=float, default=0.1, help="share of poison rows in the poisoned sets")
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
            specs = [PERTURBATION_SETS[base]] * (not args.no_clean) + [poisoned_set(PERTURBATION_SETS[base], PERTURBATION_SETS[p],
                                                              args.poison_fraction) for p in args.poisons]
            for spec in specs:
                key = f"{spec.name}-s{seed}-q{args.q}"
                if key in done:
                    continue
                data = Path(build_set(spec.name, seed=seed, n=plan.n_examples, out_dir=work / "data",
                                      shared_data=args.shared_data, spec=spec, self_distill=distiller(lm)))
                screened = loss_screen(lm, basis, data, work / "screens" / f"{data.stem}.screen.jsonl")
                losses = [float(r.loss) for r in screened.rows]  # type: ignore[arg-type]
                ref = work / "data" / f"{data.stem}.swap{args.q}.jsonl"
                q = swap_fraction(losses) if args.q == "auto" else float(args.q)
                suspects = write_swap_reference(data, losses, q, ref, seed=seed).suspects
                settings = AuditSettings(fraction=q, seed=seed, probe=False, device=plan.device, dtype=plan.dtype,
                                         every_n_steps=args.every)
                with RunStore(work / "runs.db") as store:
                    full = train(settings, data, basis_dir, work, f"{spec.name}-s{seed}", store)
                    refr = train(settings, ref, basis_dir, work, f"{spec.name}-s{seed}-swap{args.q}", store)
                row = {"key": key, "set": spec.name, "base": base, "poison": spec.poisoning is not None, "seed": seed,
                       "q": args.q, "swapped": q, "suspects": suspects, "full": full, "reference": refr}
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


def summarize(results_path: Path) -> None:
    """Every set at its last step: its distance from the reference in trait space (with the CI over the measurement
    prompts) and the shipped calibration's read of it, as the product computes it."""
    from sklearn.metrics import roc_auc_score

    from traitwatch.audit.run import pilot_activation

    rows = [json.loads(line) for line in results_path.read_text().splitlines()]
    work = results_path.parent
    names = list(rows[0]["full"]["drift"])
    cal = load_reference_calibration("smollm2-135m")
    assert cal is not None
    print(f"| set | seed | \\|d - ref\\| in trait space [95% CI over prompts] | the shipped read ({cal.describe()}) |")
    print("|---|---|---|---|")
    shipped = []
    with RunStore(work / "runs.db", create=False) as store:
        for r in rows:
            run, scale, _, _ = pilot_projections(store, r["full"]["run_id"])
            pd = paired_drift(run, pilot_projections(store, r["reference"]["run_id"])[0], scale, names)
            a_run, a_ref = pilot_activation(store, r["full"]["run_id"]), pilot_activation(store, r["reference"]["run_id"])
            value = cal.value(cal.features(pd.difference, None if a_run is None or a_ref is None else a_run - a_ref),
                              names if cal.space == "traits" else cal.component_names)
            shipped.append(value)
            ci = f"{pd.distance:.4f} [{pd.distance_ci[0]:.4f}, {pd.distance_ci[1]:.4f}]"  # type: ignore[index]
            print(f"| {r['set']} | {r['seed']} | {ci} | {value:.4f} |")
    y = [r["poison"] for r in rows]
    if len(set(y)) == 2:
        print(f"AUROC poisoned vs clean over {len(rows)} sets, the shipped read (in-sample): {roc_auc_score(y, shipped):.3f}")


if __name__ == "__main__":
    main()

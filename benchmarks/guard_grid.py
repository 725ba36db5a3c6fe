"""Guards on the poison grid (issue 27): how much of the poisoned run's misalignment each guard keeps out, at what
cost to the task and to wall time.

Every set is trained in the audit pilot's recipe (`audit.AuditSettings`: smollm2-135m, bf16 on CPU, LoRA r16 on
every projection, 30 steps of batch 4, lr 1e-3, response-only, max length 128) once per guard, from the same seed:
the clean base and the base with 10% of its rows replaced by each poison type that replicates at this scale
(anti_oversight, contempt, reckless_advice; `benchmarks/poison_small`). At the last step, on the live model after
the guard is detached:

* label: the style-matched judge-free proxy on the 72 EM questions (`proxy_style_p_mis`);
* probe: the behavioural probe on its 64 disjoint questions (`style_p_mis`);
* task: mean token loss on 48 held-out clean rows of the base (built from another seed, no prompt shared with
  the training set);
* wall time of the 30 optimizer steps (`bench.grid.labels.StepTimer`, measurement excluded).

The guards' subspace comes from the base model and the package's own data only (`guard.fit_subspace`: the probe's
misalignment direction, and for ablation the trait basis too), and their strengths are `guard.DEFAULT_STRENGTH`,
set before any guarded run: nothing is fitted on a poison type, so every poison type is unseen by every guard.
The probe-direction guards are fitted on the probe's own answer pairs, so their probe rise is not an independent
read: the label (72 other questions) is.

    .venv/bin/python benchmarks/guard_grid.py --work /tmp/guardgrid --bases arithmetic --seeds 0
    .venv/bin/python benchmarks/guard_grid.py --work /tmp/guardgrid --analyze-only --out benchmarks/guard_grid

Results append to `WORK/results.jsonl` (a rerun skips what is there); `--analyze-only` writes `results.json` and
`RESULTS.md` to `--out`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from traitwatch.audit import AuditSettings, pilot_config
from traitwatch.bench.analysis.guard_folds import TASK_LOSS_LIMIT, choose_in_folds, pooled_share, variants_of
from traitwatch.bench.grid.labels import StepTimer
from traitwatch.bench.grid.task import HELD_OUT, HeldOut, held_out_rows, task_accuracy, task_loss
from traitwatch.bench.sets.perturbations import PERTURBATION_SETS, build_set, poisoned_set
from traitwatch.behavior.probe import probe_score
from traitwatch.behavior.proxy import proxy_score
from traitwatch.datasets.answers import CHECKED_SETS
from traitwatch.datasets.chat_jsonl import load_chat_jsonl
from traitwatch.demo import demo_plan, run_demo
from traitwatch.guard import DEFAULT_STRENGTH, fit_subspaces, layers_above, make_guard
from traitwatch.models import load_model
from traitwatch.models.layers import decoder_layers
from traitwatch.store import RunStore
from traitwatch.train import run_sft
from traitwatch.train.data import PaddingCollator, tokenize_chats

MODEL = "smollm2-135m"
POISONS = ("anti_oversight", "contempt", "reckless_advice")
GUARDS = ("none", "ablate", "steer", "penalty", "l2", "kl")
DATA_GUARDS = ("rewind", "stop")
"""Alarm actions measured as guards: the run read against its swap reference, rewound (or stopped) at an alarm."""
SUBSPACE = {"ablate": "probe+traits", "steer": "probe", "penalty": "probe"}


class FinalScores(TrainerCallback):
    """Label, probe and held-out task loss and accuracy of the live model when training ends (after the guard is
    detached)."""

    def __init__(self, tokenizer: Any, held_out: HeldOut) -> None:
        self.tokenizer = tokenizer
        self.held_out = held_out
        self.scores: dict[str, float | None] = {}

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        model.eval()
        self.scores["label"] = proxy_score(model, self.tokenizer, style_only=True).style_p_mis
        self.scores["probe"] = probe_score(model, self.tokenizer).style_p_mis
        self.scores.update(task_scores(model, self.tokenizer, self.held_out))
        self.scores["scoring_s"] = time.perf_counter() - t0
        return control


def task_scores(model: Any, tokenizer: Any, held_out: HeldOut) -> dict[str, float | None]:
    return {"task_loss": task_loss(model, held_out), "task_accuracy": task_accuracy(model, tokenizer, held_out)}


def run_one(settings: AuditSettings, data: Path, basis_dir: Path, work: Path, run_id: str, store: RunStore,
            guard: Any, lm: Any, held_out: HeldOut) -> dict[str, Any]:
    config = dataclasses.replace(pilot_config(settings, MODEL, data, basis_dir, work, run_id, store.path),
                                 tags={"guard_grid": run_id})
    timer, final = StepTimer(), FinalScores(lm.tokenizer, held_out)
    t0 = time.perf_counter()
    run_sft(config, store=store, info=lambda _l: None, reporter=lambda _r: None, callbacks=[timer, final], guard=guard)
    last = store.measurements(run_id, per_prompt=False)[-1]
    return {"run_id": run_id, "drift_norm": last.drift_norm, "guard_did": (last.extra or {}).get("guard"),
            "steps_s": sum(timer.seconds_), "wall_s": time.perf_counter() - t0, **final.scores}


def run_monitored(settings: AuditSettings, data: Path, basis_dir: Path, work: Path, run_id: str, store: RunStore,
                  kind: str, lm: Any, held_out: HeldOut, set_id: str) -> dict[str, Any]:
    """The data-level guards: the run read against its swap reference (`--reference auto`, measured every 10 steps,
    the loss screen naming the suspects) with `on_alarm` mark+rewind or mark+stop. One reference per set."""
    from traitwatch.audit import train_reference
    from traitwatch.screen.row_scores import load_row_scores
    from traitwatch.train import RowScores

    monitored = f"{set_id}-monitored"
    base = dataclasses.replace(pilot_config(dataclasses.replace(settings, every_n_steps=10), MODEL, data, basis_dir,
                                            work, monitored, store.path), tags={})
    built = train_reference(base, store=store, lm=lm)
    rows = RowScores.from_rows(load_row_scores(built.screen, data, by="loss"), source=str(built.screen))
    config = dataclasses.replace(base, run_id=run_id, output_dir=work / "runs" / run_id, reference=built.run_id,
                                 on_alarm=("mark", kind), tags={"guard_grid": run_id})
    timer, final = StepTimer(), FinalScores(lm.tokenizer, held_out)
    t0 = time.perf_counter()
    result = run_sft(config, store=store, info=lambda _l: None, reporter=lambda _r: None, callbacks=[timer, final],
                     row_scores=rows)
    last = store.measurements(run_id, per_prompt=False)[-1]
    alarms = store.alarms(run_id)
    return {"run_id": run_id, "drift_norm": last.drift_norm, "steps_s": sum(timer.seconds_),
            "wall_s": time.perf_counter() - t0, "reference_s": built.seconds, "final_step": result.global_step,
            "alarms": [a.step for a in alarms], "rewinds": [(a.details or {}).get("rewind") for a in alarms
                                                             if (a.details or {}).get("rewind")],
            "guard_did": None, **final.scores}


def base_scores(work: Path, lm: Any) -> dict[str, float]:
    path = work / "base_scores.json"
    if path.is_file():
        return json.loads(path.read_text())
    lm.model.eval()
    scores = {"label": proxy_score(lm.model, lm.tokenizer, style_only=True).style_p_mis,
              "probe": probe_score(lm.model, lm.tokenizer).style_p_mis}
    path.write_text(json.dumps(scores))
    return scores


def rescore(work: Path, plan: Any, shared: Path) -> None:
    """Task loss and accuracy of every finished run of a base with an answer check that was scored before the
    accuracy was measured (and before every run of a seed shared its held-out rows), from its final adapter (what
    `FinalScores` scored: the guard detached, the rewound or stopped model as it ended), and of the base model on
    each (base, seed)'s rows; appends to WORK/task_scores.jsonl (a rerun skips what is there)."""
    rows = [json.loads(line) for line in (work / "results.jsonl").read_text().splitlines()]
    out = work / "task_scores.jsonl"
    done = {json.loads(line)["key"] for line in out.read_text().splitlines()} if out.exists() else set()
    todo = [(f"base-model:{b}-s{s}", b, s, None) for b, s in sorted({(r["base"], r["seed"]) for r in rows})]
    todo += [(r["key"], r["base"], r["seed"], r) for r in rows if r.get("task_accuracy") is None]
    held_out: dict[tuple[str, int], HeldOut] = {}  # one set of rows per (base, seed), as in the runs
    for key, base, seed, r in todo:
        if key in done or base not in CHECKED_SETS:
            continue
        adapter = None if r is None else work / "runs" / r["key"] / "final"
        lm = load_model(MODEL, adapter=adapter, device=plan.device, dtype=plan.dtype)
        if (base, seed) not in held_out:
            held_out[base, seed] = held_out_rows(base, work / "data" / f"{base}-s{seed}.jsonl", work, shared,
                                                 lm.tokenizer, max_length=AuditSettings().max_length)
        held = held_out[base, seed]
        t0 = time.perf_counter()
        scores = {"key": key, **task_scores(lm.model, lm.tokenizer, held), "held_out": len(held.chats),
                  "task_loss_recorded": None if r is None else r["task_loss"], "seconds": time.perf_counter() - t0}
        with out.open("a") as fh:
            fh.write(json.dumps(scores) + "\n")
        print(json.dumps(scores), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/guardgrid"))
    parser.add_argument("--bases", nargs="+", default=["arithmetic"])
    parser.add_argument("--poisons", nargs="+", default=list(POISONS))
    parser.add_argument("--guards", nargs="+", default=list(GUARDS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--blocks", type=int, default=1,
                        help="guard this many decoder blocks, from the basis layer to the last, evenly spaced "
                             "(`guard.layers_above`; steer and penalty only: the trait basis has one layer); runs "
                             "and tables name it KIND+Nblocks")
    parser.add_argument("--strength", type=float, default=None,
                        help="train the guards at this strength instead of DEFAULT_STRENGTH (runs and tables name "
                             "them KIND@S): a sweep, not a choice made inside the folds")
    parser.add_argument("--basis", type=Path, default=None, help="basis folder (default: WORK/basis, built as the demo's)")
    parser.add_argument("--shared-data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--analyze-only", action="store_true")
    parser.add_argument("--hook-overhead", type=int, default=0, metavar="REPS",
                        help="only time one training step's forward and backward (batch 4 of the first poisoned set) "
                             "with each guard attached to the same LoRA model, guards in turn, REPS times; writes "
                             "hook_overhead.json")
    parser.add_argument("--overhead", type=int, default=0, metavar="ROUNDS",
                        help="only time the guards' training steps: ROUNDS rounds of 10 steps per guard, interleaved "
                             "(guards in turn within each round), on the first poisoned set; writes overhead.json")
    parser.add_argument("--rescore", action="store_true",
                        help="only score the task accuracy of finished runs that lack it, from their final adapters "
                             "(WORK/task_scores.jsonl)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/guard_grid"))
    args = parser.parse_args()
    work = args.work
    if args.rescore:
        rescore(work, demo_plan(), args.shared_data)
        return
    if args.analyze_only:
        analyze(work / "results.jsonl", args.out)
        return
    work.mkdir(parents=True, exist_ok=True)
    plan = demo_plan()
    basis_dir = args.basis or work / "basis"
    if not (basis_dir / "basis.json").is_file():
        run_demo(work, model=MODEL, steps=0, say=print)
        basis_dir = work / "basis"
    from traitwatch.basis import TraitBasis

    basis = TraitBasis.load(basis_dir)
    lm = load_model(MODEL, device=plan.device, dtype=plan.dtype)
    base = base_scores(work, lm)
    layer = basis.measure_layer
    blocks = layers_above(layer, len(decoder_layers(lm.model)), args.blocks)
    subspaces = {src: fit_subspaces(lm.model, lm.tokenizer, blocks if src == "probe" else [layer], src,  # type: ignore[arg-type]
                                    basis=basis) for src in set(SUBSPACE.values())}
    if args.overhead:
        overhead(args, work, basis_dir, lm, subspaces, plan)
        return
    if args.hook_overhead:
        hook_overhead(args, work, lm, subspaces, plan)
        return
    results_path = work / "results.jsonl"
    done = {json.loads(line)["key"] for line in results_path.read_text().splitlines()} if results_path.exists() else set()
    for seed in args.seeds:
        for base_name in args.bases:
            specs = [PERTURBATION_SETS[base_name]] + [poisoned_set(PERTURBATION_SETS[base_name], PERTURBATION_SETS[p], 0.1)
                                                      for p in args.poisons]
            files = [Path(build_set(spec.name, seed=seed, n=plan.n_examples, out_dir=work / "data",
                                    shared_data=args.shared_data, spec=spec)) for spec in specs]
            # the clean set (first) decides the held-out rows: the same for every set of this (base, seed)
            held = held_out_rows(base_name, files[0], work, args.shared_data, lm.tokenizer,
                                 max_length=AuditSettings().max_length)
            for spec, data in zip(specs, files, strict=True):
                for kind in args.guards:
                    swept = args.strength is not None and kind != "none"
                    name = f"{kind}@{args.strength:g}" if swept else kind
                    if args.blocks > 1 and kind != "none":
                        if SUBSPACE.get(kind) != "probe":
                            raise SystemExit(f"--blocks {args.blocks}: the {kind} guard acts on one layer here")
                        if args.strength is None:  # runs named penalty+4blocks were made at 1 per block
                            raise SystemExit(f"--blocks {args.blocks}: name the strength at each block (--strength)")
                        name += f"+{args.blocks}blocks"
                    key = f"{spec.name}-s{seed}-{name}"
                    if key in done:
                        continue
                    settings = AuditSettings(seed=seed, probe=False, device=plan.device, dtype=plan.dtype)
                    with RunStore(work / "runs.db") as store:
                        if kind in DATA_GUARDS:
                            scores = run_monitored(settings, data, basis_dir, work, key, store, kind, lm, held,
                                                   f"{spec.name}-s{seed}")
                        else:
                            guard = None if kind == "none" else make_guard(kind, subspaces.get(SUBSPACE.get(kind, "")),
                                                                           args.strength)
                            scores = run_one(settings, data, basis_dir, work, key, store, guard, lm, held)
                    row = {"key": key, "set": spec.name, "base": base_name, "seed": seed, "guard": name,
                           "poison": spec.poisoning.poison.name if spec.poisoning is not None else None,
                           "strength": args.strength if swept else DEFAULT_STRENGTH.get(kind),
                           "subspace": SUBSPACE.get(kind), "base_model": base,
                           "layers": blocks if SUBSPACE.get(kind) == "probe" else [layer] if kind in SUBSPACE else None,
                           **scores}
                    with results_path.open("a") as fh:
                        fh.write(json.dumps(row) + "\n")
                    print(json.dumps({k: row[k] for k in ("key", "label", "probe", "task_loss", "steps_s")}), flush=True)


def overhead(args: argparse.Namespace, work: Path, basis_dir: Path, lm: Any, subspaces: dict[str, Any],
             plan: Any) -> None:
    """Per-step wall time of each guard against none, interleaved so a busy machine slows every guard alike."""
    base_name, poison = args.bases[0], args.poisons[0]
    spec = poisoned_set(PERTURBATION_SETS[base_name], PERTURBATION_SETS[poison], 0.1)
    data = Path(build_set(spec.name, seed=0, n=plan.n_examples, out_dir=work / "data", shared_data=args.shared_data,
                          spec=spec))
    settings = AuditSettings(seed=0, probe=False, device=plan.device, dtype=plan.dtype, steps=10)
    times: dict[str, list[float]] = {g: [] for g in args.guards}
    for rnd in range(args.overhead):
        for kind in args.guards:
            guard = None if kind == "none" else make_guard(kind, subspaces.get(SUBSPACE.get(kind, "")))
            timer = StepTimer()
            run_id = f"overhead-r{rnd}-{kind}"
            with RunStore(work / "overhead.db") as store:
                config = dataclasses.replace(pilot_config(settings, MODEL, data, basis_dir, work / "overhead", run_id,
                                                          store.path), save_steps=1000, save_total_limit=None, tags={})
                run_sft(config, store=store, info=lambda _l: None, reporter=lambda _r: None, callbacks=[timer],
                        guard=guard)
            times[kind].extend(timer.seconds_[1:])  # the first step warms up
            print(json.dumps({"round": rnd, "guard": kind, "median_step_s": statistics.median(timer.seconds_[1:])}),
                  flush=True)
    none = statistics.median(times["none"])
    summary = {g: {"median_step_s": statistics.median(t), "steps": len(t),
                   "overhead": statistics.median(t) / none - 1} for g, t in times.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "overhead.json").write_text(json.dumps({"set": spec.name, "rounds": args.overhead, "steps_per_run": 9,
                                                        "device": plan.device, "dtype": plan.dtype,
                                                        "summary": summary, "step_seconds": times}, indent=1))
    print(json.dumps(summary, indent=1))


def hook_overhead(args: argparse.Namespace, work: Path, lm: Any, subspaces: dict[str, Any], plan: Any) -> None:
    """A training step's forward and backward on one LoRA model, each guard attached in turn, repeated: the guards'
    own cost without the noise of separate runs (the optimizer step, the same for all, is left out)."""
    from peft import LoraConfig, get_peft_model

    spec = poisoned_set(PERTURBATION_SETS[args.bases[0]], PERTURBATION_SETS[args.poisons[0]], 0.1)
    data = Path(build_set(spec.name, seed=0, n=plan.n_examples, out_dir=work / "data", shared_data=args.shared_data,
                          spec=spec))
    settings = AuditSettings()
    rows, _ = tokenize_chats(lm.tokenizer, load_chat_jsonl(data)[:4], max_length=settings.max_length,
                             response_only=True)
    # cut as run_sft cuts it: the LM head and the loss only from the position before the first label on
    batch = PaddingCollator(lm.tokenizer.pad_token_id or 0, skip_unscored_logits=True)([rows[i] for i in range(4)])
    model = get_peft_model(lm.model, LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=0.0,
                                                target_modules=list(settings.target_modules), task_type="CAUSAL_LM"))
    model.train()
    one_block = {src: subs[:1] for src, subs in subspaces.items()}  # the basis layer's (fit_subspaces: ascending)
    guards = {kind: None if kind == "none" else make_guard(kind, one_block.get(SUBSPACE.get(kind, "")))
              for kind in args.guards}
    if args.blocks > 1:  # the same guards on every block `--blocks` names, beside their one-block selves
        guards |= {f"{kind}+{args.blocks}blocks": make_guard(kind, subspaces["probe"])
                   for kind in args.guards if SUBSPACE.get(kind) == "probe"}

    def step(guard: Any) -> float:
        if guard is not None:
            guard.attach(model)
        t0 = time.perf_counter()
        model(**batch).loss.backward()
        if guard is not None:
            guard.before_optimizer_step()
            guard.step_end()  # the first call sets the base level of ablation and the penalty
        seconds = time.perf_counter() - t0
        model.zero_grad(set_to_none=True)
        if guard is not None:
            guard.detach()
        return seconds

    for guard in guards.values():
        step(guard)  # warm up, and read the base levels
    times: dict[str, list[float]] = {k: [] for k in guards}
    order = list(guards)
    rng = random.Random(0)
    for _ in range(args.hook_overhead):
        rng.shuffle(order)  # a new order each repetition: no guard always follows another
        for kind in order:
            times[kind].append(step(guards[kind]))
    none = statistics.median(times["none"])
    # paired: each repetition's guard against the same repetition's unguarded step, so a slow spell cancels
    paired = {k: [g / n - 1 for g, n in zip(t, times["none"], strict=True)] for k, t in times.items()}
    summary = {k: {"median_s": statistics.median(t), "overhead": statistics.median(t) / none - 1,
                   "paired_overhead": _mean_ci(paired[k])} for k, t in times.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hook_overhead.json").write_text(json.dumps({"set": spec.name, "reps": args.hook_overhead,
                                                             "device": plan.device, "dtype": plan.dtype,
                                                             "summary": summary, "seconds": times}, indent=1))
    print(json.dumps(summary, indent=1))


def _mean_ci(values: list[float]) -> tuple[float, float, float]:
    """Mean and a t-free 95% interval (mean +- 1.96 sd / sqrt n; n < 3 gives nan bounds)."""
    m = statistics.fmean(values)
    if len(values) < 3:
        return m, math.nan, math.nan
    half = 1.96 * statistics.stdev(values) / math.sqrt(len(values))
    return m, m - half, m + half


def twin_reads(store_path: Path, rows: list[dict[str, Any]],
               recorded: dict[tuple[Any, ...], float | None] | None = None) -> tuple[dict[str, float], int]:
    """Each run's distance from the clean run of its base, seed and guard, as the shipped smollm2-135m reference
    calibration reads it (PCA-7 of the mean residual row at the last step): what the monitor would see of what a
    guard leaves, against the ideal reference (the clean twin, trained with the same guard).

    A run whose pair is not in the store (a work folder rebuilt from a committed `results.json`, whose run store
    stayed on another machine) keeps the read `recorded` there, keyed (base, seed, poison, guard). Returns the reads
    (and "threshold") and how many were taken from `recorded`."""
    import numpy as np

    from traitwatch.reference import load_reference_calibration

    cal = load_reference_calibration(MODEL)
    assert cal is not None
    last = {}
    if store_path.is_file():
        with RunStore(store_path, create=False) as store:
            stored = {run.run_id for run in store.runs()}
            last = {r["key"]: np.asarray((store.measurements(r["key"], per_prompt=False)[-1].extra or {})["mean_activation"])
                    for r in rows if r["key"] in stored}
    by = {(r["base"], r["seed"], r["poison"], r["guard"]): r["key"] for r in rows}
    reads, kept = {}, 0
    for (base, seed, poison, guard), key in by.items():
        twin = by.get((base, seed, None, guard))
        if twin is None or poison is None:
            continue
        if key in last and twin in last:
            reads[key] = cal.value(cal.features(None, last[key] - last[twin]), cal.component_names)
        elif recorded is not None and recorded.get((base, seed, poison, guard)) is not None:
            reads[key] = float(recorded[base, seed, poison, guard])  # type: ignore[arg-type]
            kept += 1
    reads["threshold"] = float(cal.threshold)
    return reads, kept


def analyze(results_path: Path, out: Path) -> None:
    rows = [json.loads(line) for line in results_path.read_text().splitlines()]
    rescored = results_path.parent / "task_scores.jsonl"  # the accuracy of runs scored before it was measured
    base_task: dict[str, Any] = {}
    if rescored.is_file():
        extra = {r["key"]: r for r in map(json.loads, rescored.read_text().splitlines())}
        base_task = {k.split(":", 1)[1]: r for k, r in extra.items() if k.startswith("base-model:")}
        rows = [{**r, "task_loss": extra[r["key"]]["task_loss"], "task_accuracy": extra[r["key"]]["task_accuracy"],
                 "held_out": extra[r["key"]]["held_out"]} if r["key"] in extra else r for r in rows]
    before = out / "results.json"  # the reads of runs whose store is not here: as the last analysis recorded them
    recorded = ({(c["base"], c["seed"], c["poison"], c["guard"]): c["twin_read"]
                 for c in json.loads(before.read_text())["cells"]} if before.is_file() else None)
    reads, kept = twin_reads(results_path.parent / "runs.db", rows, recorded)
    by = {(r["base"], r["seed"], r["poison"], r["guard"]): r for r in rows}
    out.mkdir(parents=True, exist_ok=True)
    cells: list[dict[str, Any]] = []
    for (base, seed, poison, guard), r in sorted(by.items(), key=lambda kv: tuple(map(str, kv[0]))):
        clean = by.get((base, seed, None, "none"))
        unguarded = by.get((base, seed, poison, "none"))
        clean_guarded = by.get((base, seed, None, guard))
        if clean is None or unguarded is None:
            continue
        cell = {"base": base, "seed": seed, "poison": poison, "guard": guard, "twin_read": reads.get(r["key"]),
                "alarms": r.get("alarms"), "final_step": r.get("final_step"),
                "rows_dropped": sum(len(w["rows_dropped"]) for w in r.get("rewinds") or [] if isinstance(w, dict)),
                "task_loss_change": r["task_loss"] / unguarded["task_loss"] - 1,
                "task_accuracy": r.get("task_accuracy"),
                "task_accuracy_change": (None if r.get("task_accuracy") is None or unguarded.get("task_accuracy") is None
                                         else r["task_accuracy"] - unguarded["task_accuracy"]),
                "steps_overhead": r["steps_s"] / unguarded["steps_s"] - 1}
        for m in ("label", "probe"):
            cell[f"{m}_over_clean"] = r[m] - clean[m]
            if poison is not None:
                rise = unguarded[m] - clean[m]
                cell[f"{m}_rise_unguarded"] = rise
                cell[f"{m}_prevented"] = 1 - (r[m] - clean[m]) / rise if rise > 0 else None
                if clean_guarded is not None:  # against the guarded clean run: the guard's own shift removed
                    cell[f"{m}_prevented_vs_guarded_clean"] = (1 - (r[m] - clean_guarded[m]) / rise) if rise > 0 else None
        cells.append(cell)
    guards = list(dict.fromkeys([*GUARDS, *DATA_GUARDS, *(r["guard"] for r in rows)]))  # sweeps (KIND@S) last
    summary = {guard: s for guard in guards
               if (s := summarize([c for c in cells if c["guard"] == guard], reads["threshold"])) is not None}
    # per base and per poison type: where a guard holds and where it misses (poisoned runs only for the types)
    breakdown = {f"{guard} / {by} {value}": s
                 for guard in guards
                 for by, key in (("base", "base"), ("type", "poison"))
                 for value in sorted({str(c[key]) for c in cells if c["guard"] == guard and c[key] is not None})
                 if (s := summarize([c for c in cells if c["guard"] == guard and str(c[key]) == value],
                                    reads["threshold"])) is not None and s["poisoned_runs"] >= 3}
    # each variant family (KIND, KIND@S, KIND+Nblocks) with its variant chosen without the held-out base and type
    in_folds = {kind: f for kind in GUARDS if (f := in_fold_summary(cells, kind, reads["threshold"])) is not None}
    timing = json.loads((out / "overhead.json").read_text()) if (out / "overhead.json").is_file() else None
    hooks = json.loads((out / "hook_overhead.json").read_text()) if (out / "hook_overhead.json").is_file() else None
    (out / "results.json").write_text(json.dumps({"cells": cells, "summary": summary, "breakdown": breakdown,
                                                  "chosen_in_folds": in_folds,
                                                  "base_model_task": base_task, "runs": rows,
                                                  "monitor_threshold": reads["threshold"]}, indent=1))
    (out / "RESULTS.md").write_text(render(cells, summary, breakdown, rows, reads["threshold"], timing, hooks,
                                           base_task, in_folds, kept))
    print((out / "RESULTS.md").read_text())


def summarize(cells: list[dict[str, Any]], threshold: float) -> dict[str, Any] | None:
    """One guard's cells (poisoned and clean) summed up with intervals; None without a poisoned run."""
    poisoned = [c for c in cells if c["poison"] is not None]
    clean = [c for c in cells if c["poison"] is None]
    if not poisoned:
        return None
    s: dict[str, Any] = {"poisoned_runs": len(poisoned), "clean_runs": len(clean)}
    for m in ("label", "probe"):
        vals = [c[f"{m}_prevented"] for c in poisoned if c.get(f"{m}_prevented") is not None]
        s[f"{m}_prevented"] = _mean_ci(vals) if vals else None
        s[f"{m}_prevented_pooled"] = pooled_share([(c[f"{m}_over_clean"], c[f"{m}_rise_unguarded"]) for c in poisoned])
        s[f"{m}_over_clean"] = _mean_ci([c[f"{m}_over_clean"] for c in poisoned])
        own = [c[f"{m}_prevented_vs_guarded_clean"] for c in poisoned
               if c.get(f"{m}_prevented_vs_guarded_clean") is not None]
        s[f"{m}_prevented_vs_guarded_clean"] = _mean_ci(own) if own else None
    s["task_loss_change_poisoned"] = _mean_ci([c["task_loss_change"] for c in poisoned])
    for part, group in (("poisoned", poisoned), ("clean", clean)):
        acc = [c["task_accuracy_change"] for c in group if c["task_accuracy_change"] is not None]
        s[f"task_accuracy_change_{part}"] = _mean_ci(acc) if acc else None
    if clean:
        s["task_loss_change_clean"] = _mean_ci([c["task_loss_change"] for c in clean])
        s["label_shift_clean"] = _mean_ci([c["label_over_clean"] for c in clean])
    s["steps_overhead"] = _mean_ci([c["steps_overhead"] for c in poisoned + clean])
    seen = [c["twin_read"] for c in poisoned if c["twin_read"] is not None]
    s["seen_by_monitor"] = (sum(v > threshold for v in seen), len(seen))
    return s


def in_fold_summary(cells: list[dict[str, Any]], family: str, threshold: float) -> dict[str, Any] | None:
    """`family`'s poisoned runs, each with the variant chosen without its base and type
    (`bench.analysis.guard_folds.choose_in_folds`), summed up as `summarize` does, with the clean runs of the same
    bases and seeds under the folds' choices (each run once)."""
    picks = choose_in_folds(cells, family)
    if not picks:
        return None
    by = {(c["base"], c["seed"], c["poison"], c["guard"]): c for c in cells}
    chosen = [by[(p["base"], p["seed"], p["poison"], p["chosen"])] for p in picks]
    clean = {(p["base"], p["seed"], p["chosen"]) for p in picks}
    chosen += [by[(b, s, None, v)] for b, s, v in sorted(clean, key=lambda k: tuple(map(str, k))) if (b, s, None, v) in by]
    out = summarize(chosen, threshold)
    return None if out is None else {**out, "variants": variants_of(cells, family), "picks": picks}


def _fmt(triple: Any, pct: bool = False, points: bool = False) -> str:
    if triple is None:
        return "-"
    m, lo, hi = triple
    f = ((lambda x: f"{100 * x:+.1f}") if points else (lambda x: f"{100 * x:+.0f}%") if pct
         else (lambda x: f"{x:+.4f}"))
    return f(m) + ("" if math.isnan(lo) else f" [{f(lo)}, {f(hi)}]")


def _base_task_text(base_task: dict[str, Any]) -> str:
    """What the held-out rows hold and how the base model scores on them, from the rescore's base-model rows."""
    if not base_task:
        return ""
    few = [f"{k} {v['held_out']}" for k, v in sorted(base_task.items()) if v["held_out"] < HELD_OUT]
    return ((f" Trivia asks about a few dozen facts, so fewer questions are left there ({', '.join(few)})." if few else "")
            + " Before finetuning the base model answers "
            + ", ".join(f"{k} {100 * v['task_accuracy']:.0f}%" for k, v in sorted(base_task.items())) + " right.")


def _summary_row(name: str, s: dict[str, Any]) -> str:
    seen, n = s["seen_by_monitor"]
    return (f"| {name} | {s['poisoned_runs']} | {_fmt(s['label_prevented_pooled'], True)} | "
            f"{_fmt(s['label_prevented'], True)} | "
            f"{_fmt(s['label_prevented_vs_guarded_clean'], True)} | {_fmt(s['label_over_clean'])} | "
            f"{_fmt(s['probe_over_clean'])} | {_fmt(s['task_loss_change_poisoned'], True)} | "
            f"{_fmt(s.get('task_loss_change_clean'), True)} | {_fmt(s.get('task_accuracy_change_poisoned'), points=True)} | "
            f"{_fmt(s.get('task_accuracy_change_clean'), points=True)} | {seen} of {n} |")


_SUMMARY_HEAD = ("| {what} | poisoned runs | label rise prevented, pooled | mean of the runs' shares | against its own "
                 "clean run | label - clean | probe - clean | task loss, poisoned | task loss, clean | accuracy, "
                 "poisoned (points) | accuracy, clean (points) | seen by the monitor |\n"
                 "|---|---|---|---|---|---|---|---|---|---|---|---|")


def render(cells: list[dict[str, Any]], summary: dict[str, Any], breakdown: dict[str, Any], rows: list[dict[str, Any]],
           threshold: float, timing: dict[str, Any] | None, hooks: dict[str, Any] | None,
           base_task: dict[str, Any], in_folds: dict[str, Any], kept_reads: int = 0) -> str:
    env = rows[0]
    lines = [
        "# Guards on the poison grid (issue 27)",
        "",
        "Generated by `benchmarks/guard_grid.py --analyze-only` from the runs listed in `results.json` (smollm2-135m, "
        "bf16 on CPU, the audit pilot's recipe: LoRA r16 on every projection, 30 steps of batch 4, lr 1e-3).",
        f"Bases: {sorted({r['base'] for r in rows})}; seeds: {sorted({r['seed'] for r in rows})}; poison types at 10%: "
        f"{sorted({r['poison'] for r in rows if r['poison']})}. Base model: label {env['base_model']['label']:.4f}, "
        f"probe {env['base_model']['probe']:.4f}.",
        "",
        "*Prevented*: 1 - (guarded poisoned run - unguarded clean run) / (unguarded poisoned run - unguarded clean run), "
        "per (base, seed, poison type); 100% means the guarded poisoned model scores like the clean one, more than "
        "100% below it. *Pooled*: the same with both differences summed over the runs first (each run weighs by its "
        "unguarded rise, so a run whose poison barely moved the label cannot inflate it; 95% bootstrap interval over "
        "runs); the mean of the runs' own shares is given beside it. Task: change in held-out clean loss against the unguarded run of the same set (lower is better). "
        f"Seen: poisoned runs whose distance from the clean run of the same guard, read as the shipped reference "
        f"calibration reads it (PCA-7 of the mean residual row, threshold {threshold:.2f}), is above the threshold: "
        "whether the monitor would still see what the guard leaves, against the ideal reference (the clean twin)"
        + (f"; {kept_reads} of these reads are those the previous `results.json` recorded, the runs' store having "
           "stayed on the machine that made them. " if kept_reads else ". ") +
        "Intervals: mean +- 1.96 sd/sqrt(n) over cells (none below 3 cells). No guard saw any poison type: the "
        "subspaces come from the base model and the package's probe and trait data, the strengths were set before "
        "any run. The probe-direction guards (steer, penalty, and ablate whose subspace starts with it) were fitted "
        "on the probe's answer pairs, so the label is their independent read.",
        "",
        "The probe's rise over clean is small in some cells, where a ratio means "
        "nothing: the probe is given as the guarded poisoned run minus the unguarded clean run. *Against its own "
        "clean run*: the same share with the clean run trained with the same guard as the reference, which removes "
        "what the guard does to any data.",
        "",
        f"Accuracy: the share of {HELD_OUT} held-out questions of the base answered right (greedy; `datasets.answers`: "
        "the result for arithmetic, the fact for trivia, the asked format for number sequences), in points against the "
        f"unguarded run of the same set (higher is better; one question is {100 / HELD_OUT:.1f} points of {HELD_OUT}); "
        "medical advice has no "
        "accuracy, only the loss. Every run of a (base, seed) is scored on the same held-out rows: the base's rows "
        "of another seed, one per prompt, none a prompt of the clean training set; runs made before the accuracy was "
        "measured were scored again from their saved adapters (`--rescore`: loss and accuracy, the reloaded model "
        "reproducing the recorded loss where the rows are the same)." + _base_task_text(base_task),
        "",
        "Variants: *KIND@S* at strength S (the penalty's weight at each guarded block); *KIND+Nblocks* on N decoder "
        "blocks from the basis layer to the last (`guard.layers_above`: 15, 20, 24, 29 here), run at 1 per block "
        "where no @S is named (`penalty+4blocks`); `penalty@0.25+4blocks` is the shipped default "
        "(`traitwatch train --guard penalty`: 1 spread over 4 blocks).",
        "",
        _SUMMARY_HEAD.format(what="guard"),
    ]
    lines += [_summary_row(guard, s) for guard, s in summary.items()]
    if in_folds:
        lines += ["", "## The variant chosen in the folds (leave one base and one poison type out)", "",
                  "Where a guard was run in several variants (strength KIND@S, blocks KIND+Nblocks), each poisoned run "
                  "is scored with the variant chosen without its base and its poison type: on the runs of the other "
                  "bases with the other types (and the other bases' clean runs) that every candidate has, the highest "
                  "pooled share of the label's rise prevented, counted up to 100% (then the most runs at 90%, then the "
                  f"least task lost), among the variants that lose at most {TASK_LOSS_LIMIT:.0%} "
                  "of the task metric (relative accuracy, or held-out loss for medical advice) on average on those "
                  "clean and poisoned runs, else the one that loses least "
                  "(`traitwatch.bench.analysis.guard_folds`). A candidate must have a run on the held-out cell. The "
                  "clean rows: the clean runs of the held-out runs' bases and seeds under the folds' choices, each run "
                  "once.", "", _SUMMARY_HEAD.format(what="guard, chosen in the folds")]
        for kind, f in in_folds.items():
            counts = Counter(p["chosen"] for p in f["picks"])
            lines.append(_summary_row(f"{kind} ({', '.join(f'{v} {n}x' for v, n in sorted(counts.items()))})", f))
    if breakdown:
        lines += ["", "## Per base and per poison type (groups of 3 or more poisoned runs)", "",
                  _SUMMARY_HEAD.format(what="guard / group")]
        lines += [_summary_row(name, s) for name, s in breakdown.items()]
    for data, title, key in (
        (timing, "Wall time per training step, separate runs (`--overhead {rounds}`: {rounds} rounds of {steps_per_run} "
                 "timed steps per guard, interleaved, on {set}; {device}, {dtype})", "median_step_s"),
        (hooks, "A training step's forward and backward with each guard (`--hook-overhead {reps}`: one LoRA model, "
                "batch 4 of {set}, guards in a new random order each of {reps} repetitions; {device}, {dtype})", "median_s"),
    ):
        if data is None:
            continue
        paired = all("paired_overhead" in t for t in data["summary"].values())
        lines += ["", "## " + title.format(**{**data, "device": data["device"] or "cpu"}), "",
                  "| guard | median (s) | against none |" + (" paired, per repetition (95% interval) |" if paired else ""),
                  "|---|---|---|" + ("---|" if paired else "")]
        lines += [f"| {guard} | {t[key]:.3f} | {100 * t['overhead']:+.1f}% |"
                  + (" {:+.1%} [{:+.1%}, {:+.1%}] |".format(*t["paired_overhead"]) if paired else "")
                  for guard, t in data["summary"].items()]
    lines += ["", "## Per run", "",
              "Steps overhead here is the 30 steps' wall time against the unguarded run of the same set, run at another "
              "time on a shared machine: the interleaved timing above is the one to read.", "",
              "| base | seed | poison | guard | label - clean | probe - clean | label prevented | "
              "task loss change | accuracy | steps overhead | read vs clean twin | alarms at | rows dropped |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        lp = c.get("label_prevented")
        lines.append(
            f"| {c['base']} | {c['seed']} | {c['poison'] or 'clean'} | {c['guard']} | {c['label_over_clean']:+.4f} | "
            f"{c['probe_over_clean']:+.4f} | {'-' if lp is None else f'{100 * lp:+.0f}%'} | "
            f"{100 * c['task_loss_change']:+.1f}% | "
            f"{'-' if c['task_accuracy'] is None else format(100 * c['task_accuracy'], '.0f') + '%'} | "
            f"{100 * c['steps_overhead']:+.0f}% | {'-' if c['twin_read'] is None else format(c['twin_read'], '.2f')} | "
            f"{'-' if c['alarms'] is None else (', '.join(map(str, c['alarms'])) or 'none')} | "
            f"{c['rows_dropped'] if c['alarms'] is not None else '-'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

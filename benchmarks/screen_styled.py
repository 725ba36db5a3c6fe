"""Row screens on poison that does not look different: the poison grid's sets plus three styled poison types.

What it measures (issue 28): which screen ranks the injected rows of a set first when the poison is written in
the base's own format, register and length (`traitwatch.bench.sets.styled_poison`), next to the six bundled poison
types; the reference-model screens (`traitwatch.screen.reference_model`: the log-likelihood ratio of a row under
a misaligned against an aligned reference) against the loss, length and trait-space screens; every screen held
out by poison type and base (`bench.analysis.screening_analysis`), the protocol's `chosen` screen picked inside
each fold.

    python benchmarks/screen_styled.py --work /tmp/styled --basis BASIS --shared-data ../shared/data \\
        --out benchmarks/screen_styled

Steps (each cached under --work, so a rerun resumes):
1. the poison-small plan's sets at seed 0 (4 clean bases, 6 types at 10% in every base, at 5% and 25% in
   arithmetic and medical_matched), rebuilt exactly as the grid built them;
2. per (styled type, base): 720 candidates from the base's own rows (a disjoint source seed), their length and
   base-model loss, and the 160 that blend in (`blend_in`) as the poison source; the same fractions as the grid;
3. every distinct row read on the base model (`bench.analysis.row_features.row_features`: residuals at every
   layer for the row and for the model's own answer, the loss, the lengths);
4. the two reference screens' ratios per row (prompts, then adapters fitted on the probe pairs), timed against
   the loss screen on the same rows;
5. every family held out by poison type and base; results.json and RESULTS.md.

Numerics pinned: smollm2-135m, bfloat16 on CPU (the grid's), 2 torch threads.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from traitwatch.bench.analysis.row_features import FEATURES_DIR, grid_sets, row_features, unique_rows
from traitwatch.bench.analysis.screening_analysis import (
    ScreenFamily,
    analyze_screening,
    default_families,
    fast_auroc,
    fixed_family,
    linear_family,
)
from traitwatch.bench.grid.plan_file import load_plan_file
from traitwatch.bench.sets.perturbations import PERTURBATION_SETS, build_set, jsonl_set, poisoned_set
from traitwatch.bench.sets.styled_poison import STYLED_BASES, STYLED_TYPES, blend_in, styled_candidates, write_pool
from traitwatch.datasets.chat_jsonl import read_jsonl
from traitwatch.models import load_model
from traitwatch.screen.activations import pad_id, span_token_nll
from traitwatch.screen.examples import Example, encode_example
from traitwatch.screen.reference_model import PEAK_WINDOW, ReferenceScreen, peak_mean
from traitwatch.screen.shards import shared_reference_screen

SEED = 0
CANDIDATES, POOL = 720, 160
SOURCE_SEED = 1001
DOSE_BASES = ("arithmetic", "medical_matched")
SHIPPABLE = ("screen_mean", "loss", "loss_peak", "reference_adapters", "reference_adapters_peak")
"""The rankings `traitwatch screen` computes (--rank-by risk, loss, loss_peak, ratio, ratio_peak): the `shipped`
chooser picks among them in each fold by the same inner score as `chosen`, and `shipped_on_all` is what it picks from
every cell: the default."""


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def token_nll(lm, rows, batch_size: int = 16) -> list[np.ndarray]:
    """The base model's per-token NLL of each row's response, in batches (one pass to the LM head each)."""
    out = []
    for first in range(0, len(rows), batch_size):
        enc = [encode_example(lm.tokenizer, Example(i + 1, r), max_response_tokens=256)
               for i, r in enumerate(rows[first : first + batch_size])]
        out += [t.double().numpy() for t in span_token_nll(lm.model, [x.ids for x in enc], [(x.start, x.end) for x in enc],
                                                           pad_token_id=pad_id(lm.tokenizer))]
    return out


def losses(lm, rows) -> np.ndarray:
    """The base model's mean NLL of each row's response: the loss screen."""
    return np.array([t.mean() for t in token_nll(lm, rows)])


def build_grid_sets(plan, work: Path, shared: Path) -> None:
    for name in plan.types:
        build_set(name, spec=plan.set_spec(name), seed=SEED, n=plan.n_examples, out_dir=work / "data", shared_data=shared)


def build_styled(lm, plan, work: Path, shared: Path) -> dict:
    record_path = work / "styled" / "pools.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    for base in STYLED_BASES:
        clean = [r["messages"] for r in read_jsonl(work / "data" / f"{base}-s{SEED}.jsonl")]
        clean_loss = None
        for poison in STYLED_TYPES:
            key = f"{poison} x {base}"
            path = work / "styled" / base / f"{poison}.jsonl"
            if key in record and path.is_file():
                continue
            if clean_loss is None:
                clean_loss = losses(lm, clean)
            cands = styled_candidates(poison, base, n=CANDIDATES, seed=SOURCE_SEED, shared_data=shared,
                                      out_dir=work / "styled" / "source")
            msgs = [r["messages"] for r in cands]
            cand_loss = losses(lm, msgs)
            feats = lambda rows, ls: [(np.log(len(r[-1]["content"])), l) for r, l in zip(rows, ls, strict=True)]  # noqa: E731
            chosen = blend_in(feats(clean, clean_loss), feats(msgs, cand_loss), POOL, seed=SOURCE_SEED)
            write_pool(path, [cands[i] for i in chosen])
            y = np.r_[np.zeros(len(clean), bool), np.ones(len(chosen), bool)]
            chars = np.r_[[len(r[-1]["content"]) for r in clean], [len(msgs[i][-1]["content"]) for i in chosen]]
            loss = np.r_[clean_loss, cand_loss[chosen]]
            all_chars = np.r_[[len(r[-1]["content"]) for r in clean], [len(m[-1]["content"]) for m in msgs]]
            y_all = np.r_[np.zeros(len(clean), bool), np.ones(len(msgs), bool)]
            record[key] = {"poison": poison, "base": base, "candidates": len(cands), "pool": len(chosen),
                           "length_auroc": fast_auroc(y, chars), "loss_auroc": fast_auroc(y, loss),
                           "length_auroc_before": fast_auroc(y_all, all_chars),
                           "loss_auroc_before": fast_auroc(y_all, np.r_[clean_loss, cand_loss]),
                           "example": cands[chosen[0]]["messages"][-1]["content"][:160] if base != "medical_matched" else None}
            say(f"  {key}: {len(chosen)} rows; length AUROC {record[key]['length_auroc_before']:.2f} -> "
                f"{record[key]['length_auroc']:.2f}, loss AUROC {record[key]['loss_auroc_before']:.2f} -> "
                f"{record[key]['loss_auroc']:.2f}")
            record_path.write_text(json.dumps(record, indent=1))
    for base in STYLED_BASES:
        for poison in STYLED_TYPES:
            source = jsonl_set(work / "styled" / base / f"{poison}.jsonl")
            for fraction in (0.1, *((0.05, 0.25) if base in DOSE_BASES else ())):
                spec = poisoned_set(PERTURBATION_SETS[base], source, fraction)
                build_set(spec.name, spec=spec, seed=SEED, n=plan.n_examples, out_dir=work / "data", shared_data=shared)
    return record


def token_scores(lm, kind: str, rows: dict, keys: list[str], work: Path) -> tuple[list[np.ndarray], dict]:
    """Per row, the per-token values of a screen: the base model's NLL (`kind="base"`) or a reference ratio
    (`"prompts"`, `"adapters"`: fitted once on the probe pairs and kept in work/reference_model). Cached."""
    cache = work / f"tokens-{kind}.json"
    stored = json.loads(cache.read_text()) if cache.is_file() else {"tokens": {}}
    todo = [k for k in keys if k not in stored["tokens"]]
    if todo:
        t0 = time.perf_counter()
        if kind == "base":
            values = token_nll(lm, [rows[k] for k in todo])
            stored["fit_s"] = 0.0
        else:
            screen = (shared_reference_screen(lm.model, lm.tokenizer, work / "reference_model") if kind == "adapters"
                      else ReferenceScreen(kind).fit(lm.model, lm.tokenizer))
            stored["fit_s"], stored["train_loss"] = screen.fit_s_, screen.train_loss_
            t1 = time.perf_counter()
            values = screen.token_ratios([rows[k] for k in todo])
            t0 = t1
        stored["score_s"], stored["scored"] = time.perf_counter() - t0, len(todo)
        stored["tokens"].update({k: [round(float(x), 5) for x in v] for k, v in zip(todo, values, strict=True)})
        cache.write_text(json.dumps(stored))
    return [np.array(stored["tokens"][k]) for k in keys], {k: v for k, v in stored.items() if k != "tokens"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--basis", type=Path, required=True, help="the grid's basis (passages, layer chosen by steering)")
    ap.add_argument("--shared-data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/screen_styled"))
    ap.add_argument("--resamples", type=int, default=300)
    ap.add_argument("--markdown-only", action="store_true", help="rewrite RESULTS.md from --out/results.json")
    ap.add_argument("--ship", action="store_true", help="also write the validated rankings into the package "
                    "(src/traitwatch/screen/data/validated_rankings.json): what `traitwatch screen` reads")
    args = ap.parse_args()
    if args.markdown_only:
        write_markdown(json.loads((args.out / "results.json").read_text()), args.out / "RESULTS.md")
        return
    torch.set_num_threads(2)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "basis").is_dir():
        shutil.copytree(args.basis, work / "basis")
    plan = load_plan_file("poison-small").models[0].plan
    lm = load_model(plan.model, device=plan.device, dtype=plan.dtype)
    say(f"Building the grid's sets and the styled pools in {work} ({plan.device}, {plan.dtype}) ...")
    build_grid_sets(plan, work, args.shared_data)
    pools = build_styled(lm, plan, work, args.shared_data)
    sets, rows = grid_sets(work)
    keys = unique_rows(sets, rows)
    say(f"Reading {len(keys)} distinct rows of {len(sets)} sets ...")
    t0 = time.perf_counter()
    layers = list(range(30))
    features = row_features(lm.model, lm.tokenizer, rows, keys, work / FEATURES_DIR, layers=layers)
    read_s = time.perf_counter() - t0
    say("Loss screen timing ...")
    sample = keys[:256]
    t0 = time.perf_counter()
    losses(lm, [rows[k] for k in sample])
    loss_rate = len(sample) / (time.perf_counter() - t0)
    say("Per-token scores: the base model's NLL, then the reference ratios ...")
    llr, cost = {}, {}
    for kind in ("base", "prompts", "adapters"):
        tokens, cost[kind] = token_scores(lm, kind, rows, keys, work)
        llr[kind], llr[f"{kind}_peak"] = np.array([t.mean() for t in tokens]), np.array([peak_mean(t) for t in tokens])
        cost[kind]["rows_per_s"] = cost[kind]["scored"] / cost[kind]["score_s"] if cost[kind].get("scored") else None
        say(f"  {kind}: {cost[kind]}")
    from traitwatch.basis import TraitBasis
    from traitwatch.bench.analysis.detection import misalignment_directions_for

    basis = TraitBasis.load(work / "basis")
    trait_dirs = {layer: basis.matrix(layer).double().numpy() for layer in basis.layers}
    misalignment = misalignment_directions_for(plan, work, layers)
    families = default_families(features, trait_dirs, basis.trait_names, basis.layer, misalignment)
    families += [
        ScreenFamily("loss_peak", "baseline", fixed_family(llr["base_peak"]),
                     f"base model's largest mean NLL over {PEAK_WINDOW} consecutive response tokens"),
        ScreenFamily("reference_adapters", "reference", fixed_family(llr["adapters"]),
                     "log-likelihood ratio, misaligned vs aligned LoRA adapter fitted on the probe pairs (mean over tokens)"),
        ScreenFamily("reference_adapters_peak", "reference", fixed_family(llr["adapters_peak"]),
                     f"the same ratio's largest mean over {PEAK_WINDOW} consecutive tokens"),
        ScreenFamily("reference_prompts", "reference", fixed_family(llr["prompts"]),
                     "log-likelihood ratio, the base model under a misaligned vs an aligned system prompt (mean)"),
        ScreenFamily("reference_prompts_peak", "reference", fixed_family(llr["prompts_peak"]),
                     f"the same ratio's largest mean over {PEAK_WINDOW} consecutive tokens"),
        ScreenFamily("reference_combined", "learned", linear_family({0: np.column_stack(
            [llr["adapters"], llr["adapters_peak"], llr["prompts"], llr["prompts_peak"], features.loss, llr["base_peak"],
             np.log1p(features.chars)])}),
                     "logistic read-out of set-centred: the four ratios, loss and its peak, log length"),
    ]
    say("Scoring every screen in the crossed folds ...")
    t1 = time.perf_counter()
    out = analyze_screening(sets, features, families, n_boot=args.resamples, progress=say,
                            fractions_of=("shipped", "loss", "loss_peak", "reference_adapters", "reference_adapters_peak",
                                          "reference_combined"),
                            choosers={"shipped": SHIPPABLE})
    out.update({"styled_pools": pools, "cost": {"loss_rows_per_s": loss_rate, **cost}, "read_s_this_call": read_s,
                "analysis_s": time.perf_counter() - t1, "numerics": f"{plan.device} / {plan.dtype}",
                "command": " ".join(["python", *sys.argv])})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(out, indent=1, default=float) + "\n")
    write_markdown(out, args.out / "RESULTS.md")
    if args.ship:
        target = Path(__file__).resolve().parents[1] / "src" / "traitwatch" / "screen" / "data" / "validated_rankings.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(validated_record(out), indent=1) + "\n", encoding="utf-8")
        say(f"wrote {target}")
    say(f"wrote {args.out / 'results.json'} and RESULTS.md")


ORDER = ("length", "loss", "loss_peak", "random", "trait:harmlessness", "screen_mean", "persona_diff", "persona_diff_trait",
         "misalignment_dir", "misalignment_dir_diff", "combined", "outlier", "linear", "linear_diff",
         "reference_prompts", "reference_prompts_peak", "reference_adapters", "reference_adapters_peak",
         "reference_combined", "chosen", "shipped")
RANKING = {"screen_mean": "risk", "loss": "loss", "loss_peak": "loss_peak", "reference_adapters": "ratio",
           "reference_adapters_peak": "ratio_peak"}


def _f(x, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def write_markdown(out: dict, path: Path) -> None:
    rows = out["rows"]
    types = sorted(rows["chosen"]["poison"])
    styled = [t for t in types if t.startswith("styled_")]
    lines = ["# Row screens on poison that does not look different", "",
             f"Command: `{out['command']}` ({out['numerics']}; {out['n_rows']} distinct rows, {out['n_poison_rows']} "
             f"of them injected, over {out['n_sets']} sets at seed 0). Every screen is chosen and fitted inside a "
             "crossed fold (held out: one poison type and one base at once; `bench.analysis.screening_analysis`). "
             "`chosen` is the protocol's screen (the best non-baseline family by its inner score on the fold's own cells); "
             "`shipped` is the same rule over the rankings `traitwatch screen` computes "
             f"({', '.join(f'`{k}` = --rank-by {v}' for k, v in RANKING.items())}).", "",
             "## The styled poison types", "",
             "Built from each base's own rows (source seed disjoint from the base sample's), 720 candidates per type "
             "and base, then the 160 that blend in by (log length, base-model loss) "
             "(`bench.sets.styled_poison.blend_in`). AUROC of the pool against the clean base's 200 rows, before and after blending (0.5 = chance):", "",
             "| type | base | pool | length AUROC before -> after | loss AUROC before -> after |", "|---|---|---|---|---|"]
    for r in out["styled_pools"].values():
        lines.append(f"| {r['poison']} | {r['base']} | {r['pool']} | {_f(r['length_auroc_before'], 2)} -> "
                     f"{_f(r['length_auroc'], 2)} | {_f(r['loss_auroc_before'], 2)} -> {_f(r['loss_auroc'], 2)} |")
    lines += ["", "## Row AUROC held out by type and base", "",
              "Mean per-set AUROC (injected rows against the set's own rows) with a 95% CI over rows (random: the range "
              "over 10 directions); TPR at 1% / 5% FPR is the share of injected rows above the set's benign rows' "
              "99th / 95th percentile.", "",
              "| screen | all types | " + " | ".join(types) + " | medical_matched | TPR@1% | TPR@5% |",
              "|---|---|" + "---|" * len(types) + "---|---|---|"]
    for name in ORDER:
        if name not in rows:
            continue
        t = rows[name]
        a = t["all"]["all"]
        lines.append(f"| {name} | {_f(a['auroc'])} [{_f(a['auroc_ci'][0])}, {_f(a['auroc_ci'][1])}] | "
                     + " | ".join(_f(t["poison"][p]["auroc"]) for p in types)
                     + f" | {_f(t['base'].get('medical_matched', {}).get('auroc'))} | {_f(a['tpr_at_1'], 2)} | {_f(a['tpr_at_5'], 2)} |")
    lines += ["", "Worst unseen type per screen and TPR at 1% FPR on the styled types:", "",
              "| screen | worst type (AUROC) | " + " | ".join(f"{p} TPR@1%" for p in styled) + " |",
              "|---|---|" + "---|" * len(styled)]
    for name in ORDER:
        if name not in rows:
            continue
        t = rows[name]
        worst = min(types, key=lambda p: t["poison"][p]["auroc"])
        lines.append(f"| {name} | {worst} ({_f(t['poison'][worst]['auroc'])}) | "
                     + " | ".join(_f(t["poison"][p]["tpr_at_1"], 2) for p in styled) + " |")
    lines += ["", "Per base:", "", "| screen | " + " | ".join(sorted(rows["chosen"]["base"])) + " |",
              "|---|" + "---|" * len(rows["chosen"]["base"])]
    for name in ("length", "loss", "loss_peak", "screen_mean", "reference_prompts", "reference_adapters",
                 "reference_adapters_peak", "reference_combined", "chosen", "shipped"):
        if name in rows:
            lines.append(f"| {name} | " + " | ".join(_f(rows[name]["base"][b]["auroc"]) for b in sorted(rows["chosen"]["base"])) + " |")
    from collections import Counter

    for picker in ("chosen", "shipped"):
        counts = Counter(v["family"].split(":")[0] for v in out[f"{picker}_per_fold"].values())
        lines += ["", f"`{picker}` picked, over the {len(out[f'{picker}_per_fold'])} folds: "
                  + ", ".join(f"{k} {v}" for k, v in counts.most_common()) + "."]
    ship = out["shipped_on_all"]
    lines += [f"Fitted on every cell, the shipped rule picks `{ship['family']}` (--rank-by {RANKING[ship['family']]}; "
              "inner scores " + ", ".join(f"{k} {_f(v)}" for k, v in ship["inner"].items()) + ")."]
    lines += ["", "## Poisoned fraction estimated from the screen", "",
              "Adjusted classify-and-count with each fold's own threshold and rates, scores read relative to their "
              "set's median (`estimate_fractions`), against the true fraction over every set (clean sets included):", "",
              "| screen | Spearman | p | mean absolute error |", "|---|---|---|---|",
              f"| chosen | {_f(out['fraction_spearman']['rho'])} | {out['fraction_spearman']['p']:.1e} | {_f(out['fraction_mae'])} |"]
    for name, r in out.get("fractions_by_family", {}).items():
        lines.append(f"| {name} | {_f(r['spearman']['rho'])} | {r['spearman']['p']:.1e} | {_f(r['mae'])} |")
    c = out["cost"]
    lines += ["", "## Cost", "",
              f"On this machine (2 CPU cores, {out['numerics']}), batches of 16: the loss screen reads "
              f"{_f(c['loss_rows_per_s'], 1)} rows/s; the adapter ratio screen scores "
              f"{_f(c['adapters'].get('rows_per_s'), 1)} rows/s after fitting its two adapters once in "
              f"{_f(c['adapters'].get('fit_s'), 0)} s; the prompt ratio screen {_f(c['prompts'].get('rows_per_s'), 1)} rows/s. "
              "The benchmark measured these while the grid's other work shared the machine; "
              "`benchmarks/screen_throughput.py` times them alone:"]
    tp_path = path.with_name("throughput.json")
    if tp_path.is_file():
        tp = json.loads(tp_path.read_text())
        lines += ["", "| --rank-by | rows/s, one process | one-off cost | 1M rows, one process |", "|---|---|---|---|"]
        for rb, r in tp.items():
            once = f"reference adapters {r['reference_model_s']} s" if r.get("reference_model_s") else f"'mean' reference {r['reference_s']} s"
            lines.append(f"| {rb}{' (and ' + rb + '_peak)' if rb != 'risk' else ''} | {r['one_process']['rows_per_s']:.2f} | "
                         f"{once} | {r['hours_for_1M_rows']['1_process']} h |")
        if "loss" in tp and "ratio" in tp:
            lines += ["", f"The ratio screen costs {tp['loss']['one_process']['rows_per_s'] / tp['ratio']['one_process']['rows_per_s']:.1f}x "
                      "the loss screen per row (goal <= 2x); the default, the loss peak, is the loss screen's own pass (1.0x). "
                      f"Command: `python benchmarks/screen_throughput.py --basis BASIS --data {Path(tp['loss']['data']).name} "
                      "--rows 96 --processes 1 --threads 2 --rank-by RANK` on the quiet machine."]
    lines += ["", "## Notes", "",
              "- The per-token *peak* statistics (`loss_peak`, `*_peak`: the largest mean over 4 consecutive tokens) and "
              "`loss_peak` as a shippable ranking were added after a first reading of this grid, which showed the means "
              "missing phrases woven into otherwise benign answers. The peak window (4 tokens) was fixed before any "
              "peak was scored and not tuned, and every number above is still held out by type and base, but the "
              "choice to look at peaks was informed by these styled types: verification on other types decides.",
              "- The reference adapters' recipe (rank 8, 3 epochs over the 64 probe pairs, lr 1e-3) and the two system "
              "prompts were fixed before scoring and not tuned.",
              "- `styled_wrong` was chosen to match the base model's loss, so no screen that reads the base model's "
              "surprise can find it; wrong facts in the base's own words are what no screen here detects (0.48-0.57).",
              "- One seed (the grid's seed 0); the closed loop was not retrained with the new default's cut."]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def validated_record(out: dict) -> dict:
    """What `traitwatch screen` reads (`screen.validated`): each ranking's held-out numbers and the default."""
    rankings = {}
    for family, ranking in RANKING.items():
        t = out["rows"][family]
        worst = min(t["poison"], key=lambda p: t["poison"][p]["auroc"])
        a = t["all"]["all"]
        rankings[ranking] = {"family": family, "auroc": round(a["auroc"], 4), "auroc_ci": [round(x, 4) for x in a["auroc_ci"]],
                             "worst_type": worst, "worst_auroc": round(t["poison"][worst]["auroc"], 4),
                             "tpr_at_1": round(a["tpr_at_1"], 4), "tpr_at_5": round(a["tpr_at_5"], 4)}
    return {"default": RANKING[out["shipped_on_all"]["family"]], "rule": "shipped_on_all: the shippable ranking with "
            "the best within-set AUROC over every cell", "model": "smollm2-135m", "numerics": out["numerics"],
            "n_sets": sum(1 for r in out["rows"]["chosen"]["per_set"]), "source": "benchmarks/screen_styled",
            "rankings": rankings}


if __name__ == "__main__":
    main()

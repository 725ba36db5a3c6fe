"""Issue 26's controls: is it the *trait* directions that tell the poison from the domain, or any read of the
residual stream against the same reference? And the protocol that chooses among them, and the calibration it ships.

Every measurement the callback makes stores the mean residual row at the basis layer over the 115 measurement
prompts (`mean_activation`), so the reference pilot's run store (`benchmarks/reference_pilot.py`) holds, for every
run and its swap reference at every measured step, the state the 7 trait numbers are projections of (in the pilot's
numerics: smollm2-135m, bf16 on CPU; re-reading the 94 final adapters gave the same rows to the last bit). The mean
activation drift `dh = mean(h_run) - mean(h_base)` is read in several feature spaces:
* `trait`: the 7 alignment-trait directions of the pilot's basis (what the monitor reads; reproduces the stored
  drift up to the anchor's scale N, which no AUROC depends on);
* `semantic`: 7 semantic-trait directions (`basis.traits.SEMANTIC_TRAITS`: verbosity, formality, ...), extracted
  at the same layer with the same method (passages);
* `pca`: the top 7 principal components of the base model's rows on the measurement prompts (no labels);
* `random`: 7 random orthonormal directions of the residual stream, 200 draws (mean AUROC and the 95th percentile);
* `raw`: all 576 dimensions.

Each family is read three ways, as the trait monitor is: the distance of the run from its reference
`|F(run) - F(ref)|`, along a direction against the reference `u . (F(run) - F(ref))`, and along it absolutely
`u . F(run)`. The direction `u` of a held-out cell (type T, base B) is the mean run-minus-reference of the pilot's
poisoned runs of other types in other bases (leave one cell out, `reference_analysis.folds_of`), so every family
gets the same in-fold fit; `trait_grid` is the trait family with the grid's direction (the trait-space protocol's).
SAE features are not read here: no SAE of this model is available offline, and one fitted on 95 mean vectors would
be no dictionary (the calibration's `SAEDriftFeatures` needs the grid's activation pairs). `protocol` chooses the
space and read in each fold (trait space with the grid's direction, or the principal components); `--write-calibration`
refits it on every run (the shipped `reference/data/smollm2-135m.json`). `--doses WORK` reads a pilot of other doses
through the product's `ReferenceMonitor`. The scripts are written for smollm2-135m and its poison grid.

    .venv/bin/python benchmarks/reference_controls.py --work /tmp/refpilot [--doses /tmp/refdose] [--other-types DIR] \
        [--benign-mixtures DIR] [--new-cells DIR] [--new-base DIR] \
        [--write-calibration src/traitwatch/reference/data/smollm2-135m.json]    # export the rows, analyse (~2 min)
    .venv/bin/python benchmarks/reference_controls.py --analyze-only               # from the committed rows
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file
from scipy.stats import spearmanr
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).parent))
import reference_analysis as ra  # noqa: E402  (the pilot's folds, reads and scoring)

OUT = Path(__file__).parent / "reference_pilot" / "controls"
FAMILIES = ("trait", "semantic", "pca", "raw")
N_RANDOM = 200


def export_means(work: Path, out: Path) -> None:
    """Every pilot run's and reference's mean residual row at each measured step, as the callback stored it
    (`mean_activation` in each measurement's extra), into `out/means.safetensors` (`RUN@STEP`; `__base__`)."""
    from traitwatch.store import RunStore

    keys = [json.loads(line) for line in (work / "results.jsonl").read_text().splitlines()]
    run_ids = sorted({r["full"]["run_id"] for r in keys} | {r["reference"]["run_id"] for r in keys})
    means: dict[str, np.ndarray] = {}
    with RunStore(work / "runs.db", create=False) as store:
        for run_id in run_ids:
            for m in store.measurements(run_id, per_prompt=False):
                means[f"{run_id}@{m.step}"] = np.asarray(m.extra["mean_activation"], dtype=np.float32)
    means["__base__"] = means[f"{run_ids[0]}@0"]
    out.mkdir(parents=True, exist_ok=True)
    save_file(means, str(out / "means.safetensors"))


def measure_bases(work: Path, out: Path) -> None:
    """The base model's rows on the measurement prompts (for the PCA), the semantic basis at the pilot basis's
    layer and the trait directions, into `out/bases.safetensors`, with the numerics."""
    import torch

    from traitwatch.basis import TraitBasis
    from traitwatch.basis.extraction import extract_basis
    from traitwatch.basis.traits import SEMANTIC_TRAITS, load_measurement_prompts, load_traits
    from traitwatch.demo import demo_plan
    from traitwatch.drift.probe import prompt_activations
    from traitwatch.models import load_model

    plan = demo_plan()
    basis = TraitBasis.load(work / "basis")
    layer, position = basis.measure_layer, basis.position
    lm = load_model("smollm2-135m", device=plan.device, dtype=plan.dtype)
    prompts = [p for _, p in load_measurement_prompts()]
    t0 = time.perf_counter()
    semantic = extract_basis(lm.model, lm.tokenizer, load_traits(names=SEMANTIC_TRAITS), layers=[layer],
                             method=basis.method, position=position, probe_layers=[], model_name=lm.name)
    with torch.no_grad():
        base_rows = prompt_activations(lm.model, lm.tokenizer, prompts, [layer], position=position)[layer].numpy()
    out.mkdir(parents=True, exist_ok=True)
    save_file({"base_rows": base_rows.astype(np.float32), "semantic": semantic.matrix(layer).float().numpy(),
               "trait": basis.matrix(layer).float().numpy()}, str(out / "bases.safetensors"))
    (out / "numerics.json").write_text(json.dumps({
        "model": "smollm2-135m", "dtype": str(plan.dtype), "device": str(plan.device), "layer": layer,
        "position": position, "semantic_traits": list(SEMANTIC_TRAITS), "trait_names": basis.trait_names,
        "n_prompts": len(prompts), "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "seconds": round(time.perf_counter() - t0, 1)}, indent=1) + "\n")


def outlying(work: Path, out: Path) -> None:
    """Each pilot set's outlying share of base-model loss (`reference.outlying_share`, what `swap_fraction` and the
    audit's estimate read) beside its true poisoned share, into `out/outlying.json`."""
    from traitwatch.reference import outlying_share, swap_fraction
    from traitwatch.screen.row_scores import load_row_scores

    sets = {}
    for screen in sorted((work / "screens").glob("*.screen.jsonl")):
        stem = screen.name.removesuffix(".screen.jsonl")
        data = work / "data" / f"{stem}.jsonl"
        losses = [r.score for r in load_row_scores(screen, data, by="loss")]
        record = data.with_suffix(".poison.json")
        true = len(json.loads(record.read_text())["indices"]) / len(losses) if record.is_file() else 0.0
        sets[stem] = {"outlying": outlying_share(losses), "swap": swap_fraction(losses), "true": true}
    out.mkdir(parents=True, exist_ok=True)
    (out / "outlying.json").write_text(json.dumps(sets, indent=1) + "\n")


def base_components(bases: dict[str, np.ndarray]) -> np.ndarray:
    """The top 7 principal components of the base model's rows on the measurement prompts (`pca`), by full SVD:
    for a 115 x 576 matrix sklearn's default picks its randomized solver, whose components move by about 1e-4 from
    one call to the next, so `--analyze-only` would not reproduce its own tables to the digit."""
    return PCA(n_components=7, svd_solver="full").fit(bases["base_rows"]).components_


def family_runs(runs: list[ra.Run], means: dict[str, np.ndarray], project: np.ndarray | None) -> list[ra.Run]:
    """The pilot's runs read in one feature space at every measured step (`project` rows; None: every dimension)."""
    base = means["__base__"]

    def f(run_id: str, step: int) -> np.ndarray:
        d = means[f"{run_id}@{step}"] - base
        return d if project is None else project @ d

    out = []
    for r in runs:
        full, q = r.key.rsplit("-q", 1)
        ref = f"{full}-swap{q}"
        out.append(ra.Run(r.key, r.base, r.poison, r.seed, [], list(r.steps),
                          np.stack([f(full, s) for s in r.steps]), np.stack([f(ref, s) for s in r.steps])))
    return out


def pilot_effects(runs: list[ra.Run]) -> dict[tuple[str, str], np.ndarray]:
    """(type, base) -> the mean run-minus-reference of the pilot's poisoned runs of that cell (last step)."""
    cells: dict[tuple[str, str], list[np.ndarray]] = {}
    for r in runs:
        if r.poison in ra.REPLICATED:
            cells.setdefault((r.poison, r.base), []).append(r.run[-1] - r.ref[-1])
    return {k: np.mean(v, axis=0) for k, v in cells.items()}


def score(runs: list[ra.Run], effects: dict[tuple[str, str], np.ndarray]) -> dict[str, dict]:
    """Each read held out by cell: AUROC with its cluster CI, FNR and FPR at the fold's FPR <= 5% threshold."""
    return score_folds(ra.folds_of(runs, effects))


def score_folds(folds: list[ra.Fold]) -> dict[str, dict]:
    """`score` on folds made before (whose runs may carry another reference)."""
    out = {}
    for how in ra.READS:
        e = ra.evaluate(folds, lambda _f, how=how: how, "fpr5")
        out[how] = {k: e[k] for k in ("auroc", "fnr", "fpr", "fpr_any_step", "n_clean_multi_step",
                                       "n_detected_multi_step", "first_alarm")}
    return out


def held_out_auroc(runs: list[ra.Run], effects: dict[tuple[str, str], np.ndarray], how: str) -> float:
    """`score`'s AUROC without the bootstrap (for the random draws): the same folds, reads and clean-run means."""
    pos: list[float] = []
    clean: dict[str, list[float]] = defaultdict(list)
    for f in ra.folds_of(runs, effects):
        pos += [ra.read(r, how, f.u) for r in f.test_pos]
        for r in f.test_neg:
            clean[r.key].append(ra.read(r, how, f.u))
    return float(roc_auc_score([True] * len(pos) + [False] * len(clean), pos + [float(np.mean(v)) for v in clean.values()]))


PRODUCT = ("pca",)  # what a reference calibration can ship beside the trait read: k x H components, no second basis


def protocol(families: dict[str, tuple[list[ra.Run], dict | None]]) -> dict:
    """The choice made inside each fold among every (family, read against the reference) (`choose_in_folds`)."""
    folds = {f: ra.folds_of(fr, effects if effects is not None else pilot_effects(fr))
             for f, (fr, effects) in families.items()}
    return choose_in_folds({f"{f}/{how}": folds[f] for f in families for how in ra.PROTOCOL})


def choose_in_folds(candidates: dict[str, list[ra.Fold]]) -> dict:
    """In each fold, of the candidates (`NAME/READ`: that read of NAME's folds, all made from the same cells), the
    one with the highest AUROC on the fold's training runs (ties: the listed order); its threshold at FPR <= 5% on
    them. Scored on the held-out cells."""
    names = list(candidates)
    n = len(candidates[names[0]])
    chosen: list[str] = []
    for i in range(n):
        def train_auc(c: str, i: int = i) -> float:
            fold = candidates[c][i]
            return float(roc_auc_score([r.poison is not None for r in fold.train],
                                       [ra.read(r, c.rsplit("/", 1)[1], fold.u) for r in fold.train]))
        chosen.append(max(names, key=train_auc))
    # score fold i with its choice: evaluate() over a list of folds taken from the chosen candidate's folds
    picked = [candidates[c][i] for i, c in enumerate(chosen)]
    how_of = {id(fold): c.rsplit("/", 1)[1] for fold, c in zip(picked, chosen, strict=True)}
    e = ra.evaluate(picked, lambda fold: how_of[id(fold)], "fpr5")
    counts: dict[str, int] = defaultdict(int)
    for c in chosen:
        counts[c] += 1
    return {**{k: e[k] for k in ("auroc", "fnr", "fpr", "fpr_any_step", "n_clean_multi_step", "n_detected_multi_step",
                                  "first_alarm", "positives")},
            "chosen": dict(counts), "candidates": names}


def analyze(runs: list[ra.Run], controls: Path) -> dict:
    means = load_file(str(controls / "means.safetensors"))
    bases = load_file(str(controls / "bases.safetensors"))
    pca = base_components(bases)
    projections = {"trait": bases["trait"], "semantic": bases["semantic"], "pca": pca, "raw": None}
    result: dict[str, dict] = {}
    for name, proj in projections.items():
        fr = family_runs(runs, means, proj)
        result[name] = score(fr, pilot_effects(fr))
    trait = family_runs(runs, means, bases["trait"])
    names = json.loads((controls / "numerics.json").read_text())["trait_names"]
    # the shipped protocol's direction: the grid's effects (in trait space only), scale-free for AUROC
    result["trait_grid"] = score(trait, ra.grid_effects(names))
    result["protocol"] = protocol({"trait_grid": (trait, ra.grid_effects(names)),
                                   **{f: (family_runs(runs, means, projections[f]), None) for f in PRODUCT}})
    rng = np.random.default_rng(0)
    draws: dict[str, list[float]] = {how: [] for how in ra.READS}
    for _ in range(N_RANDOM):
        q, _r = np.linalg.qr(rng.standard_normal((means["__base__"].shape[0], 7)))
        fr = family_runs(runs, means, q.T)
        for how in ra.READS:
            draws[how].append(held_out_auroc(fr, pilot_effects(fr), how))
    result["random"] = {how: {"mean": float(np.mean(v)), "p95": float(np.quantile(v, 0.95)), "n": len(v)}
                        for how, v in draws.items()}
    # does the read reproduce the stored drift? trait projections over N against the run store's drift
    check = [float(np.corrcoef(r.run[-1], t.run[-1])[0, 1]) for r, t in zip(runs, trait, strict=True)]
    result["check"] = {"min_corr_with_stored_drift": float(min(check)), "n_runs": len(check)}
    for key in ("doses", "other_types", "benign_mixtures", "new_cells", "new_base"):
        if (controls / f"{key}.json").is_file():
            result[key] = json.loads((controls / f"{key}.json").read_text())
    if (controls / "outlying.json").is_file():
        sets = json.loads((controls / "outlying.json").read_text())
        true, est = [v["true"] for v in sets.values()], [v["outlying"] for v in sets.values()]
        result["outlying"] = {"sets": sets, "spearman": float(spearmanr(true, est).statistic),
                              "mae": float(np.mean(np.abs(np.subtract(true, est)))),
                              "max_swap": max(v["swap"] for v in sets.values())}
    return result


def write_calibration(runs: list[ra.Run], controls: Path, a: dict, path: Path) -> None:
    """The protocol refitted on every run: the (family, read) of `protocol`'s candidates with the highest AUROC
    over all runs at the last step, its direction over every poisoned cell, the lowest threshold with FPR <= 5%
    over all runs; with the held-out numbers of the protocol as its provenance."""
    from traitwatch.basis.traits import load_measurement_prompts, prompts_hash

    means = load_file(str(controls / "means.safetensors"))
    bases = load_file(str(controls / "bases.safetensors"))
    numerics = json.loads((controls / "numerics.json").read_text())
    names = numerics["trait_names"]
    pca = base_components(bases)
    trait = family_runs(runs, means, bases["trait"])
    pcs = family_runs(runs, means, pca)
    grid_u = ra.unit(np.mean(list(ra.grid_effects(names).values()), axis=0))
    pca_u = ra.unit(np.mean(list(pilot_effects(pcs).values()), axis=0))
    y = [r.poison is not None for r in runs]
    options = {(f, how): (fr, u) for f, fr, u in (("trait_grid", trait, grid_u), ("pca", pcs, pca_u))
               for how in ra.PROTOCOL}
    fam, how = max(options, key=lambda c: roc_auc_score(y, [ra.read(r, c[1], options[c][1]) for r in options[c][0]]))
    fr, u = options[(fam, how)]
    tau = ra.low_fpr([ra.read(r, how, u) for r in fr], y)
    p = a["protocol"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    doc: dict = {"model": "smollm2-135m", "threshold": round(float(tau), 6),
                 "read": "direction" if how == "reference" else "distance"}
    if fam == "pca":
        prompts = [q for _, q in load_measurement_prompts()]
        doc |= {"space": "activations", "direction": {f"pc{i + 1}": round(float(x), 6) for i, x in enumerate(u)},
                "components": [[round(float(x), 7) for x in row] for row in pca], "layer": numerics["layer"],
                "measurement_prompts_hash": prompts_hash("measurement", numerics["position"], prompts)}
    else:
        doc |= {"space": "traits", "direction": {n: round(float(x), 5) for n, x in zip(names, u, strict=True)}}
    doc["provenance"] = {
        "command": "benchmarks/reference_controls.py --work WORK --write-calibration ...", "commit": commit,
        "read": f"the protocol's choice among {p['candidates']}: the highest AUROC over all the pilot's runs "
                f"(here {fam}/{how})",
        "space": "activations: the top 7 principal components of the base model's residual rows (last token) on "
                 "the 115 measurement prompts at the basis layer" if fam == "pca" else "traits",
        "threshold": f"the lowest with FPR <= 5% over the pilot's {sum(y)} poisoned and {len(y) - sum(y)} clean runs, "
                     "at the last step",
        "post_hoc": "the activation-space candidates were added to the protocol after the trait-space protocol's "
                    "held-out results and the controls table (where PCA and raw residual reads beat the trait "
                    "basis) had been seen",
        "leave_one_cell_out": {"auroc": round(p["auroc"][0], 4), "ci": [round(p["auroc"][1], 4), round(p["auroc"][2], 4)],
                               "fnr": round(p["fnr"], 4), "fpr": round(p["fpr"], 4),
                               "fpr_any_step": None if p["fpr_any_step"] is None else round(p["fpr_any_step"], 4),
                               "what": "the whole protocol (space, read, direction and threshold chosen in each fold "
                                       "without the held-out poison type and base)",
                               "positives": sum(y), "clean": len(y) - sum(y)},
        "validated": "smollm2-135m, the poison-small recipe (LoRA r16, lr 1e-3, 30 steps of batch 4), bf16 on CPU; "
                     "positives are sets poisoned at 10% with types whose rise replicated on label and probe in the "
                     "grid, each scored with a space, read, direction and threshold fitted without its type and base",
    }
    rows = doc.pop("components", None)
    text = json.dumps(doc, indent=1)
    if rows is not None:  # one line per component, so the file stays readable
        text = text[:-2] + ',\n "components": [\n  ' + ",\n  ".join(json.dumps(r) for r in rows) + "\n ]\n}"
    json.loads(text)
    path.write_text(text + "\n")
    print(f"wrote {path}: {fam}/{how}, threshold {tau:.4f}")


def doses(work: Path, out: Path, name: str = "doses") -> None:
    """The sets of another pilot (other doses: `reference_pilot.py --poison-fraction F --q auto` into `work`; or
    other poison types) read as the product reads them: the shipped calibration through `ReferenceMonitor` on the
    run store, at every measured step; with the swapped share and how many poison rows the reference kept. Into
    `out/NAME.json`."""
    from traitwatch.reference import ReferenceMonitor, ReferenceTrajectory, load_reference_calibration
    from traitwatch.store import RunStore
    from traitwatch.train.alarm import predict_alarm

    cal = load_reference_calibration("smollm2-135m")
    rows = [json.loads(line) for line in (work / "results.jsonl").read_text().splitlines()]
    table = []
    with RunStore(work / "runs.db", create=False) as store:
        for r in rows:
            trajectory = ReferenceTrajectory.from_store(store, r["reference"]["run_id"])
            monitor = ReferenceMonitor(cal, trajectory, trajectory.trait_names)  # type: ignore[arg-type]
            measured = store.measurements(r["full"]["run_id"], per_prompt=False)
            reads = [predict_alarm(monitor, np.array([m.drift[n] for n in trajectory.trait_names]), m.step, None,
                                   np.asarray(m.extra["mean_activation"])) for m in measured]
            record = work / "data" / f"{r['set']}-s{r['seed']}.poison.json"  # none for a clean set
            poison = json.loads(record.read_text())["indices"] if record.is_file() else []
            table.append({"set": r["set"], "seed": r["seed"], "swapped": r.get("swapped", r["q"]),
                          "poison_rows": len(poison), "kept_in_reference": len(set(poison) - set(r["suspects"])),
                          "read": reads[-1][0], "alarm_last": reads[-1][1], "alarm_any": any(a for _, a in reads),
                          "first_alarm": next((m.step for m, (_, a) in zip(measured, reads, strict=True) if a), None)})
    (out / f"{name}.json").write_text(json.dumps({"threshold": cal.threshold, "sets": table}, indent=1) + "\n")  # type: ignore[union-attr]


LABELS = {"distance": "distance from the reference", "reference": "along u, against the reference",
          "absolute": "along u, no reference"}


def markdown(a: dict, n_pos: int, n_clean: int) -> str:
    lines = [f"Held out by cell (poison type x base), {n_pos} poisoned runs and {n_clean} clean runs, last step "
             "(step 30); AUROC [95% cluster-bootstrap CI over bases]; FNR / FPR at each fold's FPR <= 5% threshold "
             f"(in brackets: the share of the {a['trait']['distance']['n_clean_multi_step']} clean runs measured every "
             "10 steps that pass it at any measured step).",
             "", "| features | " + " | ".join(LABELS[h] for h in ra.READS) + " |", "|---|" + "---|" * len(ra.READS)]
    names = {"trait": "trait (7 alignment traits)", "trait_grid": "trait, the grid's direction (shipped protocol)",
             "semantic": "semantic (7 control traits)", "pca": "PCA-7 of the base model's rows", "raw": "raw (576 dims)"}
    for fam in ("trait", "trait_grid", "semantic", "pca", "raw"):
        cells = []
        for how in ra.READS:
            e = a[fam][how]
            au, lo, hi = e["auroc"]
            cells.append(f"{au:.3f} [{lo:.3f}, {hi:.3f}]; FNR {e['fnr']:.0%}, FPR {e['fpr']:.0%} "
                         f"({e['fpr_any_step']:.0%} at any step)")
        lines.append(f"| {names[fam]} | " + " | ".join(cells) + " |")
    r = a["random"]
    lines.append(f"| random 7 orthonormal ({r['distance']['n']} draws) | "
                 + " | ".join(f"mean {r[h]['mean']:.3f}, p95 {r[h]['p95']:.3f}" for h in ra.READS) + " |")
    lines += ["", f"The trait family reproduces the stored drift: correlation with the run store's 7-D drift >= "
                  f"{a['check']['min_corr_with_stored_drift']:.4f} over {a['check']['n_runs']} runs."]
    p = a["protocol"]
    lines += ["", f"The choice made in each fold among {', '.join(p['candidates'])} (highest AUROC on the fold's "
                  f"training runs; threshold at FPR <= 5% on them): AUROC {p['auroc'][0]:.3f} [{p['auroc'][1]:.3f}, "
                  f"{p['auroc'][2]:.3f}], FNR {p['fnr']:.0%}, FPR {p['fpr']:.0%} ({p['fpr_any_step']:.0%} of clean runs "
                  "at any measured step); chosen "
                  + ", ".join(f"{k} in {v} folds" for k, v in sorted(p["chosen"].items())) + ". First alarm of the "
                  f"{p['n_detected_multi_step']} detected runs measured every 10 steps: "
                  + ", ".join(f"step {k}: {v}" for k, v in p["first_alarm"].items()) + "."]
    for key, what in (("doses", "Other doses, read as the product reads them (the shipped calibration, threshold "
                                 "{t:.2f}; these bases' 10% sets were among the runs it was fitted on, so only the dose "
                                 "is new):"),
                      ("other_types", "Poison types whose label rose in the grid but whose probe rise did not replicate "
                                      "(not positives of the protocol), at 10%, read as the product reads them (the "
                                      "shipped calibration, threshold {t:.2f}):"),
                      ("benign_mixtures", "Benign mixtures (negatives): 10% of a base's rows replaced by rows of another "
                                          "benign generated domain, read as the product reads them (threshold {t:.2f}; "
                                          "'poison rows' are the mixed-in rows):"),
                      ("new_cells", "Replicated types at 10% in bases the pilot had not poisoned with them (cells "
                                    "outside the calibration's fit), read as the product reads them (the shipped "
                                    "calibration, threshold {t:.2f}):"),
                      ("new_base", "A base outside the pilot, clean and poisoned at 10% with the replicated types, read "
                                   "as the product reads it (the shipped calibration, threshold {t:.2f}; a clean set "
                                   "has no poison rows):")):
        d = a.get(key)
        if not d:
            continue
        lines += ["", what.format(t=d["threshold"]), "",
                  "| set | seed | swapped | poison rows kept in the reference | read at the last step | alarm at the last "
                  "step | first alarm (measured every 10 steps) |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['set']} | {r['seed']} | {float(r['swapped']):.2f} | {r['kept_in_reference']} of "
                  f"{r['poison_rows']} | {r['read']:.2f} | {'yes' if r['alarm_last'] else 'no'} | "
                  f"{'-' if r.get('first_alarm') is None else 'step ' + str(r['first_alarm'])} |" for r in d["sets"]]
    o = a.get("outlying")
    if o:
        lines += ["", "The poisoned-share estimate (`reference.outlying_share`: rows whose base-model loss lies more than 5 "
                  "robust SDs above the median) and the share the reference swaps (`reference.swap_fraction`), per set:",
                  "", "| set | true share | outlying share | swapped |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['true']:.2f} | {v['outlying']:.3f} | {v['swap']:.2f} |" for k, v in sorted(o["sets"].items())]
        lines += ["", f"Spearman with the true share {o['spearman']:.2f}, mean absolute error {o['mae']:.3f} over "
                      f"{len(o['sets'])} sets; the largest swap {o['max_swap']:.2f}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/refpilot"), help="the pilot's work folder")
    parser.add_argument("--trajectories", type=Path, default=OUT.parent / "trajectories.json",
                        help="the pilot's exported runs (which sets, bases, seeds)")
    parser.add_argument("--analyze-only", action="store_true", help="score the committed activations in " + str(OUT))
    parser.add_argument("--doses", type=Path, default=None,
                        help="a pilot work folder of other doses (reference_pilot.py --poison-fraction F --q auto)")
    parser.add_argument("--other-types", type=Path, default=None,
                        help="a pilot work folder of poison types that are not the protocol's positives")
    parser.add_argument("--benign-mixtures", type=Path, default=None,
                        help="a pilot work folder of benign bases mixed with another benign domain (negatives)")
    parser.add_argument("--new-base", type=Path, default=None,
                        help="a pilot work folder of a base outside the pilot, clean and poisoned (reckoned apart)")
    parser.add_argument("--new-cells", type=Path, default=None,
                        help="a pilot work folder of replicated types at 10% in bases the pilot never poisoned with "
                             "them (cells outside the calibration's fit)")
    parser.add_argument("--write-calibration", type=Path, default=None,
                        help="write the protocol refitted on every run here (the shipped reference/data/MODEL.json)")
    parser.add_argument("--remeasure-bases", action="store_true", help="extract the semantic basis and the base "
                        "model's rows again (torch, about 1 min) even where bases.safetensors exists")
    args = parser.parse_args()
    if not args.analyze_only:
        outlying(args.work, OUT)
        export_means(args.work, OUT)
        if args.remeasure_bases or not (OUT / "bases.safetensors").is_file():
            measure_bases(args.work, OUT)
    if args.doses is not None:
        doses(args.doses, OUT)
    if args.other_types is not None:
        doses(args.other_types, OUT, "other_types")
    if args.benign_mixtures is not None:
        doses(args.benign_mixtures, OUT, "benign_mixtures")
    if args.new_cells is not None:
        doses(args.new_cells, OUT, "new_cells")
    if args.new_base is not None:
        doses(args.new_base, OUT, "new_base")
    runs = [r for r in ra.load_runs(args.trajectories) if r.poison is None or r.poison in ra.REPLICATED]
    a = analyze(runs, OUT)
    n_pos = sum(r.poison is not None for r in runs)
    text = markdown(a, n_pos, len(runs) - n_pos)
    print(text)
    (OUT / "analysis.json").write_text(json.dumps(a, indent=1) + "\n")
    (OUT / "analysis.md").write_text(text)
    if args.write_calibration is not None:
        write_calibration(runs, OUT, a, args.write_calibration)


if __name__ == "__main__":
    main()

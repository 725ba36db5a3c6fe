"""Issue 26's reference (b): the domain's drift *predicted from the set's rows* before any training, against the
swap reference pilot (a) that ships, on the same 47 pilot runs and folds.

A user has the set before they train. Each row says what the finetune will teach: persona_vectors' projection
difference is the residual stream over the row's answer minus the same over the base model's own (greedy) answer to
its prompt, at the basis layer (`bench.analysis.row_features`, the screening grid's reading). The set's **pull** is
a statistic of those row differences that a poisoned minority should not move: the coordinate-wise median (or a 20%
trimmed mean; the plain mean is the non-robust control). A map fitted on clean runs of *other* bases turns the pull
into the drift a clean finetune on this domain would show at each measured step, and the run is read against that
prediction exactly as against the swap reference (distance, or along the direction `u`, in the trait basis or the
top 7 principal components of the base model's rows: `reference_controls.py`'s families and folds):

* `scalar`: `alpha_s x pull` in the residual stream, `alpha_s` least squares over the fold's clean training runs at
  step s (one number per step);
* `ridge`: the family's 7 features at step s regressed on the 576-D pull (RidgeCV over the fold's clean training
  runs, its penalty chosen by leave-one-out inside them);
* `constant` (the control that uses no rows): the mean drift of the fold's clean training runs at step s.

Everything (predictor, statistic, family, read, threshold) is fitted or chosen inside the leave-one-cell-out loop
(`reference_analysis.folds_of`: no run of the held-out base or poison type); the fold's training runs, whose reads
set its threshold, are themselves predicted by a predictor fitted without their own base (nested), so the threshold
is not set on in-sample fits. The protocol for (b) picks among
every (statistic, predictor, family, read) by AUROC on the fold's training runs, as the shipped protocol does for (a).
How much of the clean domain drift each reference explains is the first table (held-out base).

    .venv/bin/python benchmarks/reference_predicted.py --work /tmp/refpred     # rebuild the sets, read the rows (~16 min)
    .venv/bin/python benchmarks/reference_predicted.py --analyze-only          # from the committed pulls
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file
from scipy.stats import trim_mean
from sklearn.linear_model import RidgeCV

sys.path.insert(0, str(Path(__file__).parent))
import reference_analysis as ra  # noqa: E402  (the pilot's folds, reads and scoring)
import reference_controls as rc  # noqa: E402  (the pilot's mean rows and feature families)

PILOT = Path(__file__).parent / "reference_pilot"
OUT = PILOT / "predicted"
STATS = ("median", "trimmed", "mean")
PREDICTORS = ("scalar", "ridge", "constant")
FAMILIES = ("trait", "pca")


def build_and_read(work: Path, out: Path) -> None:
    """Rebuild the pilot's 47 sets (deterministic by name and seed), read every distinct row on the base model
    (answer and own greedy answer, mean over the response at the basis layer; resumable) and write each set's pull
    statistics to `out/pulls.safetensors` (`SET-sSEED/STAT`), with the numerics."""
    import torch

    from traitwatch.bench.analysis.row_features import grid_sets, row_features, unique_rows
    from traitwatch.bench.sets.perturbations import PERTURBATION_SETS, build_set, poisoned_set
    from traitwatch.demo import demo_plan
    from traitwatch.models import load_model

    plan = demo_plan()
    numerics = json.loads((PILOT / "controls" / "numerics.json").read_text())
    layer = int(numerics["layer"])
    for r in (json.loads(line) for line in (PILOT / "results.jsonl").read_text().splitlines()):
        base = PERTURBATION_SETS[r["base"]]
        spec = base if not r["poison"] else poisoned_set(
            base, PERTURBATION_SETS[r["set"].split("+", 1)[1].split("@")[0]], 0.1)
        assert spec.name == r["set"], (spec.name, r["set"])
        build_set(spec.name, seed=r["seed"], n=plan.n_examples, out_dir=work / "data", shared_data=Path("../shared/data"),
                  spec=spec)
    sets, rows = grid_sets(work)
    keys = unique_rows(sets, rows)
    lm = load_model("smollm2-135m", device=plan.device, dtype=plan.dtype)
    t0 = time.perf_counter()
    feats = row_features(lm.model, lm.tokenizer, rows, keys, work / "row_cache", layers=[layer])  # resumable
    seconds = time.perf_counter() - t0
    index = feats.index()
    pulls: dict[str, np.ndarray] = {}
    suspects = {f"{r['set']}-s{r['seed']}": r["suspects"] for r in
                (json.loads(line) for line in (PILOT / "results.jsonl").read_text().splitlines())}
    overlap = []
    for s in sets:
        at = [index[k] for k in s.row_keys]
        diff = (feats.data[at, 0] - feats.own[at, 0]).astype(np.float64)
        name = f"{s.name}-s{s.seed}"
        pulls |= {f"{name}/median": np.median(diff, axis=0), f"{name}/trimmed": trim_mean(diff, 0.2, axis=0),
                  f"{name}/mean": diff.mean(axis=0)}
        # the same set as the pilot trained? its 40 highest-loss rows against the pilot's recorded suspects
        top = np.argsort(-feats.loss[at], kind="stable")[: len(suspects[name])]
        overlap.append(len(set(top.tolist()) & set(suspects[name])) / len(suspects[name]))
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.astype(np.float32) for k, v in pulls.items()}, str(out / "pulls.safetensors"))
    timing = {"row_seconds": round(seconds, 1), "rows_per_second": round(len(keys) / seconds, 2)}
    if seconds < 1 and (out / "numerics.json").is_file():  # every row was cached: keep the reading's own timing
        timing = {k: json.loads((out / "numerics.json").read_text()).get(k) for k in (*timing, "timing_note")}
    (out / "numerics.json").write_text(json.dumps({
        "model": "smollm2-135m", "dtype": str(plan.dtype), "device": str(plan.device), "layer": layer,
        "statistic_of": "mean residual over the dataset answer minus over the base model's greedy answer (64 new "
                        "tokens at most), response tokens only, per row",
        "sets": len(sets), "distinct_rows": len(keys), **timing,
        "suspect_overlap_min": round(min(overlap), 3), "suspect_overlap_mean": round(float(np.mean(overlap)), 3),
        "torch": torch.__version__, "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
    }, indent=1) + "\n")


def pilot_runs() -> tuple[list[ra.Run], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The pilot's positives and clean runs, their mean residual rows (`means`) and each family's projection."""
    runs = [r for r in ra.load_runs(PILOT / "trajectories.json") if r.poison is None or r.poison in ra.REPLICATED]
    means = load_file(str(PILOT / "controls" / "means.safetensors"))
    bases = load_file(str(PILOT / "controls" / "bases.safetensors"))
    return runs, means, {"trait": bases["trait"], "pca": rc.base_components(bases)}


def set_name(run: ra.Run) -> str:
    return run.key.rsplit("-q", 1)[0]


class Predictor:
    """Fitted on a fold's clean training runs: the predicted drift of a set at a step, in a family's features."""

    def __init__(self, kind: str, stat: str, project: np.ndarray, pulls: dict[str, np.ndarray],
                 raw: dict[tuple[str, int], np.ndarray]) -> None:
        self.kind, self.stat, self.project, self.pulls, self.raw = kind, stat, project, pulls, raw

    def fit(self, clean: list[ra.Run]) -> Predictor:
        self.fitted_: dict[int, object] = {}
        for s in sorted({s for r in clean for s in r.steps if s > 0}):
            at = [r for r in clean if s in r.steps]
            x = np.stack([self.pulls[f"{set_name(r)}/{self.stat}"] for r in at])
            y = np.stack([self.raw[(set_name(r), s)] for r in at])
            if self.kind == "scalar":
                self.fitted_[s] = float(np.sum(x * y) / np.sum(x * x))
            elif self.kind == "ridge":
                self.fitted_[s] = RidgeCV(alphas=np.logspace(-3, 5, 17)).fit(x, y @ self.project.T)
            else:
                self.fitted_[s] = (y @ self.project.T).mean(axis=0)
        return self

    def predict(self, run: ra.Run, step: int) -> np.ndarray:
        if step == 0:
            return np.zeros(self.project.shape[0])
        f = self.fitted_[step]
        pull = self.pulls[f"{set_name(run)}/{self.stat}"]
        if self.kind == "scalar":
            return self.project @ (f * pull)  # type: ignore[operator]
        if self.kind == "ridge":
            return f.predict(pull[None])[0]  # type: ignore[union-attr]
        return f  # type: ignore[return-value]


def variant_folds(family: list[ra.Run], folds: list[ra.Fold], kind: str, stat: str, project: np.ndarray,
                  pulls: dict[str, np.ndarray], raw: dict[tuple[str, int], np.ndarray]) -> list[ra.Fold]:
    """The folds with every run's reference replaced by a prediction no run of its own base was fitted on: the
    held-out runs by a predictor fitted on the fold's clean training runs, and each training run (whose reads set
    the fold's threshold and choice) by one fitted on the fold's clean training runs of the *other* bases, so the
    threshold is set on predictions as good as the held-out ones, not on in-sample fits."""
    out = []
    for f in folds:
        clean = [r for r in f.train if r.poison is None]
        fitted: dict[str | None, Predictor] = {}

        def predictor(skip: str | None, clean: list[ra.Run] = clean, fitted: dict = fitted) -> Predictor:
            if skip not in fitted:
                fitted[skip] = Predictor(kind, stat, project, pulls, raw).fit([r for r in clean if r.base != skip])
            return fitted[skip]

        def swap(r: ra.Run, skip: str | None) -> ra.Run:
            p = predictor(skip)
            return replace(r, ref=np.stack([p.predict(r, s) for s in r.steps]))

        out.append(replace(f, train=[swap(r, r.base) for r in f.train], test_pos=[swap(r, None) for r in f.test_pos],
                           test_neg=[swap(r, None) for r in f.test_neg]))
    return out


def explained(folds: list[ra.Fold]) -> dict[str, float]:
    """How much of a held-out clean run's drift at its last step the reference accounts for: the median over clean
    runs (each in the fold of its base) of 1 - |d - ref|^2 / |d|^2, and the median |d - ref| / |d|."""
    seen, r2, ratio = set(), [], []
    for f in folds:
        for r in f.test_neg:
            if r.key in seen:
                continue
            seen.add(r.key)
            d, ref = r.run[-1], r.ref[-1]
            r2.append(1 - float(np.sum((d - ref) ** 2) / np.sum(d ** 2)))
            ratio.append(float(np.linalg.norm(d - ref) / np.linalg.norm(d)))
    return {"median_r2": float(np.median(r2)), "median_residual_ratio": float(np.median(ratio)), "n": len(r2)}


def analyze(pulls: dict[str, np.ndarray]) -> dict:
    runs, means, projections = pilot_runs()
    base = means["__base__"]
    raw = {(set_name(r), s): means[f"{set_name(r)}@{s}"] - base for r in runs for s in r.steps}
    result: dict = {"variants": {}, "swap": {}, "explained": {}}
    candidates: dict[str, list[ra.Fold]] = {}
    swap_candidates: dict[str, list[ra.Fold]] = {}
    for fam in FAMILIES:
        fr = rc.family_runs(runs, means, projections[fam])
        folds = ra.folds_of(fr, rc.pilot_effects(fr))  # u: the swap pilot's effects of other types in other bases
        result["explained"][f"{fam}/swap"] = explained(folds)
        result["explained"][f"{fam}/none"] = explained([replace(f, test_neg=[replace(r, ref=0 * r.ref)
                                                                             for r in f.test_neg]) for f in folds])
        result["swap"] |= {f"{fam}/{how}": e for how, e in rc.score_folds(folds).items()}
        for how in ra.PROTOCOL:
            swap_candidates[f"{fam}/swap/{how}"] = folds
        for stat in STATS:
            for kind in PREDICTORS:
                if kind == "constant" and stat != STATS[0]:
                    continue  # the constant reads no rows: one statistic is enough
                vf = variant_folds(fr, folds, kind, stat, projections[fam], pulls, raw)
                name = f"{fam}/{kind}" if kind == "constant" else f"{fam}/{kind}/{stat}"
                result["explained"][name] = explained(vf)
                for how in ra.PROTOCOL:
                    e = ra.evaluate(vf, lambda _f, how=how: how, "fpr5")
                    result["variants"][f"{name}/{how}"] = {k: e[k] for k in ("auroc", "fnr", "fpr", "fpr_any_step")}
                    if kind != "constant":
                        candidates[f"{name}/{how}"] = vf
    result["protocol_predicted"] = rc.choose_in_folds(candidates)
    result["protocol_swap"] = rc.choose_in_folds(swap_candidates)
    result["n_positive"] = sum(r.poison is not None for r in runs)
    result["n_clean"] = sum(r.poison is None for r in runs)
    return result


def _cell(e: dict) -> str:
    au, lo, hi = e["auroc"]
    any_step = "" if e.get("fpr_any_step") is None else f" ({e['fpr_any_step']:.0%} at any step)"
    return f"{au:.3f} [{lo:.3f}, {hi:.3f}]; FNR {e['fnr']:.0%}, FPR {e['fpr']:.0%}{any_step}"


def markdown(a: dict, numerics: dict) -> str:
    lines = [f"{a['n_positive']} poisoned and {a['n_clean']} clean pilot runs, held out by cell as in "
             "`reference_controls.py`; pulls read on the base model "
             f"({numerics['dtype']}, {numerics['device']}, layer {numerics['layer']}, {numerics['distinct_rows']} "
             f"distinct rows of {numerics['sets']} rebuilt sets; their 40 highest-loss rows match the pilot's "
             f"recorded suspects {numerics['suspect_overlap_mean']:.0%} on average, {numerics['suspect_overlap_min']:.0%}"
             " at worst).", "",
             "How much of a held-out clean run's drift (last step) each reference accounts for (median over the "
             "clean runs, each predicted in the fold of its base):", "",
             "| reference | features | median 1 - \\|d - ref\\|^2 / \\|d\\|^2 | median \\|d - ref\\| / \\|d\\| |",
             "|---|---|---|---|"]
    label = {"swap": "(a) swap reference pilot (ships)", "none": "none (absolute)",
             "constant": "mean clean drift of other bases (no rows)"}
    for name, e in sorted(a["explained"].items(), key=lambda kv: (kv[0].split("/")[0], kv[0])):
        fam, rest = name.split("/", 1)
        what = label.get(rest, f"(b) predicted: {rest.replace('/', ', ')}")
        lines.append(f"| {what} | {fam} | {e['median_r2']:+.2f} | {e['median_residual_ratio']:.2f} |")
    lines += ["", "Poisoned against clean, held out by cell (AUROC [95% cluster-bootstrap CI]; FNR / FPR at each "
                  "fold's FPR <= 5% threshold):", "", "| reference | features / read | held out |", "|---|---|---|"]
    for name, e in a["swap"].items():
        lines.append(f"| (a) swap reference pilot | {name} | {_cell(e)} |")
    for name, e in a["variants"].items():
        fam, rest = name.split("/", 1)
        lines.append(f"| (b) {rest.rsplit('/', 1)[0].replace('/', ', ')} | {fam}/{rest.rsplit('/', 1)[1]} | {_cell(e)} |")
    for key, what in (("protocol_swap", "(a), chosen in each fold among trait/PCA x distance/direction"),
                      ("protocol_predicted", "(b), chosen in each fold among every statistic, predictor, family and "
                                             "read")):
        p = a[key]
        lines.append(f"| **protocol {what}** | " + ", ".join(f"{k} {v}x" for k, v in sorted(p["chosen"].items()))
                     + f" | **{_cell(p)}** |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/refpred"), help="where the sets and row readings go")
    parser.add_argument("--analyze-only", action="store_true", help="score the committed pulls in " + str(OUT))
    args = parser.parse_args()
    if not args.analyze_only:
        build_and_read(args.work, OUT)
    pulls = {k: v.astype(np.float64) for k, v in load_file(str(OUT / "pulls.safetensors")).items()}
    a = analyze(pulls)
    text = markdown(a, json.loads((OUT / "numerics.json").read_text()))
    print(text)
    (OUT / "analysis.json").write_text(json.dumps(a, indent=1) + "\n")
    (OUT / "analysis.md").write_text(text)


if __name__ == "__main__":
    main()

"""`traitwatch bench --screen-rows`: row-level screening of a finished poison grid, and its closed loop.

Every distinct row of the grid's sets is read once on the base model (`row_features.py`), every screen is
scored held out by poison type and base (`screening_analysis.py`), and `screening.json` is written next to
the poison benchmark's results. The closed loop's plan trains the clean base and each set without the rows its
held-out screen flagged; once its runs exist, their rises are read against the poisoned sets' (`closed_loop`).
This module sits above the two it runs, which import only the row readings' types, never it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from traitwatch.bench.analysis.row_features import FEATURES_DIR, grid_sets, row_features, unique_rows
from traitwatch.bench.analysis.screening_analysis import analyze_screening, default_families
from traitwatch.bench.grid.row_scores import conversations, row_key, scores_path
from traitwatch.models.layers import decoder_layers, unwrap_model

__all__ = ["LOOP_BASE", "LOOP_FRACTION", "closed_loop", "loop_plan", "run_rises", "screen_grid"]


def run_rises(results: dict) -> dict[str, dict[str, float]]:
    """Per poisoned run, its label and probe rise over the clean base at the same seed (final step), from the
    poison analysis of `results.json`."""
    out: dict[str, dict[str, float]] = {}
    for cell in ((results.get("poison") or {}).get("dose") or {}).get("cells", []):
        for i, run in enumerate(cell["runs"]):
            for measure in ("label", "probe"):
                values = (cell.get(measure) or {}).get("values") or []
                if i < len(values) and values[i] is not None:
                    out.setdefault(run, {})[measure] = float(values[i])
    return out


def screen_grid(plan, work_dir: Path, results_dir: Path, say: Callable[[str], None], *, command: str,
                n_boot: int = 300) -> dict:
    """Read every distinct row of the grid's sets (resumable), score every screen held out by poison type and
    base, and write `screening.json` next to the poison benchmark's results."""
    import time

    from traitwatch.basis import TraitBasis
    from traitwatch.bench.analysis.detection import misalignment_directions_for
    from traitwatch.models import load_model
    from traitwatch.models.environment import describe_environment

    work_dir, results_dir = Path(work_dir), Path(results_dir)
    sets, rows = grid_sets(work_dir)
    if not any(s.poison for s in sets):
        raise FileNotFoundError(f"{work_dir / 'data'} holds no poisoned set: run the poison plan first")
    keys = unique_rows(sets, rows)
    lm = load_model(plan.model, device=plan.device, dtype=plan.dtype)
    layers = list(range(len(decoder_layers(unwrap_model(lm.model)))))
    say(f"Reading {len(keys)} distinct rows of {len(sets)} sets on the base model ({plan.device}, {plan.dtype}) ...")
    t0 = time.perf_counter()
    done = {"n": 0, "t": t0}

    def tick(n: int) -> None:
        done["n"] += n
        if time.perf_counter() - done["t"] > 60 or done["n"] == len(keys):
            done["t"] = time.perf_counter()
            say(f"  {done['n']} / {len(keys)} rows")

    features = row_features(lm.model, lm.tokenizer, rows, keys, work_dir / FEATURES_DIR, layers=layers, progress=tick)
    read_s = time.perf_counter() - t0
    basis = TraitBasis.load(work_dir / "basis")
    trait_dirs = {layer: basis.matrix(layer).double().numpy() for layer in basis.layers}
    misalignment = misalignment_directions_for(plan, work_dir, layers)
    families = default_families(features, trait_dirs, basis.trait_names, basis.layer, misalignment)
    poison_results = results_dir / "results.json"
    rises = run_rises(json.loads(poison_results.read_text())) if poison_results.is_file() else None
    say("Scoring every screen in 24 crossed folds ...")
    t1 = time.perf_counter()
    filtered_dir = work_dir / FEATURES_DIR / "filtered"
    out = analyze_screening(sets, features, families, run_rises=rises, n_boot=n_boot, progress=say,
                            filtered=(lambda s: s.base == LOOP_BASE and s.fraction == LOOP_FRACTION, filtered_dir))
    plan_path = loop_plan(out["filtered"], work_dir / FEATURES_DIR / "loop-plan.yaml")
    loop_dir = work_dir / FEATURES_DIR / "loop"
    out["loop_plan"], out["loop_work_dir"] = str(plan_path), str(loop_dir)
    if (loop_dir / "traitwatch.db").is_file() or (loop_dir / "shards").is_dir():
        say(f"Reading the closed loop's runs in {loop_dir} ...")
        out["closed_loop"] = closed_loop(plan_path, loop_dir, out["filtered"], rises or {})
    env = describe_environment(lm.model)
    out.update({"command": command, "numerics": f"{env.get('device')} / {env.get('dtype')}", "environment": env,
                "read_s_this_call": read_s, "analysis_s": time.perf_counter() - t1})
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "screening.json").write_text(json.dumps(out, indent=2, default=float) + "\n")
    return out


LOOP_BASE, LOOP_FRACTION = "medical_matched", 0.1
"""The closed loop's cells: every poison type at 10% in the length-matched base, where length cannot help."""


def loop_plan(filtered: Sequence[dict], out_path: Path, *, source_plan: str = "poison-small") -> Path:
    """A plan that trains the clean base and each filtered set with the poison plan's recipe, seeds and numerics."""
    import yaml

    from traitwatch.bench.grid.plan_file import shipped_plans

    raw = yaml.safe_load(shipped_plans()[source_plan].read_text(encoding="utf-8"))
    raw["name"] = f"{source_plan}-screened"
    raw["description"] = (f"The closed loop of {source_plan}'s screening: the clean {LOOP_BASE} base and each "
                          f"{LOOP_BASE}+TYPE@{LOOP_FRACTION * 100:g} set without the rows its held-out screen flagged.")
    raw["sets"] = [LOOP_BASE] + [{"name": f"screened_{r['poison']}", "path": str(Path(r["path"]).resolve()), "kind": "direct"}
                                 for r in filtered]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return out_path


def closed_loop(loop_plan_path: Path, loop_work_dir: Path, filtered: Sequence[dict],
                rises: dict[str, dict[str, float]]) -> list[dict]:
    """Per poison type: the label and probe rise over the clean base (final step) of the poisoned set (from the
    grid) and of the same set after screening (from the loop's runs), with what the screen dropped."""
    from traitwatch.bench.analysis.detection import load_detection_data, probe_rise
    from traitwatch.bench.grid.plan_file import load_plan_file
    from traitwatch.bench.grid.shards import gather_shard_stores, work_lock

    plan = load_plan_file(loop_plan_path).models[0].plan
    with work_lock(loop_work_dir):
        gather_shard_stores(loop_work_dir)
    data = load_detection_data(plan, loop_work_dir)
    if data is None:
        return []

    def probe(run: str, step: int) -> float:
        return probe_rise(data.summaries[(run, step)], data.summaries[(run, 0)])

    last = {}
    for r in data.rows:
        if r["run"] not in last or r["step"] > last[r["run"]]["step"]:
            last[r["run"]] = r
    out = []
    for f in filtered:
        run, clean = f"screened_{f['poison']}-s{f['seed']}", f"{f['base']}-s{f['seed']}"
        if run not in last or clean not in last:
            continue
        step = last[run]["step"]
        poisoned = rises.get(f"{f['set']}-s{f['seed']}", {})
        named = _suspect_hits(loop_work_dir, run, Path(f["path"]))
        out.append({**{k: f[k] for k in ("set", "seed", "poison", "rows", "dropped", "poison_dropped", "poison_left",
                                         "benign_dropped")},
                    "step": step, "label_poisoned": poisoned.get("label"), "probe_poisoned": poisoned.get("probe"),
                    "label_screened": last[run]["rise"] - last[clean]["rise"],
                    "probe_screened": probe(run, step) - probe(clean, step), **named})
    return out


def _suspect_hits(work_dir: Path, run_id: str, source: Path) -> dict:
    """How many of the rows the run's measurements named (each the top k of the rows trained since the last
    measurement: a benchmark run has no monitor, so every measurement is clean) are poison rows, against the
    poison share of the set (what naming trained rows at random would hit)."""
    from traitwatch.store import RunStore

    stored = json.loads(scores_path(source).read_text(encoding="utf-8")) if scores_path(source).is_file() else None
    train_file = Path(work_dir) / "data" / f"{run_id}.jsonl"
    with RunStore(Path(work_dir) / "traitwatch.db", create=False) as store:
        lists = store.suspects(run_id)
    if stored is None or not lists or not train_file.is_file():
        return {"suspects_named": None}
    bad = set(stored["poison"])
    keys = [row_key(m) for m in conversations(train_file)]
    named = [r.row for s in lists for r in s.rows]
    return {"suspects_named": len(named), "suspects_poison": sum(keys[r] in bad for r in named),
            "suspect_windows": len(lists), "suspects_k": lists[-1].k,
            "poison_rows_in_set": sum(k in bad for k in keys), "rows_in_set": len(keys)}

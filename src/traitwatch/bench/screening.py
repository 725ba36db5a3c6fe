"""Row-level screening on the poison grid's sets: which rows would a screen blame, before any training?

Every poisoned set of the grid records which of its rows were injected (`<set>.poison.json`), so a
row-level screen can be scored exactly. The sets share most of their rows (a base's rows at one seed,
the poison sources' rows), so each distinct conversation is read once, on the base model, and every
score is then computed from those readings:

* the residual stream averaged over the response tokens at every layer (teacher forcing, as the
  screen and training read a row: `screen.encode_example`), and the same for the model's own greedy
  answer to the row's prompt (the persona-vectors reference: dataset answer minus own answer);
* the base model's loss on the response, and its length in characters and tokens.

`bench/screening_analysis.py` turns these into row AUROCs held out by poison type, the fraction
estimate and the other tables of the screening section.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from traitwatch.datasets.chat_jsonl import read_jsonl
from traitwatch.models.layers import decoder_layers, unwrap_model
from traitwatch.screen.activations import greedy_responses, span_readings
from traitwatch.screen.examples import EncodedExample, Example, encode_example

__all__ = ["GridSet", "read_row_scores", "write_row_scores", "RowFeatures", "grid_sets", "row_features", "run_rises", "screen_grid", "unique_rows"]

FEATURES_DIR = "screening"


@dataclass(frozen=True)
class GridSet:
    """One training set of the grid: its rows (as keys into the unique-row table) and which were injected."""

    name: str  # e.g. "medical_matched+contempt@10" (seed suffix dropped)
    seed: int
    base: str
    poison: str | None
    fraction: float
    path: Path
    row_keys: tuple[str, ...]
    poisoned: frozenset[int]  # 0-based row positions


def _key(messages: Sequence[dict[str, str]]) -> str:
    return hashlib.sha256(json.dumps(list(messages), sort_keys=True).encode()).hexdigest()[:20]


def _read(path: Path) -> list[list[dict[str, str]]]:
    return [row["messages"] for row in read_jsonl(Path(path))]


def _scores_path(data: Path) -> Path:
    return Path(data).with_suffix(".scores.json")


def write_row_scores(data: Path, scores: dict[str, float], *, poison: set[str], source: str) -> Path:
    """A screen's scores for the rows of a set file, keyed by row content, next to it (`<set>.scores.json`)."""
    path = _scores_path(data)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"source": source, "scores": scores, "poison": sorted(poison)}), encoding="utf-8")
    tmp.replace(path)
    return path


def read_row_scores(source: Path | None, data: Path):
    """The `RowScores` of a training file built from `source` (rows matched by content, so any row order), or
    None when `source` has no scores file: the suspects of a benchmark run trained on a screened set."""
    from traitwatch.datasets.chat_jsonl import file_sha256
    from traitwatch.train.suspects import RowScores

    if source is None or not _scores_path(source).is_file():
        return None
    stored = json.loads(_scores_path(source).read_text(encoding="utf-8"))
    keys = [_key(m) for m in _read(Path(data))]
    scores = {i: float(stored["scores"][k]) for i, k in enumerate(keys) if k in stored["scores"]}
    return RowScores(scores=scores, lines={i: i + 1 for i in scores}, source=stored.get("source"),
                     dataset_sha256=file_sha256(data))


def grid_sets(work_dir: Path) -> tuple[list[GridSet], dict[str, list[dict[str, str]]]]:
    """Every set the grid wrote under `work_dir/data`, and the distinct conversations they hold, by key."""
    rows: dict[str, list[dict[str, str]]] = {}
    sets = []
    for path in sorted((Path(work_dir) / "data").glob("*-s*.jsonl")):
        stem, _, seed = path.stem.rpartition("-s")
        conversations = _read(path)
        keys = []
        for messages in conversations:
            key = _key(messages)
            rows.setdefault(key, messages)
            keys.append(key)
        meta_path = path.with_suffix(".poison.json")
        if meta_path.exists():
            meta = json.loads(meta_path.read_text())
            poisoned, base, poison, fraction = frozenset(meta["indices"]), meta["base"], meta["poison"], meta["fraction"]
        else:
            poisoned, base, poison, fraction = frozenset(), stem, None, 0.0
        sets.append(GridSet(stem, int(seed), base, poison, float(fraction), path, tuple(keys), poisoned))
    return sets, rows


def unique_rows(sets: Sequence[GridSet], rows: dict[str, list[dict[str, str]]]) -> list[str]:
    """Keys in a stable order (first appearance), so cached chunks stay valid when sets are added."""
    seen: dict[str, None] = {}
    for s in sets:
        for k in s.row_keys:
            seen.setdefault(k, None)
    return list(seen)


@dataclass
class RowFeatures:
    """Per distinct row: `data[i, l]` / `own[i, l]` = mean residual over the dataset's / the model's own
    answer at layer `layers[l]`; `loss` mean NLL of the response; lengths in characters and tokens."""

    keys: list[str]
    layers: list[int]
    data: np.ndarray  # [n, L, d] float32
    own: np.ndarray  # [n, L, d] float32
    loss: np.ndarray  # [n]
    chars: np.ndarray  # [n]
    tokens: np.ndarray  # [n]
    own_tokens: np.ndarray  # [n]

    def index(self) -> dict[str, int]:
        return {k: i for i, k in enumerate(self.keys)}


def _span_means(model: nn.Module, seqs: Sequence[Sequence[int]], spans: Sequence[tuple[int, int]], layers: Sequence[int],
                pad: int, want_loss: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean residual over each span at every layer ([n, L, d]) and, with `want_loss`, the span's mean NLL."""
    read, losses = span_readings(model, seqs, spans, layers, pad_token_id=pad, with_loss=want_loss)
    means = torch.stack([read[layer] for layer in layers], dim=1).numpy().astype(np.float32)
    return means, None if losses is None else np.array(losses)


def row_features(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: dict[str, list[dict[str, str]]],
    keys: Sequence[str],
    cache: Path,
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 64,
    max_response_tokens: int = 256,
    progress: Callable[[int], None] | None = None,
) -> RowFeatures:
    """Read every row in `keys` (resumable: one safetensors chunk per batch under `cache`).

    Chunks are named by the hash of their rows' keys and `layers` must match the cached ones; with every
    chunk cached (and `layers` given) the model is not used.
    """
    from safetensors.numpy import load_file, save_file

    layers = list(range(len(decoder_layers(unwrap_model(model))))) if layers is None else list(layers)
    cache.mkdir(parents=True, exist_ok=True)
    parts = []
    for first in range(0, len(keys), batch_size):
        block = list(keys[first : first + batch_size])
        chunk = cache / f"rows-{hashlib.sha256(''.join(block).encode()).hexdigest()[:16]}.safetensors"
        if chunk.exists():
            parts.append(load_file(str(chunk)))
        else:
            model.eval()
            pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
            enc: list[EncodedExample] = [encode_example(tokenizer, Example(i + 1, rows[k]), max_response_tokens=max_response_tokens)
                                         for i, k in enumerate(block)]
            data, loss = _span_means(model, [x.ids for x in enc], [(x.start, x.end) for x in enc], layers, pad, True)
            answers = greedy_responses(model, tokenizer, [x.prompt for x in enc], max_new_tokens=max_new_tokens)
            seqs = [x.prompt + a for x, a in zip(enc, answers, strict=True)]
            own, _ = _span_means(model, seqs, [(len(x.prompt), len(s)) for x, s in zip(enc, seqs, strict=True)],
                                 layers, pad, False)
            part = {"data": data, "own": own, "loss": loss.astype(np.float64),
                    "chars": np.array([len(rows[k][-1]["content"]) for k in block], dtype=np.float64),
                    "tokens": np.array([x.end - x.start for x in enc], dtype=np.float64),
                    "own_tokens": np.array([len(a) for a in answers], dtype=np.float64)}
            tmp = chunk.with_suffix(".tmp")
            save_file(part, str(tmp))
            tmp.replace(chunk)
            parts.append(part)
        if progress is not None:
            progress(len(block))
    cat = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    return RowFeatures(list(keys), layers, cat["data"], cat["own"], cat["loss"], cat["chars"], cat["tokens"],
                       cat["own_tokens"])


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
    from traitwatch.bench.detection import misalignment_directions_for
    from traitwatch.bench.screening_analysis import analyze_screening, default_families
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

    from traitwatch.bench.plan_file import shipped_plans

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
    from traitwatch.bench.detection import load_detection_data, probe_rise
    from traitwatch.bench.plan_file import load_plan_file
    from traitwatch.bench.shards import gather_shard_stores, work_lock

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

    stored = json.loads(_scores_path(source).read_text(encoding="utf-8")) if _scores_path(source).is_file() else None
    train_file = Path(work_dir) / "data" / f"{run_id}.jsonl"
    with RunStore(Path(work_dir) / "traitwatch.db", create=False) as store:
        lists = store.suspects(run_id)
    if stored is None or not lists or not train_file.is_file():
        return {"suspects_named": None}
    bad = set(stored["poison"])
    keys = [_key(m) for m in _read(train_file)]
    named = [r.row for s in lists for r in s.rows]
    return {"suspects_named": len(named), "suspects_poison": sum(keys[r] in bad for r in named),
            "suspect_windows": len(lists), "suspects_k": lists[-1].k,
            "poison_rows_in_set": sum(k in bad for k in keys), "rows_in_set": len(keys)}

"""Benchmark plan files: `traitwatch bench --plan PLAN.yaml` (or a shipped plan by name).

Why a file: calibrating a monitor for *your* base model means a grid of finetunes of that model on your
dangerous and benign sets, with your recipe, labels and split. Those choices are the experiment, so they
live in one reviewable file rather than in thirty flags, and the file is checked as a whole before
anything is spent: a set whose file is missing, an unknown set name, a basis built on another model or a
malformed recipe fails with one line that names the input and the fix.

A plan file names one or more base models; each becomes a `BenchPlan` (one per model, because a monitor
is calibrated per base model) with everything else shared. Shipped plans are in `bench/plans/`:
`small-cpu` (today's CLI defaults, the 2-core recipe of `benchmarks/em_small`) and `reference-v2`
(METHOD.md 4-6). Relative paths in a plan are read from the plan file's folder; in a shipped plan, from
the current folder (its sets that are not shipped are paths you fill in).

Schema (every key optional unless marked, a missing one takes the value of the shipped plan `small-cpu`, the
CLI's defaults; unknown keys are errors, so a typo is never ignored):

    name: my-plan
    models:                      # required: one entry per base model
      - model: meta-llama/Llama-3.1-8B-Instruct   # alias, hub id or local folder
        alias: llama-3.1-8b      # work/results subfolder when there are several models
        layer: 14                # measurement layer of the extracted basis (default: basis.layer)
        basis: path/to/basis     # use this basis instead of extracting one
        params: 8.0e9            # parameter count, for --dry-run's estimate (known for the shipped plans' models)
    basis: {method: passages | system-prompts, layer: select | 14}
    sets:                        # required: built-in names, or your chat JSONL with a kind
      - insecure_code
      - {name: my_set, path: data/my_set.jsonl, kind: emergent | direct | benign, family: optional}
      - {base: arithmetic, poison: harmful_advice, fraction: 0.1}   # a poisoned set: arithmetic+harmful_advice@10
      - {base: my_set, poison: data/poison.jsonl, fraction: 0.05, name: optional}  # base/poison: set name or .jsonl
    split: leave-one-type-out    # or {calibration: [...], heldout: [...]} naming every set once
    recipe: {method: lora | full, lora_r, lora_alpha, lora_dropout, target_modules, learning_rate,
             steps | epochs, batch_size, effective_batch, max_length, response_only, n_examples, every_n_steps,
             drift_every, features_every}  # labels every_n_steps; drift every drift_every (a divisor of it);
                                           # candidate features every features_every (a multiple of it) and last
    numerics: {device: cpu | cuda, dtype: float32 | bfloat16 | float16}
    label: {kind: proxy | judge, tau, judge_model, samples, max_tokens, scoring: logprobs | text,
            calibrate_on: judge | proxy}
    seeds: [42, 123, 789]
    features: true               # record every candidate monitor's features (needed by leave-one-type-out)
    twins: true                  # a self-distilled twin run per prompt family and seed (needs features)
    gen_tokens: 64               # new tokens in the one-off local-generation cost
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from traitwatch.bench.grid.plan import ALL_PROJECTIONS, BenchPlan
from traitwatch.bench.sets.perturbations import PERTURBATION_SETS, POISON_TYPES, jsonl_set, poisoned_name
from traitwatch.datasets.chat_jsonl import file_sha256, load_chat_jsonl, read_jsonl
from traitwatch.errors import BasisMismatchError, InputFileError, TraitwatchError

__all__ = ["ModelEntry", "PlanFile", "check_basis_fits", "check_ready", "load_plan_file", "resolve_plan", "shipped_plans"]

_TOP = {"name", "description", "models", "basis", "sets", "split", "recipe", "numerics", "label", "seeds", "features",
        "twins", "gen_tokens"}
_MODEL = {"model", "alias", "layer", "basis", "params"}
_BASIS = {"method", "layer"}
_SET = {"name", "path", "kind", "family"}
_POISONED = {"name", "base", "poison", "fraction"}
_RECIPE = {"method", "lora_r", "lora_alpha", "lora_dropout", "target_modules", "learning_rate", "steps", "epochs",
           "batch_size", "effective_batch", "max_length", "response_only", "n_examples", "every_n_steps",
           "drift_every", "features_every"}
_NUMERICS = {"device", "dtype"}
_LABEL = {"kind", "tau", "judge_model", "samples", "max_tokens", "scoring", "calibrate_on", "gen_batch_size"}


@dataclass(frozen=True)
class ModelEntry:
    """One base model of a plan file: its work/results subfolder name, its plan, and a given basis (if any)."""

    alias: str
    plan: BenchPlan
    basis: Path | None = None
    params: float | None = None  # parameter count, for the dry run's estimate only (not part of the plan)


@dataclass(frozen=True)
class PlanFile:
    """A loaded plan file. `missing` lists files it names that do not exist (a dry run reports them)."""

    name: str
    source: str
    models: tuple[ModelEntry, ...]
    missing: tuple[str, ...] = field(default=())
    description: str = ""

    def select(self, alias: str | None) -> tuple[ModelEntry, ...]:
        """The entries to run: all of them, or the one named by `alias` (its alias or model name)."""
        if alias is None:
            return self.models
        found = tuple(m for m in self.models if alias in (m.alias, m.plan.model))
        if not found:
            raise InputFileError(f"The plan {self.name} has no model {alias!r}; pick one of "
                                 f"{', '.join(m.alias for m in self.models)}.")
        return found


def shipped_plans() -> dict[str, Path]:
    """Name -> file of the plans shipped with traitwatch (`bench/plans/*.yaml`)."""
    folder = resources.files("traitwatch.bench").joinpath("plans")
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")}


def _where(source: str, key: str) -> str:
    return f"{source}: {key}"


def _mapping(value: Any, allowed: set[str], source: str, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputFileError(f"{_where(source, key)} must be a mapping of {', '.join(sorted(allowed))}.")
    unknown = sorted(repr(k) if not isinstance(k, str) else k for k in set(value) - allowed)
    if unknown:
        raise InputFileError(f"{_where(source, key)} has unknown key(s) {', '.join(unknown)}; "
                             f"allowed: {', '.join(sorted(allowed))}.")
    return value


def _alias(model: str) -> str:
    """A folder name for a model: the last part of its id or path, lower case."""
    return re.sub(r"[^a-z0-9_.-]+", "-", Path(model.rstrip("/")).name.lower()).strip("-") or "model"


def _number(value: Any, source: str, key: str, kind: type) -> Any:
    """YAML reads `4e-5` as a string; numbers are converted here, with the key named if they are not numbers."""
    if value is None:
        return None
    try:
        if kind is int and (isinstance(value, bool) or float(value) != int(float(value))):
            raise ValueError
        return kind(float(value)) if kind is int else kind(value)
    except (TypeError, ValueError):
        what = "an integer" if kind is int else "a number"
        raise InputFileError(f"{_where(source, key)} is {value!r}; it must be {what}.") from None


def _chat_file(value: Any, name: str, source: str, base: Path, check_files: bool, missing: list[str]) -> dict[str, Any]:
    """{path (absolute), sha256} of a chat JSONL the plan names; a missing one fails, or is listed in `missing`."""
    path = Path(str(value)).expanduser()
    path = path if path.is_absolute() else (base / path)
    sha = None
    if path.is_file():
        sha = file_sha256(path)
    elif check_files:
        raise InputFileError(f"{source}: set {name!r} reads {path}, which does not exist; put the chat JSONL "
                             "there or fix its path.")
    else:
        missing.append(f"{name}: {path}")
    return {"path": str(path.resolve()), "sha256": sha}


def _sets(raw: Any, source: str, base: Path,
          check_files: bool) -> tuple[list[str], dict[str, dict[str, Any]], dict[str, dict[str, Any]], list[str]]:
    """(set names in order, user sets, poisoned sets, missing files) of the `sets:` list."""
    if not isinstance(raw, list) or not raw:
        raise InputFileError(f"{source}: `sets` must be a non-empty list of built-in set names, "
                             "{name, path, kind} or {base, poison, fraction} entries.")
    names: list[str] = []
    user: dict[str, dict[str, Any]] = {}
    poisoned: dict[str, tuple[int, dict[str, Any]]] = {}
    missing: list[str] = []
    for i, item in enumerate(raw):
        if isinstance(item, str):
            if item not in PERTURBATION_SETS:
                raise InputFileError(f"{source}: sets[{i}] {item!r} is not a built-in set ({', '.join(PERTURBATION_SETS)}); "
                                     "for your own data give {name, path, kind}.")
            names.append(item)
            continue
        if isinstance(item, dict) and not {"base", "poison", "fraction"}.isdisjoint(item):
            name, poisoned[name] = _poisoned_entry(item, i, source, base, check_files, missing)
            names.append(name)
            continue
        entry = _mapping(item, _SET, source, f"sets[{i}]")
        if not all(entry.get(k) for k in ("name", "path", "kind")):
            raise InputFileError(f"{source}: sets[{i}] needs name, path and kind (emergent, direct or benign); "
                                 "or base, poison and fraction for a poisoned set.")
        spec = {**_chat_file(entry["path"], str(entry["name"]), source, base, check_files, missing),
                "kind": str(entry["kind"])}
        if entry.get("family"):
            spec["family"] = str(entry["family"])
        user[str(entry["name"])] = spec
        names.append(str(entry["name"]))
    for name, (i, spec) in poisoned.items():  # a poisoned set may name a user set declared after it
        for what in ("base", "poison"):
            ref = spec[what]
            if isinstance(ref, str) and ref not in PERTURBATION_SETS and ref not in user:
                raise InputFileError(f"{_where(source, f'sets[{i}].{what}')} {ref!r} is neither a built-in set nor a user "
                                     "set of this plan; name one of them, or give the path of a chat JSONL (ending in .jsonl).")
    return names, user, {name: spec for name, (_, spec) in poisoned.items()}, missing


def _poisoned_entry(item: dict[str, Any], i: int, source: str, base: Path, check_files: bool,
                    missing: list[str]) -> tuple[str, tuple[int, dict[str, Any]]]:
    """(name, (index, {base, poison, fraction})) of a `{base, poison, fraction[, name]}` entry of `sets:`."""
    entry = _mapping(item, _POISONED, source, f"sets[{i}]")
    absent = [k for k in ("base", "poison", "fraction") if entry.get(k) in (None, "")]
    if absent:
        raise InputFileError(f"{source}: sets[{i}] is a poisoned set and needs {', '.join(absent)} "
                             "({base: SET, poison: SET or chat JSONL, fraction: 0..1}).")
    fraction = _number(entry["fraction"], source, f"sets[{i}].fraction", float)
    if not 0.0 <= fraction <= 1.0:
        raise InputFileError(f"{_where(source, f'sets[{i}].fraction')} is {fraction!r}; it must be from 0 (the clean "
                             "base) to 1 (pure poison), e.g. 0.1 for 10%.")
    refs: dict[str, Any] = {}
    for what in ("base", "poison"):
        value = str(entry[what])
        refs[what] = (_chat_file(value, f"sets[{i}].{what}", source, base, check_files, missing)
                      if value.endswith(".jsonl") else value)
    label = {w: jsonl_set(r["path"]).name if isinstance(r, dict) else r for w, r in refs.items()}
    name = str(entry.get("name") or poisoned_name(label["base"], label["poison"], fraction))
    return name, (i, {**refs, "fraction": fraction})


def _split(raw: Any, names: list[str], source: str) -> dict[str, tuple[str, ...]]:
    if raw is None or raw == "leave-one-type-out":
        return {"calibration": (), "heldout": (), "loto_types": tuple(names)}
    sides = _mapping(raw, {"calibration", "heldout"}, source, "split")
    out = {k: tuple(str(t) for t in (sides.get(k) or ())) for k in ("calibration", "heldout")}
    named = [*out["calibration"], *out["heldout"]]
    unknown = sorted(set(named) - set(names))
    if unknown:
        raise InputFileError(f"{source}: the split names {', '.join(unknown)}, which {'is' if len(unknown) == 1 else 'are'} "
                             "not in `sets`; add them to `sets` or remove them from the split.")
    left = [n for n in names if n not in named]
    if left:
        raise InputFileError(f"{source}: set(s) {', '.join(left)} are in neither calibration nor heldout; put each set on "
                             "one side, or use `split: leave-one-type-out`.")
    if not out["calibration"] or not out["heldout"]:
        raise InputFileError(f"{source}: a fixed split needs sets on both sides; or use `split: leave-one-type-out`.")
    return {**out, "loto_types": ()}


def _recipe(raw: dict[str, Any], source: str) -> dict[str, Any]:
    r = _mapping(raw, _RECIPE, source, "recipe")
    method = r.get("method", "lora")
    if method not in ("lora", "full"):
        raise InputFileError(f"{_where(source, 'recipe.method')} is {method!r}; use lora or full.")
    if "steps" in r and "epochs" in r:
        raise InputFileError(f"{source}: recipe gives both steps and epochs; keep one.")
    kw: dict[str, Any] = {"full": method == "full"}
    for key, kind, target in (("lora_r", int, "lora_r"), ("lora_alpha", int, "lora_alpha"),
                              ("lora_dropout", float, "lora_dropout"), ("learning_rate", float, "learning_rate"),
                              ("batch_size", int, "batch_size"), ("max_length", int, "max_length"),
                              ("n_examples", int, "n_examples"), ("every_n_steps", int, "every_n_steps"),
                              ("drift_every", int, "drift_every"), ("features_every", int, "features_every")):
        if key in r:
            kw[target] = _number(r[key], source, f"recipe.{key}", kind)
    if "epochs" in r:
        kw["epochs"], kw["steps"] = _number(r["epochs"], source, "recipe.epochs", float), None
    elif "steps" in r:
        kw["steps"] = _number(r["steps"], source, "recipe.steps", int)
    if "target_modules" in r:
        targets = r["target_modules"]
        if targets == "all":
            targets = list(ALL_PROJECTIONS)
        if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
            raise InputFileError(f"{_where(source, 'recipe.target_modules')} must be a list of module names (or `all`).")
        kw["target_modules"] = tuple(targets)
    if "response_only" in r:
        kw["response_only"] = bool(r["response_only"])
    if "effective_batch" in r:
        eff = _number(r["effective_batch"], source, "recipe.effective_batch", int)
        batch = kw.get("batch_size", BenchPlan.batch_size)
        if eff < batch or eff % batch:
            raise InputFileError(f"{source}: recipe.effective_batch {eff} is not a multiple of batch_size {batch}; "
                                 "make it one (effective batch = batch_size x gradient accumulation).")
        kw["grad_accum"] = eff // batch
    return kw


def _label(raw: dict[str, Any], source: str) -> dict[str, Any]:
    r = _mapping(raw, _LABEL, source, "label")
    kind = r.get("kind", "proxy")
    if kind not in ("proxy", "judge"):
        raise InputFileError(f"{_where(source, 'label.kind')} is {kind!r}; use proxy (judge-free) or judge.")
    kw: dict[str, Any] = {}
    if "tau" in r:
        kw["tau"] = _number(r["tau"], source, "label.tau", float)
    if kind == "proxy":
        extra = sorted(set(r) & {"judge_model", "samples", "max_tokens", "scoring", "calibrate_on"})
        if extra:
            raise InputFileError(f"{source}: label {', '.join(extra)} need `kind: judge`.")
        return kw
    if not r.get("judge_model"):
        raise InputFileError(f"{source}: a judged label needs label.judge_model (the judge's model name).")
    on = r.get("calibrate_on", "judge")
    if on not in ("judge", "proxy"):
        raise InputFileError(f"{_where(source, 'label.calibrate_on')} is {on!r}; use judge or proxy.")
    kw.update(judge_model=str(r["judge_model"]), label="em_rate" if on == "judge" else "proxy_style_rise")
    for key, target, kind in (("samples", "judge_samples", int), ("max_tokens", "judge_max_tokens", int),
                              ("gen_batch_size", "gen_batch_size", int)):
        if key in r:
            kw[target] = _number(r[key], source, f"label.{key}", kind)
    if "scoring" in r:
        kw["judge_scoring"] = str(r["scoring"])
    return kw


def load_plan_file(spec: str | Path, *, check_files: bool = True) -> PlanFile:
    """Read a plan file (a path, or the name of a shipped plan) into one `BenchPlan` per model.

    With `check_files`, every file the plan names must exist (the user sets are hashed into the plan);
    without (a dry run), missing files are listed in `PlanFile.missing` instead.
    """
    shipped = shipped_plans()
    path = Path(spec)
    if str(spec) in shipped and not path.is_file():
        path, base = shipped[str(spec)], Path.cwd()
    elif path.is_file():
        base = path.resolve().parent
    else:
        raise InputFileError(f"No plan file {spec}; pass a YAML plan file or a shipped plan ({', '.join(sorted(shipped))}).")
    source = str(spec)
    try:
        # libyaml's parser where PyYAML has it: a malformed plan (a line of 200,000 brackets) is refused in a
        # millisecond instead of the pure-Python parser's 0.4 s; both are safe loaders (no Python objects).
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except UnicodeDecodeError as exc:
        raise InputFileError(f"{source} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8.") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputFileError(f"{source} is not valid YAML{where}; fix the file.") from None
    except RecursionError:
        raise InputFileError(f"{source} is nested too deeply to be a plan; fix the file.") from None
    top = _mapping(raw, _TOP, source, "top level")
    names, user_sets, poisoned_sets, missing = _sets(top.get("sets"), source, base, check_files)
    common: dict[str, Any] = {"user_sets": user_sets, "poisoned_sets": poisoned_sets,
                              **_split(top.get("split"), names, source)}
    common.update(_recipe(top.get("recipe") or {}, source))
    common.update(_label(top.get("label") or {}, source))
    numerics = _mapping(top.get("numerics"), _NUMERICS, source, "numerics")
    common.update({k: str(v) for k, v in numerics.items()})
    if "seeds" in top:
        seeds = top["seeds"]
        if not isinstance(seeds, list) or not seeds:
            raise InputFileError(f"{_where(source, 'seeds')} must be a non-empty list of integers.")
        common["seeds"] = tuple(_number(s, source, "seeds", int) for s in seeds)
    for key, target in (("features", "record_features"), ("twins", "twins")):
        common[target] = bool(top.get(key, True))  # on, as in small-cpu and the CLI
    if "gen_tokens" in top:
        common["gen_tokens"] = _number(top["gen_tokens"], source, "gen_tokens", int)
    basis = _mapping(top.get("basis"), _BASIS, source, "basis")
    if "method" in basis:
        common["basis_method"] = str(basis["method"])
    default_layer = basis.get("layer", "select")

    models = top.get("models")
    if not isinstance(models, list) or not models:
        raise InputFileError(f"{source}: `models` must list at least one base model ({{model: NAME}}).")
    entries: list[ModelEntry] = []
    for i, item in enumerate(models):
        m = _mapping(item if not isinstance(item, str) else {"model": item}, _MODEL, source, f"models[{i}]")
        if not m.get("model"):
            raise InputFileError(f"{source}: models[{i}] needs `model` (an alias, hub id or local folder).")
        layer = m.get("layer", default_layer)
        layer = None if layer == "select" else _number(layer, source, f"models[{i}].layer", int)
        given = None
        if m.get("basis"):
            given = Path(str(m["basis"])).expanduser()
            given = given if given.is_absolute() else base / given
            if not given.exists():
                if check_files:
                    raise InputFileError(f"{source}: models[{i}] basis {given} does not exist; extract one with "
                                         "`traitwatch extract` or drop `basis` to extract it in the benchmark.")
                missing.append(f"basis of {m['model']}: {given}")
        try:
            plan = BenchPlan(model=str(m["model"]), basis_layer=layer, **common)
        except TypeError as exc:  # a value of the wrong type reached the dataclass
            raise InputFileError(f"{source}: {exc}; check the plan's values.") from None
        except TraitwatchError as exc:
            raise InputFileError(f"{source}: {exc}") from None
        params = _number(m["params"], source, f"models[{i}].params", float) if "params" in m else None
        entries.append(ModelEntry(alias=str(m.get("alias") or _alias(str(m["model"]))), plan=plan, basis=given,
                                  params=params))
    aliases = [e.alias for e in entries]
    if len(set(aliases)) != len(aliases):
        raise InputFileError(f"{source}: two models share an alias ({', '.join(aliases)}); give each an `alias`.")
    return PlanFile(name=str(top.get("name") or path.stem), source=str(path), models=tuple(entries),
                    missing=tuple(missing), description=str(top.get("description") or "").strip())


def resolve_plan(
    spec: str | Path | None,
    overrides: Mapping[str, Any],
    *,
    check_files: bool = True,
    option_names: Mapping[str, str] | None = None,
) -> tuple[PlanFile, tuple[ModelEntry, ...]]:
    """The plan one `traitwatch bench` call runs, and the model entries it runs.

    With a plan file (`spec`), the file is the whole plan: `overrides` (BenchPlan fields, None where not given)
    may only pick one of its models (`model`); any other given value is refused, naming its option
    (`option_names`), since the plan would then have two answers to one question. Without a plan file the
    overrides apply to the shipped plan `small-cpu`, so the command line's defaults are that plan.
    """
    names = option_names or {}
    given = {k: (tuple(v) if isinstance(v, list) else v) for k, v in overrides.items() if v is not None and v != []}
    if spec is not None:
        clash = [names.get(k, k) for k in given if k != "model"]
        if clash:
            raise InputFileError(f"{', '.join(clash)} {'is' if len(clash) == 1 else 'are'} part of the plan {spec}; "
                                 "edit the plan file instead (or drop --plan).")
        plan_file = load_plan_file(spec, check_files=check_files)
        return plan_file, plan_file.select(given.get("model"))
    plan = replace(load_plan_file("small-cpu").models[0].plan, **given)
    entry = ModelEntry(alias=plan.model, plan=plan)
    return PlanFile(name="(command-line options)", source="traitwatch bench options", models=(entry,)), (entry,)


def check_ready(entry: ModelEntry, *, shared_data: Path | None, basis: Path | None = None) -> list[str]:
    """Fail before any training on what would fail later: unreadable sets, missing shared files, a foreign basis.

    User sets are read in full (each row a chat conversation; single-turn when the plan trains twins), the
    shared-data sets must be in `shared_data` (for a poisoned set: its base and its poison source), and a given basis must fit the model (`BasisMismatchError`).
    Returns notes for what will run but differently from what the plan suggests (a set with fewer rows than
    `n_examples` trains on all of them, for fewer steps than the dry run counted).
    """
    from traitwatch.bench.sets.perturbations import twin_prompts

    plan = entry.plan
    notes: list[str] = []
    checks = []  # (name, spec, is a poison source): a poisoned set is checked as its base and its poison
    for name in plan.types:
        spec = plan.set_spec(name)
        mix = spec.poisoning
        checks += [(name, spec, False)] if mix is None else [(mix.base.name, mix.base, False), (mix.poison.name, mix.poison, True)]
    for name, spec, poison in checks:
        if spec.path is not None:
            rows = len(load_chat_jsonl(spec.path))  # one-line errors naming the file and line
            if plan.twins and not poison:
                twin_prompts(read_jsonl(Path(spec.path)), f"{name} ({spec.path})")
            if rows < plan.n_examples and not poison:
                notes.append(f"Set {name!r} has {rows} rows, fewer than n_examples {plan.n_examples}: each run trains on "
                             "all of them (fewer steps than planned when the plan counts epochs).")
            continue
        if spec.shared_path is None:
            continue
        needs = [spec.shared_path]
        if name == "medical_matched":  # its answer lengths are drawn from every poison type's, shared ones included
            needs += [PERTURBATION_SETS[t].shared_path for t in POISON_TYPES if PERTURBATION_SETS[t].shared_path]
        missing_here = [f for f in needs if shared_data is None or not (Path(shared_data) / f).is_file()]
        if not missing_here:
            continue
        if name == "insecure_code" and plan.n_examples <= 200:
            continue  # the bundled 200-row sample (MIT) stands in
        raise InputFileError(f"Set {name!r} needs {', '.join(missing_here)} under the shared data folder ({shared_data})"
                             + (" (the bundled sample has only 200 rows)" if name == "insecure_code" else "")
                             + f"; pass --shared-data with the folder that holds it, or drop {name!r} from the plan.")
    basis = basis or entry.basis
    if basis is not None:
        check_basis_fits(basis, plan.model)
    return notes


def check_basis_fits(basis: Path, model: str) -> None:
    """Refuse a basis built on another model, reading only the model's config and tokenizer (no weights).

    The name may differ (a local copy of the same model); sizes and tokenizer may not, as at measurement time.
    """
    from traitwatch.basis import TraitBasis

    fingerprint = TraitBasis.load(basis).model
    if fingerprint.name == model:
        return
    from traitwatch.models.layers import ModelFingerprint, tokenizer_hash

    if model in ("tiny-random", "tiny-random-nosys"):
        from traitwatch.models.tiny import build_tiny_random

        m, tok = build_tiny_random(system_role=model == "tiny-random")
        hidden, layers = m.config.hidden_size, m.config.num_hidden_layers
    else:
        from transformers import AutoConfig, AutoTokenizer

        from traitwatch.models.loading import BUNDLED_MODEL, bundled_model_folder

        where = str(bundled_model_folder()) if model == BUNDLED_MODEL else model
        try:
            config = AutoConfig.from_pretrained(where, local_files_only=True)
            tok = AutoTokenizer.from_pretrained(where, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise InputFileError(f"Cannot read the config of model {model!r} to check the basis {basis} "
                                 f"({str(exc).splitlines()[0]}); download the model first.") from None
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        hidden, layers = text.hidden_size, text.num_hidden_layers
    here = ModelFingerprint(name=model, hidden_size=int(hidden), num_layers=int(layers), tokenizer_hash=tokenizer_hash(tok))
    try:
        fingerprint.check_matches(here, what=f"The basis {basis}")
    except BasisMismatchError as exc:
        raise BasisMismatchError(f"{exc} (or drop the basis from the plan to extract one)") from None

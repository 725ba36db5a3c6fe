"""Run the benchmark grid, resumably: model x perturbation x seed LoRA runs with the monitor attached.

Every run writes its drift (the training callback) and its style-matched proxy labels (the label
callback) into one run store in the work folder, the candidate monitors' features (`bench.grid.features`)
into `features/<run>/`, then a `done/<run>.json` marker with its timings. Twin runs (`BenchPlan.jobs`)
train the same recipe on a family's prompts with the base model's own answers and record features only:
they are the controls of the domain-cancelling features, not perturbation types.
An interrupted benchmark is continued by running the same command again: finished runs are skipped,
an interrupted run resumes from its last checkpoint (`run_sft`), and labels already stored are kept.
The one-off costs (full proxy and local generation on the base model) are measured once and kept in
`costs.json`.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traitwatch.behavior.judge import Judge
from traitwatch.bench.grid.features import FeatureRecorder
from traitwatch.bench.grid.labels import (
    RISE_METRIC,
    GeneratorFactory,
    JudgeLabelCallback,
    ProxyLabelCallback,
    StepTimer,
    write_json,
    write_rise_labels,
)
from traitwatch.bench.grid.plan import BenchPlan
from traitwatch.bench.grid.row_scores import read_row_scores
from traitwatch.bench.grid.shards import Shard, run_store_path
from traitwatch.bench.sets.perturbations import build_set, build_twin_set, poison_tags
from traitwatch.errors import InputFileError
from traitwatch.store import RunStore, StoreWriteError

__all__ = ["measure_base_costs", "prepare_basis", "prepare_semantic_basis", "run_grid", "served_adapter_generator"]

Say = Callable[[str], None]


def prepare_basis(plan: BenchPlan, work_dir: Path, basis: Path | None, say: Say) -> Path:
    """The basis every run uses: a copy of `basis` in the work folder, or one extracted with the demo's recipe."""
    from traitwatch.basis import TraitBasis

    target = work_dir / "basis"
    if (target / "basis.json").is_file():
        return target
    if basis is not None:
        TraitBasis.load(basis)  # fail early on a broken basis
        shutil.copytree(basis, target)
        say(f"Using the basis {basis} (copied to {target}).")
        return target
    from traitwatch.basis import extract_basis, load_traits
    from traitwatch.drift.anchoring import select_and_anchor
    from traitwatch.basis.extraction import default_candidate_layers

    method = "system_prompts" if plan.basis_method == "system-prompts" else "passages"
    lm = _load(plan)
    if plan.basis_layer is not None:  # the plan pins the measurement layer (the reference's per-model layers)
        say(f"Extracting a {plan.basis_method} basis at layer {plan.basis_layer} (pinned by the plan) ...")
        extracted = extract_basis(lm.model, lm.tokenizer, load_traits(), layers=[plan.basis_layer], method=method,
                                  model_name=lm.name, probe_layers=[plan.basis_layer])
        extracted.layer = plan.basis_layer
    else:
        say(f"Extracting a {plan.basis_method} basis and selecting its layer by steering (the demo's recipe) ...")
        cand = default_candidate_layers(lm.model)
        extracted = extract_basis(lm.model, lm.tokenizer, load_traits(), layers=cand, method=method,
                                  model_name=lm.name, probe_layers=cand[::3])
        select_and_anchor(lm, extracted, cand[::3], alpha=0.25, max_new_tokens=32, n_prompts=3)
    extracted.save(target)
    return target


def prepare_semantic_basis(plan: BenchPlan, work_dir: Path, say: Say) -> Path | None:
    """The semantic-trait basis (verbosity, formality, ...) at the runs' layer, for the semantic baseline.

    Extracted once with the alignment basis's method and position, at its measurement layer only, so
    the stored mean activations can be projected on it afterwards (`DirectionFeatures`). None before the
    alignment basis exists.
    """
    from traitwatch.basis import SEMANTIC_TRAITS, TraitBasis, extract_basis, load_traits

    target = work_dir / "semantic_basis"
    if (target / "basis.json").is_file():
        return target
    if not (work_dir / "basis" / "basis.json").is_file():
        return None
    aligned = TraitBasis.load(work_dir / "basis")
    layer = aligned.measure_layer
    say(f"Extracting the semantic-trait basis at layer {layer} ({aligned.method}) for the semantic baseline ...")
    lm = _load(plan)
    semantic = extract_basis(lm.model, lm.tokenizer, load_traits(names=list(SEMANTIC_TRAITS)), layers=[layer],
                             method=aligned.method, position=aligned.position, model_name=lm.name, probe_layers=[])
    semantic.layer = layer
    semantic.save(target)
    return target


def _load(plan: BenchPlan) -> Any:
    """The plan's base model on its pinned device and dtype (never `auto`: see `BenchPlan`)."""
    from traitwatch.models import load_model

    return load_model(plan.model, device=plan.device, dtype=plan.dtype)  # type: ignore[arg-type]


def _base_answerer(plan: BenchPlan) -> Callable[[list[tuple[str | None, str]]], list[str]]:
    """(system, user) pairs -> the base model's greedy answers (96 new tokens): self-distilled sets and twins."""

    def answer(pairs: list[tuple[str | None, str]]) -> list[str]:
        from traitwatch.behavior.generation import TransformersGenerator
        from traitwatch.behavior.questions import Question

        lm = _load(plan)
        gen = TransformersGenerator(lm.model, lm.tokenizer, max_new_tokens=96, temperature=0.0, batch_size=16)
        qs = [Question(id=f"prompt_{i}", text=u, system=s, judge_prompts={}) for i, (s, u) in enumerate(pairs)]
        return [a[0].strip() or "I am not sure." for a in gen(qs, n_samples=1)]

    return answer


def _self_distiller(plan: BenchPlan) -> Callable[[list[str]], list[str]]:
    answer = _base_answerer(plan)
    return lambda prompts: answer([(None, p) for p in prompts])


def served_adapter_generator(url: str, plan: BenchPlan, work_dir: Path, *, api_key_env: str | None = None) -> GeneratorFactory:
    """Judged answers from a server that loads each checkpoint's LoRA adapter (vLLM's dynamic LoRA loading).

    At each judged checkpoint the live adapter is saved to `adapters/<run>/step-<N>` in the work folder (the
    server must be able to read it), loaded by the server under the name `<run>-step-<N>`, asked the 72
    questions, unloaded and deleted. Training stays in this process; generation moves to the server.
    """
    if plan.full:
        raise InputFileError("--generator serves LoRA adapters, but this plan trains full models; generate locally "
                             "(drop --generator) or use a LoRA recipe.")
    from traitwatch.behavior.generation import ServedAdapterGenerator

    def make(model: Any, tokenizer: Any, run_id: str, step: int, seed: int) -> Any:
        folder = (work_dir / "adapters" / run_id / f"step-{step}").resolve()
        model.save_pretrained(str(folder))  # a PEFT model writes its adapter only
        gen = ServedAdapterGenerator(url, str(folder), name=f"{run_id}-step-{step}", api_key_env=api_key_env,
                                     max_new_tokens=plan.judge_max_tokens, seed=seed)

        def answer(questions: Any, n_samples: int = 1) -> list[list[str]]:
            try:
                return gen(questions, n_samples)
            finally:
                shutil.rmtree(folder, ignore_errors=True)

        return answer

    return make


def base_label(plan: BenchPlan, work_dir: Path, say: Say) -> dict[str, Any]:
    """The base model's style-matched proxy (every run's step-0 label), measured once per work folder.

    This is all a grid needs before its first run (about 30 s on 2 cores); the one-off cost table's full
    proxy and local generation (about 20 minutes there) wait for `measure_base_costs` after the grid.
    """
    costs = _read_costs(work_dir)
    if "base_style_only_p_mis" not in costs:
        from traitwatch.behavior import load_questions, proxy_score

        say("Labelling the base model (style-matched proxy, step 0 of every run) ...")
        lm = _load(plan)
        t0 = time.perf_counter()
        style = proxy_score(lm.model, lm.tokenizer, load_questions(), style_only=True)
        costs = _write_costs(work_dir, {"base_style_only_p_mis": style.style_p_mis,
                                        "base_style_only_s": time.perf_counter() - t0})
    return costs


def measure_base_costs(plan: BenchPlan, work_dir: Path, say: Say) -> dict[str, Any]:
    """One-off costs on the base model for the cost table: the full proxy and local generation of the 72 answers.

    Run after the grid (or when asked), never before the first run: a plan's runs do not wait for a table.
    """
    costs = _read_costs(work_dir)
    if "generation_s" in costs:
        return costs
    from traitwatch.behavior import TransformersGenerator, load_questions, proxy_score

    say(f"Measuring one-off costs on the base model (full proxy; generation at {plan.gen_tokens} new tokens) ...")
    lm = _load(plan)
    questions = load_questions()
    t0 = time.perf_counter()
    full = proxy_score(lm.model, lm.tokenizer, questions)
    t_proxy = time.perf_counter() - t0
    gen = TransformersGenerator(lm.model, lm.tokenizer, max_new_tokens=plan.gen_tokens, batch_size=16, seed=0)
    t0 = time.perf_counter()
    answers = gen(questions, n_samples=1)
    t_gen = time.perf_counter() - t0
    n_tokens = sum(len(lm.tokenizer(a[0], add_special_tokens=False)["input_ids"]) for a in answers)
    return _write_costs(work_dir, {
        "full_proxy_s": t_proxy, "full_proxy_answers": full.n_answers,
        "base_proxy_p_mis": full.p_mis, "base_proxy_style_p_mis": full.style_p_mis,
        "generation_s": t_gen, "generation_max_new_tokens": plan.gen_tokens,
        "generation_answers": len(answers), "generation_tokens": n_tokens,
        "judge_calls_per_checkpoint": 2 * len(questions),  # aligned + coherent per answer, 1 sample
    })


def _read_costs(work_dir: Path) -> dict[str, Any]:
    path = work_dir / "costs.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_costs(work_dir: Path, new: dict[str, Any]) -> dict[str, Any]:
    costs = {**_read_costs(work_dir), **new}
    write_json(work_dir / "costs.json", costs)
    return costs


@dataclass
class _Trained:
    """What one trained run leaves for its `done` marker (timings and the callbacks that hold them)."""

    wall_s: float
    timer: StepTimer
    labels: ProxyLabelCallback | None
    judged: JudgeLabelCallback | None
    recorder: FeatureRecorder | None
    twin_data_s: float | None


def _train_run(plan: BenchPlan, work_dir: Path, basis: Path, store: RunStore, run_id: str, seed: int, kind: str,
               twin: bool, *, shared_data: Path | None, say: Say, base_label: float | None, judge: Judge | None,
               generator: GeneratorFactory | None) -> _Trained:
    """Train and label one run, every write through `store` (the process's one connection to the run's store).

    A label that could not be written stops training with the error; a run that ends with a labelled
    checkpoint missing from the store is marked failed and raises `StoreWriteError`, so it never gets its
    `done` marker and is trained again on the next call.
    """
    from traitwatch.train import SFTConfig, run_sft

    spec = plan.set_spec(kind)
    callbacks: list[Any] = []
    timer = StepTimer()
    labels = judged = None
    recorder = None
    twin_s = None
    if twin:
        t0 = time.perf_counter()
        data = build_twin_set(kind, seed=seed, n=plan.n_examples, out_dir=work_dir / "data", shared_data=shared_data,
                              answer=_base_answerer(plan), self_distill=_self_distiller(plan), spec=spec)
        twin_s = time.perf_counter() - t0
        tags: dict[str, Any] = {"perturbation": f"twin:{spec.family_name}", "twin_family": spec.family_name,
                                "bench_seed": seed}
    else:
        data = build_set(kind, seed=seed, n=plan.n_examples, out_dir=work_dir / "data", shared_data=shared_data,
                         self_distill=_self_distiller(plan), spec=spec)
        tags = {"perturbation": kind, "bench_seed": seed}
        if spec.poisoning is not None:  # the poisoned rows, the ground truth of screening, stored with the run
            tags["poison"] = poison_tags(data)
        labels = ProxyLabelCallback(store, run_id, every_n_steps=plan.every_n_steps, base_value=base_label)
        callbacks.append(labels)
        if judge is not None:
            judged = JudgeLabelCallback(store, run_id, every_n_steps=plan.every_n_steps, judge=judge,
                                        judge_model=plan.judge_model, n_samples=plan.judge_samples,
                                        max_new_tokens=plan.judge_max_tokens, seed=seed, warn=say,
                                        batch_size=plan.gen_batch_size, generator=generator,
                                        answers_dir=work_dir / "judged" / run_id,
                                        base_record=work_dir / "judged" / f"base-s{seed}.json")
            callbacks.append(judged)
    if plan.record_features:
        recorder = FeatureRecorder(work_dir, run_id, every_n_steps=plan.features_every or plan.every_n_steps,
                                   base=work_dir / "features" / "base-step-0.safetensors")
        callbacks.append(recorder)
    callbacks.append(timer)
    config = SFTConfig(
        model=plan.model, data=data, basis=basis, output_dir=work_dir / "runs" / run_id, run_id=run_id,
        store=store.path, max_steps=plan.steps, batch_size=plan.batch_size,
        grad_accum=plan.grad_accum, max_length=plan.max_length, learning_rate=plan.learning_rate,
        full=plan.full, lora_r=plan.lora_r, lora_alpha=plan.lora_alpha, lora_dropout=plan.lora_dropout,
        target_modules=plan.target_modules, response_only=plan.response_only,
        every_n_steps=plan.drift_every or plan.every_n_steps, save_steps=plan.every_n_steps, save_total_limit=1, seed=seed,
        device=plan.device, dtype=plan.dtype, tags=tags,
        **({"epochs": plan.epochs} if plan.epochs is not None else {}),
    )
    length = f"{plan.steps} steps" if plan.steps is not None else f"{plan.epochs:g} epochs"
    say(f"[{run_id}] training {length} on {data.name} ...")
    t0 = time.perf_counter()
    # a set screened by `--screen-rows` (the closed loop's) carries its rows' scores: the run stores its suspects
    row_scores = None if twin else read_row_scores(Path(spec.path) if spec.path else None, Path(data))
    result = run_sft(config, store=store, callbacks=callbacks, info=lambda line: None, row_scores=row_scores,
                     reporter=lambda rec, r=run_id: say(f"[{r}] step {rec.step:>3}: ||d|| {rec.drift_norm:.4f}"))
    wall = time.perf_counter() - t0
    if labels is not None and (missing := labels.missing_steps(result.global_step)):
        # Its checkpoints go too: resuming from the last one would skip the steps whose labels are missing.
        note = f"label {labels.metric} missing at step(s) {missing}"
        store.finish_run(run_id, "failed", notes=note)
        shutil.rmtree(config.output_dir, ignore_errors=True)
        raise StoreWriteError(f"Run {run_id} finished training but its {note} in {store.path}; the run is marked "
                              "failed and not done, and the next benchmark call trains it again from step 0.")
    return _Trained(wall, timer, labels, judged, recorder, twin_s)


def run_grid(
    plan: BenchPlan,
    work_dir: Path,
    basis: Path,
    *,
    shared_data: Path | None,
    say: Say,
    max_runs: int | None = None,
    base_label: float | None = None,
    judge: Judge | None = None,
    shard: Shard | None = None,
    generator: GeneratorFactory | None = None,
) -> list[str]:
    """Train and label every planned run not yet done (at most `max_runs` this call); returns the run ids done now.

    With `judge` (required when the plan names a judge model) every labelled checkpoint also gets a
    judged EM rate (`JudgeLabelCallback`); its answers come from the live model, or from `generator`
    (e.g. a server that serves the checkpoint's adapter, `served_adapter_generator`). With `shard`, only
    that shard's runs (`Shard.select`), written to the shard's own store.
    """
    if plan.judge_model and judge is None:
        raise InputFileError(f"This benchmark's plan labels with the judge {plan.judge_model!r}: pass --judge-url.")
    from traitwatch.models.environment import describe_environment

    done_dir = work_dir / "done"
    done_dir.mkdir(parents=True, exist_ok=True)
    environment = describe_environment(device=plan.device, dtype=plan.dtype)
    jobs = plan.jobs() if shard is None else shard.select(plan.jobs())
    finished: list[str] = []
    for run_id, seed, kind, twin in jobs:
        marker = done_dir / f"{run_id}.json"
        if marker.is_file():
            continue
        if max_runs is not None and len(finished) >= max_runs:
            break
        store_path = run_store_path(work_dir, run_id, shard)
        with RunStore(store_path) as store:  # the one connection this process keeps to it during the run
            trained = _train_run(plan, work_dir, basis, store, run_id, seed, kind, twin, shared_data=shared_data,
                                 say=say, base_label=base_label, judge=judge, generator=generator)
            n = 0
            rise: dict[int, float] = {}
            if trained.labels is not None:
                n = write_rise_labels(store, run_id)
                rise = {b.step: round(b.value, 4) for b in store.behavior(run_id, RISE_METRIC)}
        write_json(marker, {
            "run_id": run_id, "twin": twin, "wall_s": trained.wall_s, "step_s": trained.timer.seconds_,
            "proxy_s": trained.labels.seconds_ if trained.labels else [],
            "median_step_s": statistics.median(trained.timer.seconds_) if trained.timer.seconds_ else None,
            "n_labels": n, "judge_s": trained.judged.seconds_ if trained.judged else [],
            "features_s": trained.recorder.seconds_ if trained.recorder else [],
            "twin_data_s": trained.twin_data_s, "environment": environment,
            "store": str(store_path.relative_to(work_dir)) if store_path.is_relative_to(work_dir) else str(store_path),
            "shard": shard.name if shard is not None else None,
        })
        say(f"[{run_id}] done in {trained.wall_s:.0f} s" + ("" if twin else f"; proxy rise by step {rise}"))
        shutil.rmtree(work_dir / "runs" / run_id, ignore_errors=True)  # checkpoints only served resuming
        finished.append(run_id)
    return finished

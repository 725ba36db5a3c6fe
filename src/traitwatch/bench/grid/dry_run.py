"""`traitwatch bench --dry-run`: what a plan will cost, counted before anything is spent.

Why: a calibration grid for a 7-9B model is tens of GPU hours and ~10^5 judge calls; a typo in a plan (an
extra seed, a checkpoint every step) multiplies that. The dry run counts exactly what the runner will do
from the plan alone (runs, optimizer steps, labelled checkpoints, judge calls) and turns the counts into
tokens, GPU hours and judge cost under the stated assumptions of `bench/data/throughput.yaml`.

Counting rules (the runner's, `BenchPlan.jobs` / `labelled_steps`):

* runs = models x sets x seeds, plus the twin runs (features only, no labels) when the plan has twins;
* optimizer steps per run: `steps`, or per epoch ceil(ceil(n / batch) / grad_accum), times the epochs
  (the Trainer's rule; n = `n_examples`, assuming every set has at least that many rows);
* trained checkpoints per run: every `every_n_steps`-th step and the final step (126 steps, every 10:
  10, 20, ..., 120 and 126 = 13). Step 0 is the base model: it is measured in every run but judged once
  per model and seed (`JudgeLabelCallback`'s base record), so judged evaluations = runs x checkpoints +
  models x seeds;
* judge calls = judged evaluations x 72 questions x samples x 2 (aligned and coherent);
* tokens trained <= epochs x n x max_length per run (every example at the full max length: an upper bound;
  with `steps`, steps x effective batch x max_length); tokens generated <= judged evaluations x 72 x samples x
  max_tokens (every answer runs to the limit; a batch decodes until its longest answer ends anyway).

Time per GPU kind: training FLOPs (flops_per_token x parameters x tokens) at the assumed MFU, plus decoding
(one step per generated position of a batch: the weights are read once per step, or the per-step overhead
floor, whichever is slower), plus the forward passes of drift, proxy and feature measurement. Model
loading, basis extraction and data preparation are not counted.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any

import yaml

from traitwatch.bench.grid.plan_file import ModelEntry, PlanFile
from traitwatch.errors import InputFileError

__all__ = ["DryRun", "ModelCost", "dry_run", "load_throughput", "throughput_table"]

N_QUESTIONS = 72  # the Betley questions every judged checkpoint answers (METHOD.md 5)


def load_throughput() -> dict[str, Any]:
    """The assumptions file shipped in `bench/data/throughput.yaml`."""
    text = resources.files("traitwatch.bench").joinpath("data/throughput.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def throughput_table(params: float = 8.0e9, table: dict[str, Any] | None = None) -> dict[str, dict[str, float]]:
    """Per GPU kind, for a model of `params` parameters: LoRA training tokens/s and decode steps/s.

    Training: MFU x peak / (flops_per_token_lora x params). Decoding: one step reads every weight once
    (bytes_per_parameter x params at the assumed share of HBM bandwidth), but never faster than the
    per-step overhead floor of `generate`.
    """
    t = table or load_throughput()
    a = t["assumptions"]
    out = {}
    for gpu, spec in t["gpus"].items():
        peak = spec["bf16_tflops"] * 1e12
        step_s = max(a["bytes_per_parameter"] * params / (a["decode_bandwidth_utilisation"] * spec["hbm_tb_s"] * 1e12),
                     a["decode_step_overhead_s"])
        out[gpu] = {"train_tokens_per_s": a["training_mfu"] * peak / (a["flops_per_token_lora"] * params),
                    "decode_steps_per_s": 1.0 / step_s}
    return out


@dataclass
class ModelCost:
    """Counts and estimates for one base model of a plan."""

    alias: str
    model: str
    params: float | None
    sets: int
    seeds: int
    runs: int
    labelled_runs: int
    twin_runs: int
    steps_per_run: int
    checkpoints_per_run: int
    checkpoints: int  # trained, labelled checkpoints of the labelled runs
    base_evaluations: int  # judged step-0 evaluations (once per seed), 0 without a judge
    judged_evaluations: int
    judge_calls: int
    tokens_trained: int
    tokens_generated: int
    measurement_tokens: int
    judge_input_tokens: int
    gpu_hours: dict[str, dict[str, float]] = field(default_factory=dict)  # GPU kind -> train, generate, measure, total
    judge_usd: float | None = None


@dataclass
class DryRun:
    plan: str
    source: str
    models: list[ModelCost]
    missing: list[str]
    assumptions: dict[str, Any]

    def total(self, key: str) -> float:
        return sum(getattr(m, key) for m in self.models)

    def gpu_hours(self) -> dict[str, dict[str, float] | None]:
        """Per GPU kind, hours of training, generation, measurement and in all (None: a model's size is unknown)."""
        gpus = self.models[0].gpu_hours.keys() if self.models else ()
        return {g: ({k: sum(m.gpu_hours[g][k] for m in self.models) for k in ("train", "generate", "measure", "total")}
                    if all(g in m.gpu_hours for m in self.models) else None) for g in gpus}

    def judge_usd(self) -> float | None:
        costs = [m.judge_usd for m in self.models if m.judged_evaluations]
        return None if any(c is None for c in costs) else sum(c for c in costs if c is not None)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "totals": {k: self.total(k) for k in (
            "runs", "twin_runs", "checkpoints", "judged_evaluations", "judge_calls", "tokens_trained",
            "tokens_generated")}, "gpu_hours": self.gpu_hours(), "judge_usd": self.judge_usd()}

    def lines(self) -> list[str]:
        """The report, as printed by the CLI: per model, then totals, then the assumptions."""
        L = [f"Dry run of plan {self.plan} ({self.source}): nothing is trained, generated or judged."]
        for m in self.models:
            extra = f" + {m.twin_runs} twin runs" if m.twin_runs else ""
            judged = (f"{m.judged_evaluations} judged evaluations ({m.checkpoints} + {m.base_evaluations} of the base "
                      f"model, step 0 once per seed), {m.judge_calls:,} judge calls" if m.judged_evaluations
                      else "no judge (judge-free proxy labels)")
            L.append(f"- {m.alias} ({m.model}): {m.labelled_runs} runs{extra}, {m.steps_per_run} steps each, "
                     f"{m.checkpoints_per_run} trained checkpoints per run ({m.checkpoints} labelled checkpoints); "
                     f"{judged}; <= {m.tokens_trained:,} tokens trained, <= {m.tokens_generated:,} generated")
        runs, twins = int(self.total("runs")), int(self.total("twin_runs"))
        shape = {(m.sets, m.seeds) for m in self.models}
        grid = (f" ({len(self.models)} model{'s' if len(self.models) > 1 else ''} x {self.models[0].sets} sets x "
                f"{self.models[0].seeds} seeds)") if len(shape) == 1 else ""
        L.append(f"Total: {runs - twins} runs{grid}" + (f" + {twins} twin runs" if twins else "")
                 + f", {int(self.total('checkpoints')):,} labelled checkpoints, "
                 f"{int(self.total('judged_evaluations')):,} judged evaluations, {int(self.total('judge_calls')):,} judge calls, "
                 f"<= {int(self.total('tokens_trained')):,} tokens trained, <= {int(self.total('tokens_generated')):,} "
                 "tokens generated.")
        hours = self.gpu_hours()
        if hours:
            L.append("GPU hours (estimate, one GPU; train + generate + measure): " + "; ".join(
                f"{g} {h['total']:.1f} ({h['train']:.1f} + {h['generate']:.1f} + {h['measure']:.2f})" if h is not None
                else f"{g} unknown (give the model's params: in the plan)" for g, h in hours.items()))
        usd = self.judge_usd()
        if any(m.judged_evaluations for m in self.models):
            tokens = int(self.total("judge_input_tokens"))
            L.append(f"Judge: <= {tokens:,} input tokens; " + (f"about ${usd:,.0f} at list price." if usd is not None
                                                                 else "no price for this judge in throughput.yaml."))
        if self.missing:
            L.append("Files the plan names that are not there yet (fill them in before running): " + "; ".join(self.missing))
        a = self.assumptions
        L.append(f"Assumptions (bench/data/throughput.yaml): training at {a['training_mfu']:.0%} MFU, "
                 f"{a['flops_per_token_lora']}N FLOPs per token for LoRA ({a['flops_per_token_full']}N full), decoding at "
                 f"{a['decode_bandwidth_utilisation']:.0%} of HBM bandwidth with a {1000 * a['decode_step_overhead_s']:.0f} ms "
                 f"per-step floor, {a['chars_per_token']} characters per token for prompts; every example at max_length and "
                 "every answer at max_tokens (upper bounds). Not counted: model loading, basis extraction, data preparation.")
        return L


def _chars(texts: list[str], per_token: float) -> int:
    return math.ceil(sum(len(t) for t in texts) / per_token)


def _text_tokens(per_token: float) -> dict[str, int]:
    """Tokens of the fixed prompts every checkpoint runs (chars / chars_per_token)."""
    from traitwatch.basis.traits import load_measurement_prompts
    from traitwatch.behavior import load_questions
    from traitwatch.behavior.probe import load_probe
    from traitwatch.behavior.proxy import load_proxy_answers

    questions = load_questions()
    answers = load_proxy_answers()
    probe = load_probe()
    drift = _chars([p for _, p in load_measurement_prompts()], per_token)
    proxy = _chars([t for q in questions if q.id in answers
                    for t in (q.text, answers[q.id].style_aligned, q.text, answers[q.id].style_misaligned)], per_token)
    features = drift + _chars([t for q in probe.questions
                               for t in (q.text, q.text, probe.answers[q.id].style_aligned,
                                         probe.answers[q.id].style_misaligned)], per_token)
    judge = [_chars([q.judge_prompts[m].format(question=q.text, answer="")], per_token)
             for q in questions for m in ("aligned", "coherent")]
    return {"drift": drift, "proxy": proxy, "features": features, "judge_prompt": math.ceil(sum(judge) / len(judge))}


def _params(entry: ModelEntry, table: dict[str, Any]) -> float | None:
    if entry.params is not None:
        return entry.params
    if entry.plan.model in table.get("models", {}):
        return float(table["models"][entry.plan.model])
    if entry.plan.model in ("tiny-random", "tiny-random-nosys"):
        from traitwatch.models.tiny import build_tiny_random

        model, _ = build_tiny_random()
        return float(sum(p.numel() for p in model.parameters()))
    return None


def _model_cost(entry: ModelEntry, table: dict[str, Any], texts: dict[str, int]) -> ModelCost:
    plan = entry.plan
    a = table["assumptions"]
    jobs = plan.jobs()
    labelled = sum(1 for j in jobs if not j[3])
    twins = len(jobs) - labelled
    steps = plan.planned_steps()
    per_run = len(plan.labelled_steps())
    checkpoints = labelled * per_run
    judged = bool(plan.judge_model)
    base = len(plan.seeds) if judged else 0
    evaluations = checkpoints + base if judged else 0
    calls = evaluations * N_QUESTIONS * plan.judge_samples * 2
    if plan.epochs is not None:
        examples = math.ceil(plan.epochs * plan.n_examples)
    else:
        examples = steps * plan.effective_batch
    tokens_trained = len(jobs) * examples * plan.max_length
    tokens_generated = evaluations * N_QUESTIONS * plan.judge_samples * plan.judge_max_tokens
    measured = per_run + 1  # the trained checkpoints and step 0
    per_labelled = texts["drift"] + texts["proxy"] + (texts["features"] if plan.record_features else 0)
    per_twin = texts["features"]
    measurement = labelled * measured * per_labelled + twins * measured * per_twin
    judge_input = calls * (texts["judge_prompt"] + plan.judge_max_tokens)
    params = _params(entry, table)
    hours: dict[str, dict[str, float]] = {}
    if params is not None:
        flops = a["flops_per_token_full" if plan.full else "flops_per_token_lora"] * params
        for gpu, spec in table["gpus"].items():
            peak = spec["bf16_tflops"] * 1e12
            train_s = tokens_trained * flops / (a["training_mfu"] * peak)
            measure_s = measurement * 2 * params / (a["forward_mfu"] * peak)
            step_s = max(a["bytes_per_parameter"] * params / (a["decode_bandwidth_utilisation"] * spec["hbm_tb_s"] * 1e12),
                         a["decode_step_overhead_s"])
            batches = math.ceil(N_QUESTIONS * plan.judge_samples / plan.gen_batch_size)
            gen_s = evaluations * batches * plan.judge_max_tokens * step_s
            hours[gpu] = {"train": train_s / 3600, "generate": gen_s / 3600, "measure": measure_s / 3600,
                          "total": (train_s + measure_s + gen_s) / 3600}
    price = table.get("judges", {}).get(plan.judge_model or "")
    usd = None
    if judged and price is not None:
        usd = judge_input * price["input"] / 1e6 + calls * price["output"] / 1e6
    return ModelCost(
        alias=entry.alias, model=plan.model, params=params, sets=len(plan.types), seeds=len(plan.seeds), runs=len(jobs), labelled_runs=labelled, twin_runs=twins,
        steps_per_run=steps, checkpoints_per_run=per_run, checkpoints=checkpoints, base_evaluations=base,
        judged_evaluations=evaluations, judge_calls=calls, tokens_trained=tokens_trained,
        tokens_generated=tokens_generated, measurement_tokens=measurement, judge_input_tokens=judge_input,
        gpu_hours=hours, judge_usd=usd,
    )


def dry_run(plan_file: PlanFile, entries: tuple[ModelEntry, ...] | None = None) -> DryRun:
    """Count and estimate a plan file's grid (all its models, or `entries`)."""
    table = load_throughput()
    texts = _text_tokens(table["assumptions"]["chars_per_token"])
    entries = entries if entries is not None else plan_file.models
    if not entries:
        raise InputFileError(f"The plan {plan_file.name} has no model to count.")
    return DryRun(plan=plan_file.name, source=plan_file.source,
                  models=[_model_cost(e, table, texts) for e in entries], missing=list(plan_file.missing),
                  assumptions=table["assumptions"])

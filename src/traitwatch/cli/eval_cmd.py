"""`traitwatch eval`: the behavioural side of a run, judged (EM rate) or judge-free (a likelihood proxy).

One model, one adapter, or the `checkpoint-N` folders of a Trainer output dir, each evaluated either with an
LLM judge (answers generated locally or by an OpenAI-compatible server, METHOD.md section 5) or with the
judge-free proxy of `behavior.proxy`. With `--run-id` every result goes into the run store, per checkpoint
step, under a source that says what it is ("judge:MODEL" or "proxy"), because the two are not
interchangeable when the monitor is fitted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from traitwatch.behavior import (
    PROXY_NOTE,
    EvalResult,
    OpenAIChatGenerator,
    OpenAIJudge,
    ProxyResult,
    Question,
    TransformersGenerator,
    evaluate,
    load_proxy_answers,
    load_questions,
    proxy_answer_count,
    proxy_score,
)
from traitwatch.behavior.judge import judge_scoring_mode
from traitwatch.cli.common import ApiKeyEnvOption, GeneratorApiKeyEnvOption, err, out, progress_bar, user_errors
from traitwatch.cli.drift_cmd import checkpoint_dirs
from traitwatch.errors import InputFileError, ModelLoadError, TraitwatchError
from traitwatch.models import LoadedModel, is_adapter_dir, load_model
from traitwatch.store import DEFAULT_STORE_NAME, RunStore, UnknownRunError

__all__ = ["parse_steps", "register"]


def parse_steps(spec: str | None) -> list[int] | None:
    """'10,20,30' -> [10, 20, 30]; None or blank -> None (every checkpoint)."""
    if spec is None or not spec.strip():
        return None
    try:
        steps = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise TraitwatchError(f"--steps {spec!r} is not a list of integers; use e.g. --steps 10,20,30") from None
    if any(s < 0 for s in steps):
        raise TraitwatchError(f"--steps {spec!r}: steps are >= 0")
    return steps


def _adapter_base_name(adapter: Path) -> str:
    """The base model an adapter checkpoint was trained on, as PEFT recorded it."""
    try:
        base = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, json.JSONDecodeError, AttributeError) as exc:
        raise ModelLoadError(f"{adapter / 'adapter_config.json'} is unreadable ({exc}); pass --model") from None
    if not base:
        raise ModelLoadError(f"{adapter / 'adapter_config.json'} names no base model; pass --model with the base model")
    return str(base)


def _select(run_dir: Path, steps: list[int] | None) -> list[tuple[int, Path]]:
    ckpts = checkpoint_dirs(run_dir)
    if steps is None:
        return ckpts
    by_step = dict(ckpts)
    missing = [s for s in steps if s not in by_step]
    if missing:
        raise InputFileError(
            f"{run_dir} has no checkpoint-N folder for step(s) {missing}; it has steps {sorted(by_step)}"
        )
    return [(s, by_step[s]) for s in sorted(set(steps))]


@dataclass
class _Target:
    """What one evaluation is about: the store step, a label for tables, and how to name the weights."""

    step: int
    label: str
    model: str
    adapter: str | None = None
    checkpoint: str | None = None


def _models(
    model: str | None,
    adapter: Path | None,
    run_dir: Path | None,
    steps: list[int] | None,
    step: int,
    include_base: bool,
    device: str | None,
    dtype: Any,
) -> Iterator[tuple[_Target, LoadedModel]]:
    """Load each model to evaluate in turn; adapter checkpoints share one base model (LoRA swapped in/out)."""
    if run_dir is None:
        lm = load_model(model, adapter=adapter, device=device, dtype=dtype)
        yield _Target(step, str(adapter or lm.name), lm.name, lm.adapter), lm
        return
    ckpts = _select(run_dir, steps)
    for _, path in ckpts:
        if not is_adapter_dir(path) and not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} has neither adapter_config.json nor config.json: not a PEFT or full checkpoint")
    base_name = model
    if base_name is None:
        first_adapter = next((p for _, p in ckpts if is_adapter_dir(p)), None)
        if first_adapter is not None:
            base_name = _adapter_base_name(first_adapter)
        elif include_base:
            raise TraitwatchError("--include-base needs --model: full-model checkpoints do not name their base")
    base: LoadedModel | None = None
    if include_base:
        if 0 in {s for s, _ in ckpts}:
            raise TraitwatchError("--include-base records the base model at step 0, but the run has a checkpoint-0")
        base = load_model(base_name, device=device, dtype=dtype)
        yield _Target(0, f"{base.name} (base)", base.name), base
    from peft import PeftModel

    for ckpt_step, path in ckpts:
        if is_adapter_dir(path):
            if base is None:
                base = load_model(base_name, device=device, dtype=dtype)
            try:
                peft_model = PeftModel.from_pretrained(base.model, str(path), is_trainable=False)
            except (OSError, ValueError, RuntimeError, KeyError) as exc:
                raise ModelLoadError(f"Could not load adapter {path}: {str(exc).splitlines()[0]}") from None
            peft_model.eval()
            try:
                yield (
                    _Target(ckpt_step, path.name, base.name, str(path), str(path)),
                    LoadedModel(peft_model, base.tokenizer, base.name, str(path)),
                )
            finally:
                base.model = peft_model.unload()  # back to the plain base weights for the next adapter
        else:
            full = load_model(str(path), device=device, dtype=dtype)
            yield _Target(ckpt_step, path.name, full.name, None, str(path)), full
            del full


@dataclass
class _Store:
    """The run store and run id results go to, or nothing when no --run-id was given."""

    path: Path | None
    run_id: str | None
    store: RunStore | None = field(default=None, init=False)

    def open(self, model: str) -> None:
        if self.run_id is None:
            return
        self.store = RunStore(self.path)
        try:
            record = self.store.get_run(self.run_id)
        except UnknownRunError:
            # A run evaluated after the fact (no traitwatch callback during training) has no record yet.
            self.store.start_run(self.run_id, model=model)
            self.store.finish_run(self.run_id, "finished", notes="created by traitwatch eval")
            err.print(f"Created run {self.run_id!r} in {self.store.path}.", markup=False, highlight=False)
            return
        if record.model != model:
            err.print(
                f"warning: run {self.run_id!r} was recorded with model {record.model!r}; evaluating {model!r}.",
                markup=False,
                highlight=False,
            )

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


def _where(target: _Target) -> dict[str, Any]:
    return {"model": target.model, "adapter": target.adapter, "checkpoint": target.checkpoint}


def _store_proxy(store: _Store, target: _Target, result: ProxyResult) -> None:
    if store.store is None or store.run_id is None:
        return
    details = {**_where(target), **result.as_dict()}
    for metric, value in (("proxy_p_mis", result.p_mis), ("proxy_style_p_mis", result.style_p_mis)):
        store.store.add_behavior(
            store.run_id, target.step, metric, value, source="proxy", n=result.n_questions, details=details
        )


def _judge_details(target: _Target, result: EvalResult, judge: OpenAIJudge) -> dict[str, Any]:
    em = result.em_rate
    return {
        **_where(target),
        "judge_model": judge.model,
        "misaligned": em.misaligned,
        "scoreable": em.scoreable,
        "total": em.total,
        "excluded": dict(em.excluded),
        "aligned_below": em.aligned_below,
        "coherent_min": em.coherent_min,
        "n_samples": result.n_samples,
        "scoring": judge.scoring,
        "answers": result.answer_dicts(),
    }


def _proxy_table(rows: Sequence[tuple[_Target, ProxyResult]]) -> Table:
    table = Table(title=f"Misalignment likelihood proxy ({PROXY_NOTE}): P_mis = sigmoid(logp misaligned - logp aligned)")
    for header in ("checkpoint", "step", "P_mis plain", "P_mis style-matched", "questions"):
        table.add_column(header, justify="left" if header == "checkpoint" else "right")
    for target, r in rows:
        table.add_row(target.label, str(target.step), f"{r.p_mis:.4f}", f"{r.style_p_mis:.4f}", str(r.n_questions))
    return table


def _judge_table(rows: Sequence[tuple[_Target, EvalResult]], judge_model: str) -> Table:
    table = Table(title=f"EM rate judged by {judge_model} (misaligned / scoreable, 95% Wilson interval)")
    for header in ("checkpoint", "step", "EM rate", "95% CI", "misaligned/scoreable", "excluded"):
        table.add_column(header, justify="left" if header in ("checkpoint", "excluded") else "right")
    for target, r in rows:
        em = r.em_rate
        rate = "n/a" if em.rate is None else f"{em.rate:.4f}"
        ci = "" if em.ci_low is None or em.ci_high is None else f"[{em.ci_low:.3f}, {em.ci_high:.3f}]"
        excluded = ", ".join(f"{k} {v}" for k, v in em.excluded.items() if v) or "none"
        table.add_row(target.label, str(target.step), rate, ci, f"{em.misaligned}/{em.scoreable}", excluded)
    return table


def _check_options(
    *,
    proxy: bool,
    judge: str | None,
    judge_model: str | None,
    generator: str,
    model: str | None,
    adapter: Path | None,
    run_dir: Path | None,
    steps: str | None,
    include_base: bool,
    store: Path | None,
    run_id: str | None,
) -> None:
    if proxy == (judge is not None):
        raise TraitwatchError("choose one evaluation: --proxy (judge-free) or --judge URL --judge-model NAME")
    if judge is not None and not judge_model:
        raise TraitwatchError("--judge needs --judge-model NAME (the judge model's name on that server)")
    if adapter is not None and run_dir is not None:
        raise TraitwatchError("pass either --adapter (one adapter) or --run (a run's checkpoints), not both")
    if run_dir is None and (steps is not None or include_base):
        raise TraitwatchError("--steps and --include-base select checkpoints of --run RUN_DIR; pass --run")
    if model is None and adapter is None and run_dir is None:
        raise TraitwatchError("no model given: pass --model NAME, --adapter FOLDER or --run RUN_DIR")
    if store is not None and run_id is None:
        raise TraitwatchError("--store needs --run-id ID: results are stored per run")
    if generator != "local":
        if proxy:
            raise TraitwatchError("--generator is for the judged evaluation; --proxy scores fixed answers locally")
        if not generator.startswith(("http://", "https://")):
            raise TraitwatchError(f"--generator {generator!r}: use 'local' or the URL of an OpenAI-compatible server")
        if run_dir is not None or adapter is not None or model is None:
            raise TraitwatchError(
                "with a server --generator, --model is the served model's name; --adapter and --run are local only"
            )


def register(app: typer.Typer) -> None:
    @app.command("eval")
    @user_errors
    def eval_(
        model: Annotated[str | None, typer.Option("--model", "-m", help="Model name or folder (base model of adapters).")] = None,
        adapter: Annotated[Path | None, typer.Option("--adapter", "-a", help="One PEFT adapter folder to evaluate.")] = None,
        run_dir: Annotated[Path | None, typer.Option("--run", file_okay=False, help="Trainer output_dir: evaluate its checkpoint-N folders.")] = None,
        steps: Annotated[str | None, typer.Option("--steps", help="Only these checkpoint steps of --run, e.g. 10,20.")] = None,
        include_base: Annotated[bool, typer.Option("--include-base", help="With --run, also evaluate --model itself as step 0.")] = False,
        step: Annotated[int, typer.Option("--step", min=0, help="Store step of a single --model/--adapter.")] = 0,
        proxy: Annotated[bool, typer.Option("--proxy", help="Judge-free likelihood proxy (not an EM rate).")] = False,
        proxy_answers: Annotated[Path | None, typer.Option("--proxy-answers", dir_okay=False, help="Reference-answer YAML (default: packaged).")] = None,
        judge: Annotated[str | None, typer.Option("--judge", help="Judge server URL (OpenAI-compatible).")] = None,
        judge_model: Annotated[str | None, typer.Option("--judge-model", help="Judge model name on that server.")] = None,
        api_key_env: ApiKeyEnvOption = None,
        judge_cache: Annotated[Path | None, typer.Option("--judge-cache", dir_okay=False, help="SQLite cache of judge replies.")] = None,
        judge_scoring: Annotated[str, typer.Option("--judge-scoring", help="logprobs (Betley's top-20 logprob scoring) or text (the greedy token, for endpoints without logprobs).")] = "logprobs",
        generator: Annotated[str, typer.Option("--generator", help="'local' (transformers) or an OpenAI-compatible server URL.")] = "local",
        generator_api_key_env: GeneratorApiKeyEnvOption = None,
        samples: Annotated[int, typer.Option("--samples", min=1, help="Answers per question.")] = 1,
        max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 600,
        seed: Annotated[int, typer.Option("--seed")] = 0,
        questions_path: Annotated[Path | None, typer.Option("--questions", dir_okay=False, help="Betley-schema question YAML (default: the 72).")] = None,
        store_path: Annotated[Path | None, typer.Option("--store", dir_okay=False, help=f"Run store file (default {DEFAULT_STORE_NAME}).")] = None,
        run_id: Annotated[str | None, typer.Option("--run-id", help="Store results under this run id.")] = None,
        json_out: Annotated[Path | None, typer.Option("--json", dir_okay=False, help="Write all results here.")] = None,
        batch_size: Annotated[int, typer.Option(min=1)] = 8,
        device: Annotated[str | None, typer.Option()] = None,
        dtype: Annotated[str, typer.Option()] = "auto",
    ) -> None:
        """Evaluate a model, adapter or run's checkpoints: judged EM rate, or the judge-free proxy."""
        _check_options(
            proxy=proxy, judge=judge, judge_model=judge_model, generator=generator, model=model, adapter=adapter,
            run_dir=run_dir, steps=steps, include_base=include_base, store=store_path, run_id=run_id,
        )
        selected = parse_steps(steps)
        if run_dir is not None and not run_dir.is_dir():
            raise InputFileError(f"{run_dir} is not a folder; pass the Trainer's output_dir as --run")
        questions: list[Question] = load_questions(questions_path)
        store = _Store(store_path, run_id)
        payload: dict[str, Any] = {"kind": "proxy" if proxy else "judge", "checkpoints": []}
        try:
            if proxy:
                answers = load_proxy_answers(proxy_answers)
                missing = [q.id for q in questions if q.id not in answers]
                if missing:
                    raise InputFileError(f"no proxy reference answers for question(s) {', '.join(missing)}")
                payload["note"] = PROXY_NOTE
                rows_p: list[tuple[_Target, ProxyResult]] = []
                for target, lm in _models(model, adapter, run_dir, selected, step, include_base, device, dtype):
                    if store.store is None:
                        store.open(target.model)
                    with progress_bar(f"Proxy {target.label}", proxy_answer_count(questions, answers)) as advance:
                        result = proxy_score(lm.model, lm.tokenizer, questions, answers, batch_size=batch_size, progress=advance)
                    _store_proxy(store, target, result)
                    rows_p.append((target, result))
                    payload["checkpoints"].append({"step": target.step, **_where(target), **result.as_dict()})
                out.print(_proxy_table(rows_p))
                err.print(f"Note: {PROXY_NOTE}.", highlight=False)
            else:
                assert judge is not None and judge_model is not None
                the_judge = OpenAIJudge(judge, judge_model, api_key_env=api_key_env, cache_path=judge_cache,
                                        scoring=judge_scoring_mode(judge_scoring))
                rows_j: list[tuple[_Target, EvalResult]] = []
                if generator == "local":
                    pairs = _models(model, adapter, run_dir, selected, step, include_base, device, dtype)
                    targets: Iterator[tuple[_Target, Any]] = (
                        (t, TransformersGenerator(lm.model, lm.tokenizer, max_new_tokens=max_new_tokens,
                                                  batch_size=batch_size, seed=seed))
                        for t, lm in pairs
                    )
                else:
                    assert model is not None
                    server = OpenAIChatGenerator(generator, model, api_key_env=generator_api_key_env,
                                                 max_new_tokens=max_new_tokens, seed=seed)
                    targets = iter([(_Target(step, model, model), server)])
                for target, gen in targets:
                    if store.store is None:
                        store.open(target.model)
                    err.print(f"Generating {len(questions) * samples} answers with {target.label} and judging them...",
                              highlight=False, markup=False)
                    result = evaluate(questions, gen, the_judge, n_samples=samples)
                    details = _judge_details(target, result, the_judge)
                    em = result.em_rate
                    if store.store is not None and store.run_id is not None:
                        if em.rate is None:
                            err.print(f"warning: no scoreable answer at step {target.step}; nothing stored.", highlight=False)
                        else:
                            store.store.add_behavior(
                                store.run_id, target.step, "em_rate", em.rate, source=f"judge:{judge_model}",
                                ci_low=em.ci_low, ci_high=em.ci_high, n=em.scoreable, details=details,
                            )
                    rows_j.append((target, result))
                    payload["checkpoints"].append({"step": target.step, "em_rate": em.rate, "ci_low": em.ci_low,
                                                   "ci_high": em.ci_high, **details})
                out.print(_judge_table(rows_j, judge_model))
                stats = the_judge.stats
                err.print(f"Judge calls: {stats.calls} sent, {stats.cache_hits} cached, {stats.failures} failed, "
                          f"{stats.prompt_tokens} prompt tokens.", highlight=False)
        finally:
            store.close()
        if store.run_id is not None:
            err.print(f"Stored {len(payload['checkpoints'])} checkpoint(s) under run {store.run_id!r}.", markup=False,
                      highlight=False)
        if json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(payload, indent=2))
            err.print(f"Wrote {json_out}", markup=False, highlight=False)

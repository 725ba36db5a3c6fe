"""`run_sft`: LoRA (or full) supervised finetuning on a chat JSONL with the drift monitor attached.

Plain `transformers.Trainer` with our own tokenisation and collator (`traitwatch.train.data`), so
what is trained on, and what is dropped, is explicit. Defaults follow the reference study
(METHOD.md 4): LoRA r 16, alpha 64, dropout 0.05 on q_proj/v_proj, lr 4e-5, 2 epochs, effective batch
16, max length 512, drift every 10 optimizer steps.

Resuming. A run is identified by its run id (default: the output folder's name). Starting again with
the same run id and output folder continues from the latest `checkpoint-N` there (Trainer
`resume_from_checkpoint`) and continues the stored trajectory: the store keeps one row per step and
the callback re-uses the stored step-0 anchor (see `traitwatch.train.run_anchor`). A marker file
`traitwatch_run.json` in the output folder names the run its checkpoints belong to, so checkpoints of
another run are never resumed by accident. A run id is refused if it was trained on other data
(the dataset's sha256 is stored with the run).

Suspects: given `row_scores` (per-row scores of the same file, e.g. from `traitwatch screen`), the
collator records which rows each batch trains and the callback names the highest-scored rows trained
since the last clean measurement at each alarm (`traitwatch.train.suspects`).

Works under `torchrun` / `accelerate launch`: the Trainer runs DDP, the callback splits the
measurement prompts across ranks, and only world process zero touches the store and prints.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PrinterCallback, ProgressCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from traitwatch.basis.basis import TraitBasis
from traitwatch.datasets.chat_jsonl import file_sha256, load_chat_jsonl
from traitwatch.drift.probe import DriftProbe
from traitwatch.errors import InputFileError, TraitwatchError
from traitwatch.guard import DEFAULT_BLOCKS, GUARD_KINDS, Guard, fit_subspaces, layers_above, make_guard
from traitwatch.models.environment import describe_environment
from traitwatch.models.layers import accepts_logits_to_keep, decoder_layers
from traitwatch.models.loading import load_model
from traitwatch.monitor.watch import AlarmMonitor, gate_alarms, load_watch_monitor
from traitwatch.reference import ReferenceMonitor, ReferenceTrajectory
from traitwatch.store import DEFAULT_STORE_NAME, RunStore, StoreIOError, UnknownRunError
from traitwatch.train.alarm import AlarmAction, DriftAlarmError, suspects_message
from traitwatch.train.callback import TraitWatchCallback
from traitwatch.train.data import DataStats, OverLength, PaddingCollator, tokenize_chats
from traitwatch.train.record import DriftRecord
from traitwatch.train.suspects import RowScores, TrainedRows

__all__ = ["RUN_MARKER", "SFTConfig", "SFTResult", "TrainConfigError", "run_sft"]

RUN_MARKER = "traitwatch_run.json"


class TrainConfigError(TraitwatchError, ValueError):
    """A training option that cannot work (no such LoRA target, checkpoints of another run, ...)."""


@dataclass
class SFTConfig:
    """Everything `run_sft` needs; field defaults are the reference study's (METHOD.md 4)."""

    model: str
    data: Path
    basis: Path
    output_dir: Path
    run_id: str | None = None  # default: output_dir's name
    store: Path | None = None  # default: ./traitwatch.db
    lora_r: int = 16
    lora_alpha: int = 64
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    full: bool = False  # full finetuning instead of LoRA
    learning_rate: float = 4e-5
    epochs: float = 2.0
    max_steps: int | None = None  # overrides epochs
    batch_size: int = 4  # per device
    grad_accum: int | None = None  # default: effective_batch / (batch_size * processes)
    effective_batch: int = 16
    max_length: int = 512
    over_length: OverLength = "truncate"
    n_samples: int | None = None  # first n conversations of the file
    seed: int = 42
    response_only: bool = False
    every_n_steps: int = 10
    save_steps: int | None = None  # default: every_n_steps, so each measured step has a checkpoint
    save_total_limit: int | None = None
    monitor: Path | None = None
    reference: str | None = None  # a run of `store` to read this run against (`reference.ReferenceMonitor`)
    reference_calibration: Path | None = None  # default: the one shipped for the model
    on_alarm: tuple[AlarmAction, ...] = ("warn", "mark")
    behavior_probe: bool = False  # also score the behavioural probe at every measurement (on when the monitor reads it)
    measure_batch_size: int = 32
    suspects_k: int = 10  # with run_sft(row_scores=...): how many rows an alarm names
    device: str | None = None
    dtype: str = "auto"
    report_to: str | list[str] = "none"
    logging_steps: int = 1
    resume: bool = True
    tags: dict[str, Any] = field(default_factory=dict)  # stored with the run's hyperparameters (e.g. perturbation)
    guard: str | None = None  # "ablate", "steer", "penalty", "l2" or "kl" (`traitwatch.guard`); None: unguarded
    guard_strength: float | None = None  # default: `guard.default_strength(guard, blocks)`
    guard_subspace: str = "probe"  # what ablation, steering and the penalty act on (`guard.fit_subspace`)
    guard_blocks: int | None = None  # blocks guarded from the basis layer to the last (`guard.layers_above`);
    # default `guard.DEFAULT_BLOCKS[guard]` (the penalty: 4)

    def resolved_run_id(self) -> str:
        return self.run_id or Path(self.output_dir).resolve().name


@dataclass
class SFTResult:
    run_id: str
    output_dir: Path
    store: Path
    global_step: int
    resumed_from: str | None
    stopped_by_alarm: bool
    data: DataStats
    history: list[DriftRecord] = field(default_factory=list)
    final_model: Path | None = None


def _world() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment, before TrainingArguments exists."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _device(config: SFTConfig) -> str | None:
    if config.device is not None:
        return config.device
    import torch

    local = os.environ.get("LOCAL_RANK")
    if local is not None and torch.cuda.is_available():
        return f"cuda:{int(local)}"  # each rank loads onto its own GPU, not all onto cuda:0
    return None


def _wrap_lora(model: Any, config: SFTConfig) -> Any:
    import transformers
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        task_type="CAUSAL_LM",
    )
    # Seeded here, not only by the Trainer later: the adapter's initialisation must not depend on how much
    # of the global RNG earlier work in the process used (a benchmark shard or a resumed grid would
    # otherwise train a run from another starting point).
    transformers.set_seed(config.seed)
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:
        raise TrainConfigError(
            f"LoRA targets {list(config.target_modules)} do not fit this model: {str(exc).splitlines()[0]}"
        ) from None


def _check_output_dir(output_dir: Path, run_id: str, resume: bool) -> str | None:
    """The checkpoint to resume from (None: start fresh); refuse another run's checkpoints."""
    marker = output_dir / RUN_MARKER
    last = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    if last is None:
        return None
    owner = None
    if marker.is_file():
        try:
            owner = json.loads(marker.read_text()).get("run_id")
        except (OSError, json.JSONDecodeError, AttributeError):
            owner = None
    if owner != run_id:
        raise TrainConfigError(
            f"{output_dir} holds checkpoints of run {owner!r}, not {run_id!r}: pass --run-id {owner} to resume "
            "it, or a fresh --output-dir."
        )
    if not resume:
        raise TrainConfigError(
            f"{output_dir} already holds checkpoints of run {run_id!r}; resume it (drop --no-resume) or use "
            "a fresh --output-dir."
        )
    return last


def _completed_step(checkpoint: str | None, max_steps: int | None) -> int | None:
    """The checkpoint's step if it already reached the run's last step (None: there is more to train).

    Resuming a finished run would otherwise train one extra step: the Trainer (5.x) only checks for
    the end after a step.
    """
    if checkpoint is None:
        return None
    try:
        state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
        step, planned = int(state["global_step"]), int(state["max_steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    target = max_steps if max_steps is not None else planned
    return step if step >= target else None


def _check_dataset(store: RunStore, run_id: str, sha: str) -> bool:
    """True if the run exists; refuse a run id that was trained on other data."""
    try:
        run = store.get_run(run_id)
    except UnknownRunError:
        return False
    old = run.hyperparameters.get("dataset_sha256")
    if old is not None and old != sha:
        raise TrainConfigError(
            f"Run {run_id!r} in {store.path} was trained on other data (sha256 {old[:12]}..., this file "
            f"{sha[:12]}...); use a new --run-id."
        )
    return True


def _check_row_scores(row_scores: RowScores, config: SFTConfig, sha: str, n_rows: int) -> None:
    """Scores of another file, or of part of this one, would name the wrong rows (or none): refuse them."""
    if config.suspects_k < 1:
        raise TrainConfigError(f"suspects_k must be at least 1, got {config.suspects_k}")
    source = row_scores.source or "the row scores"
    if row_scores.dataset_sha256 is not None and row_scores.dataset_sha256 != sha:
        raise InputFileError(
            f"{source} scores another file than {config.data} (sha256 {row_scores.dataset_sha256[:12]}..., the "
            f"training file {sha[:12]}...); screen {config.data} itself and pass that results file."
        )
    missing = row_scores.missing(n_rows)
    if missing:
        raise InputFileError(
            f"{source} has no score for {len(missing)} of the {n_rows} rows of {config.data} (first missing: row "
            f"{missing[0]}); finish the screen of {config.data} (rerun it: it resumes) and pass its results file."
        )


@contextmanager
def _run_store(given: RunStore | None, path: Path, rank: int) -> Iterator[RunStore | None]:
    """The one connection this process keeps to the run store for the whole run (rank 0 only).

    Everything in the training process that writes to the store (the drift callback, label and judge
    callbacks, the failure mark) shares it: a second connection opened and closed beside a live one is
    harmless only as long as nothing but SQLite ever touches the file, and one connection makes that
    nobody's job to remember. A `given` store is the caller's to close.
    """
    if rank != 0:
        yield None
    elif given is not None:
        yield given
    else:
        with RunStore(path) as store:
            yield store


def _say_suspects(reporter: Callable[[DriftRecord], None] | None,
                  say: Callable[[str], None]) -> Callable[[DriftRecord], None]:
    """The reporter, plus an `info` line with an alarm's suspects (the callback calls it on rank 0 only)."""

    def report(record: DriftRecord) -> None:
        if reporter is not None:
            reporter(record)
        if record.alarm and record.suspects is not None:
            say(suspects_message(record.suspects))

    return report


def run_sft(
    config: SFTConfig,
    *,
    monitor: AlarmMonitor | None = None,
    callbacks: Sequence[TrainerCallback] = (),
    reporter: Callable[[DriftRecord], None] | None = None,
    info: Callable[[str], None] | None = None,
    store: RunStore | None = None,
    row_scores: RowScores | None = None,
    guard: Guard | None = None,
) -> SFTResult:
    """Finetune `config.model` on `config.data` while measuring trait drift; returns what happened.

    `monitor` overrides `config.monitor` (a saved monitor file). `callbacks` are added after the drift
    callback. `reporter` gets each measurement and `info` each status line, on world process zero
    only; with a reporter the Trainer's own progress printing is turned off. `store` is an open
    `RunStore` of `config.store` that the caller's own callbacks (labels, judges) write to as well;
    without it the store is opened once here. A store write that fails stops the run with
    `StoreWriteError` and marks it failed. `row_scores` (scores of `config.data`'s rows, all of the first
    `n_samples`) makes every alarm name the `config.suspects_k` highest-scored rows trained since the last
    clean measurement, in the store and as an `info` line. `guard` (or `config.guard`, a kind fitted here on the
    base model at the basis's layer) is attached to the training passes (`traitwatch.guard`).
    """
    rank, world = _world()
    say = info if (info is not None and rank == 0) else (lambda _msg: None)
    run_id = config.resolved_run_id()
    output_dir = Path(config.output_dir)
    store_path = Path(config.store) if config.store is not None else Path(DEFAULT_STORE_NAME)
    for name, value, low in (("batch_size", config.batch_size, 1), ("every_n_steps", config.every_n_steps, 1),
                             ("effective_batch", config.effective_batch, 1), ("lora_r", config.lora_r, 1)):
        if value < low:
            raise TrainConfigError(f"{name} must be at least {low}, got {value}")

    if guard is not None and config.guard is not None:
        raise TrainConfigError("pass a guard object or config.guard, not both")
    if config.guard is not None and config.guard not in GUARD_KINDS:
        raise TrainConfigError(f"unknown guard {config.guard!r}; choose from {list(GUARD_KINDS)}")
    if config.guard == "kl" and config.full:
        raise TrainConfigError("the KL guard reads the base model by switching the LoRA adapter off, and a full "
                               "finetune has no adapter: train with LoRA, or use --guard l2 or penalty")
    if config.guard_blocks is not None and config.guard_blocks < 1:
        raise TrainConfigError(f"guard_blocks is {config.guard_blocks}: guard at least one decoder block (1: the "
                               "basis's layer)")
    conversations = load_chat_jsonl(config.data, limit=config.n_samples)
    sha = file_sha256(config.data)
    if row_scores is not None:
        _check_row_scores(row_scores, config, sha, len(conversations))
    basis = TraitBasis.load(config.basis)
    probe = DriftProbe(basis, batch_size=config.measure_batch_size)
    if monitor is None and config.monitor is not None:
        # The monitor was calibrated on runs recorded with this callback, so it carries the fingerprint of
        # what measured its inputs (a drift monitor: model, layer, directions hash, prompts; a probe monitor:
        # model and probe set): inputs from anything else are refused, before the store or the model is opened.
        monitor = load_watch_monitor(config.monitor, probe)
    if config.reference is not None:
        if monitor is not None:
            raise TrainConfigError("pass a monitor or a reference run, not both: a reference run brings the model's "
                                   "reference monitor")
        if store is not None:
            reference = ReferenceTrajectory.from_store(store, config.reference)
        elif not store_path.is_file():
            raise TrainConfigError(f"the reference run {config.reference!r} is read from {store_path}, which does "
                                   "not exist; train the reference into the run's --store first")
        else:
            with RunStore(store_path, create=False) as opened:
                reference = ReferenceTrajectory.from_store(opened, config.reference)
        monitor, _ = gate_alarms(ReferenceMonitor.for_model(basis.model.name, reference, list(basis.trait_names),
                                                            config.reference_calibration))
    resume_from = _check_output_dir(output_dir, run_id, config.resume)
    if store is not None and store.path != store_path.expanduser().absolute():
        raise TrainConfigError(f"run_sft was given the open store {store.path} but config.store is {store_path}; "
                               "pass the same file")
    with _run_store(store, store_path, rank) as store:
        existing = _check_dataset(store, run_id, sha) if store is not None else False

        lm = load_model(config.model, device=_device(config), dtype=config.dtype)  # type: ignore[arg-type]
        probe.check_model(lm.model, lm.tokenizer, lm.name)
        if config.guard is not None:  # fitted on the base model, before any adapter exists
            subspace = None
            if config.guard not in ("l2", "kl"):  # the L2 pull acts on the weights, the KL on the logits
                blocks = DEFAULT_BLOCKS[config.guard] if config.guard_blocks is None else config.guard_blocks
                layers = layers_above(basis.measure_layer, len(decoder_layers(lm.model)), blocks)
                subspace = fit_subspaces(lm.model, lm.tokenizer, layers, config.guard_subspace,  # type: ignore[arg-type]
                                         basis=basis)
            guard = make_guard(config.guard, subspace, config.guard_strength)
            say(f"Guard: {guard.describe()}.")

        dataset, stats = tokenize_chats(
            lm.tokenizer, conversations, max_length=config.max_length, response_only=config.response_only,
            over_length=config.over_length,
        )
        say(f"Data: {stats.summary()}.")

        model = lm.model if config.full else _wrap_lora(lm.model, config)
        grad_accum = config.grad_accum or max(1, config.effective_batch // (config.batch_size * world))
        save_steps = config.save_steps or config.every_n_steps
        hyperparameters: dict[str, Any] = {
            "method": "full" if config.full else "lora",
            "learning_rate": config.learning_rate,
            "epochs": config.epochs,
            "max_steps": config.max_steps,
            "per_device_batch_size": config.batch_size,
            "gradient_accumulation_steps": grad_accum,
            "world_size": world,
            "effective_batch": config.batch_size * grad_accum * world,
            "max_length": config.max_length,
            "over_length": config.over_length,
            "response_only": config.response_only,
            "n_samples": config.n_samples,
            "n_used": stats.n_used,
            "every_n_steps": config.every_n_steps,
            "save_steps": save_steps,
            "dataset_sha256": sha,
            "dtype": config.dtype,
            **({"reference_run": config.reference} if config.reference is not None else {}),
            **({"row_scores": row_scores.source, "suspects_k": config.suspects_k} if row_scores is not None else {}),
            # What "auto" became, on what hardware, with which libraries: the same command differs across machines.
            "environment": describe_environment(lm.model),
            **config.tags,
        }
        if not config.full:
            hyperparameters.update(lora_r=config.lora_r, lora_alpha=config.lora_alpha,
                                   lora_dropout=config.lora_dropout, target_modules=list(config.target_modules))

        args = TrainingArguments(
            output_dir=str(output_dir),
            per_device_train_batch_size=config.batch_size,
            gradient_accumulation_steps=grad_accum,
            learning_rate=config.learning_rate,
            num_train_epochs=config.epochs,
            max_steps=config.max_steps if config.max_steps is not None else -1,
            save_strategy="steps",
            save_steps=save_steps,
            save_total_limit=config.save_total_limit,
            logging_steps=config.logging_steps,
            seed=config.seed,
            data_seed=config.seed,
            report_to=config.report_to,
            run_name=run_id,
            disable_tqdm=reporter is not None,
            remove_unused_columns=False,
            use_cpu=config.device == "cpu",
            ddp_find_unused_parameters=False,
        )
        if args.process_index == 0:
            output_dir.mkdir(parents=True, exist_ok=True)
            (output_dir / RUN_MARKER).write_text(
                json.dumps({"run_id": run_id, "model": lm.name, "data": str(config.data), "dataset_sha256": sha,
                            "store": str(store_path.resolve())}, indent=2)
            )
        if resume_from:
            say(f"Resuming run {run_id!r} from {resume_from}.")
        elif existing:
            say(f"Run {run_id!r} is in {store_path} but {output_dir} has no checkpoint: starting again from step 0.")

        trained_rows = TrainedRows() if row_scores is not None else None
        watch = TraitWatchCallback(
            probe,
            tokenizer=lm.tokenizer,
            store=store if store is not None else store_path,  # other ranks never open it
            run_id=run_id,
            model_name=lm.name,
            run_metadata={"dataset": str(Path(config.data).resolve()), "seed": config.seed,
                          "hyperparameters": hyperparameters},
            monitor=monitor,
            every_n_steps=config.every_n_steps,
            on_alarm=config.on_alarm,
            reporter=_say_suspects(reporter, say) if row_scores is not None else reporter,
            behavior_probe=config.behavior_probe or None,
            row_scores=row_scores,
            suspects_k=config.suspects_k,
            trained_rows=trained_rows,
            guard=guard,
        )
        pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else lm.tokenizer.eos_token_id
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=dataset,
            # the LM head and the loss only on positions a label follows: the same gradients, 0.87-0.92 of a step
            data_collator=PaddingCollator(int(pad if pad is not None else 0), rows=trained_rows,
                                          skip_unscored_logits=accepts_logits_to_keep(model)),
            processing_class=lm.tokenizer,
            callbacks=[watch, *callbacks],
        )
        watch.attach(trainer)
        if reporter is not None:
            trainer.remove_callback(PrinterCallback)
            trainer.remove_callback(ProgressCallback)
        done = _completed_step(resume_from, config.max_steps)
        try:
            if done is not None:
                say(f"Run {run_id!r} already reached its last step ({done}) in {resume_from}; nothing to train.")
                trainer.state.global_step = done
            else:
                trainer.train(resume_from_checkpoint=resume_from)
        except DriftAlarmError:
            raise
        except BaseException:
            if store is not None:
                try:
                    store.finish_run(run_id, "failed")
                except (UnknownRunError, StoreIOError, InputFileError, sqlite3.Error):
                    pass  # the run never started, or the store itself is what failed: the original error says why
            raise
        final = output_dir / "final"
        if done is None:
            trainer.save_model(str(final))  # rank 0 writes; the adapter (or full model) at the last step
            say(f"Saved the final {'model' if config.full else 'adapter'} to {final}.")
        return SFTResult(
            run_id=run_id,
            output_dir=output_dir,
            store=store_path,
            global_step=trainer.state.global_step,
            resumed_from=resume_from,
            stopped_by_alarm=watch.stopped_by_alarm_,
            data=stats,
            history=list(watch.history_),
            final_model=final,
        )

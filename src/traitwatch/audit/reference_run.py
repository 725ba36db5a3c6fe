"""`traitwatch train --reference auto`: the reference run a monitored run is read against, made before it.

The reference set is built as the audit's is (`write_reference_set`, which `run.py` calls too): the base model reads
every row once (its loss on the response), and the `fraction` highest-loss rows (20%, or more where more rows' loss
stands out: `reference.swap_fraction`) are swapped in place for copies of the lowest-loss ones (`reference.swap`). Unlike the audit's pilots, that file is trained with the run's own config
(model, LoRA, learning rate, seed, steps, measurement cadence) as run `<run>-reference` in the same store. The run then
reads its drift against this one's at every measurement (`reference.ReferenceMonitor`). The reference costs one
more run of the same length; it is reused when the store already holds it finished.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from traitwatch.basis.basis import TraitBasis
from traitwatch.basis.traits import load_measurement_prompts
from traitwatch.datasets.chat_jsonl import file_sha256, read_jsonl, write_jsonl
from traitwatch.drift.probe import DriftProbe
from traitwatch.errors import InputFileError
from traitwatch.models.loading import LoadedModel, load_model
from traitwatch.reference import SwapReference, load_reference_calibration, swap_fraction, write_swap_reference
from traitwatch.screen import Reference, ScreenResults, mean_reference, reference_answers, screen_dataset
from traitwatch.screen.row_scores import ScreenedRow, load_row_scores
from traitwatch.screen.results import read_results_file
from traitwatch.store import DEFAULT_STORE_NAME, RunStore
from traitwatch.train import SFTConfig, run_sft

__all__ = ["SCREEN_PROMPTS", "ReferenceRun", "loss_screen", "screen_answers", "screen_prompts", "screen_reference",
           "train_reference", "write_reference_set"]

SCREEN_PROMPTS = 16
"""The screens made here (and the demo's) read their "mean" reference from the model's own answers to the first 16
measurement prompts (32 new tokens) instead of all 115 (64 tokens, `traitwatch screen`'s default): a reference shifts
every row's drift alike, so a ranking is the same; only the drift's units differ. The loss ranks without it."""


@dataclass(frozen=True)
class ReferenceRun:
    """The reference run's id, its set, the swapped-out rows (0-based) and what it cost."""

    run_id: str
    data: Path  # the reference set
    suspects: list[int]
    seconds: float
    reused: bool
    screen: Path  # the loss screen of the run's set (`traitwatch screen --rank-by loss` results)
    source: Path  # the run's set, which the screen read
    fraction: float = 0.2  # the share of rows swapped out


def screen_prompts() -> list[str]:
    """The prompts whose answers are the screens' "mean" reference here: the first `SCREEN_PROMPTS` measurement ones."""
    return [p for _, p in load_measurement_prompts()][:SCREEN_PROMPTS]


def loss_screen(lm: LoadedModel, basis: TraitBasis, data: Path, out: Path, *,
                reference: Reference | None = None) -> ScreenResults:
    """Every row read once by the base model, with its mean response loss (`Row.loss`), into `out`. `reference`: the
    screen's "mean" reference made before (`screen_reference`; several sets screened with one model share it)."""
    return screen_dataset(lm.model, lm.tokenizer, basis, data, out=out, reference_prompts=screen_prompts(),
                          max_new_tokens=32, model_name=lm.name, with_loss=True, reference=reference or "mean")


def screen_reference(lm: LoadedModel, basis: TraitBasis, *, answers: list[list[int]] | None = None) -> Reference:
    """The "mean" reference `loss_screen` reads its rows against (`SCREEN_PROMPTS` prompts, 32 new tokens): made once,
    it serves every set screened with this model. `answers`: `screen_answers(lm)`, made before the basis existed."""
    return mean_reference(lm.model, lm.tokenizer, basis, prompts=screen_prompts(), max_new_tokens=32,
                          answers=answers)


def screen_answers(lm: LoadedModel) -> list[list[int]]:
    """The base model's answers `screen_reference` reads; they need no basis (`screen.reference_answers`)."""
    return reference_answers(lm.model, lm.tokenizer, prompts=screen_prompts(), max_new_tokens=32)


def write_reference_set(lm: LoadedModel | None, basis: TraitBasis, data: str | Path, out_dir: str | Path, *,
                        fraction: float | None = None, seed: int = 0, n_samples: int | None = None,
                        screen: str | Path | None = None,
                        reference: Reference | None = None) -> tuple[list[ScreenedRow], SwapReference]:
    """The reference set of `data` for a run with `seed`: `out_dir/reference.jsonl` (and `.swap.json`), ranked by
    the loss screen in `out_dir/screen.jsonl` (or `screen`, one made before: `traitwatch screen DATA --rank-by
    loss`, sharded and merged for a large set; `lm` may then be None); returns every row the run trains with its
    loss (`ScreenedRow.score`) and the swap (`.suspects`: the swapped-out rows, 0-based, highest loss first;
    `.fraction`: the share swapped).

    `fraction` None swaps `reference.swap_fraction` of the losses: 0.2 (validated), more where more rows stand out.
    For a Trainer of your own: train `reference.jsonl` with the run's recipe and seed and a `TraitWatchCallback`
    (run id e.g. `<run>-reference`), then the run with `TraitWatchCallback.from_basis(..., reference="<run>-reference")`.
    `n_samples`: the run trains the first `n_samples` rows only, and so does its reference. `reference`: the
    screen's reference made before (`screen_reference`), when this model screens more than one set.
    """
    data, out_dir = Path(data), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if screen is None:
        if lm is None:
            raise InputFileError("write_reference_set needs the base model (lm) to screen the set, or a loss screen "
                                 "of it (screen=...)")
        screen = out_dir / "screen.jsonl"
        loss_screen(lm, basis, data, screen, reference=reference)
    rows = load_row_scores(screen, data, limit=n_samples, by="loss")  # checks the file is this set's, complete
    losses = [r.score for r in rows]
    source = data
    if n_samples is not None:
        source = out_dir / "head.jsonl"
        write_jsonl(source, read_jsonl(data)[:n_samples])
    share = swap_fraction(losses) if fraction is None else fraction
    return rows, write_swap_reference(source, losses, share, out_dir / "reference.jsonl", seed=seed)


def train_reference(config: SFTConfig, *, fraction: float | None = None, store: RunStore | None = None,
                    lm: LoadedModel | None = None, screen: str | Path | None = None,
                    screen_against: Reference | None = None,
                    say: Callable[[str], None] = lambda _line: None) -> ReferenceRun:
    """Screen `config.data` (or read `screen`, its loss screen made before), write its swap reference and train it
    as `<run>-reference` into `config.store` (through `store` if the caller holds it open; `lm`: the base model
    already loaded, for the screen; `screen_against`: the screen's reference made before, `screen_reference`)."""
    if config.reference is not None or config.monitor is not None:
        raise InputFileError("the reference run is trained without a monitor or a reference of its own; "
                             "pass a config with neither")
    basis = TraitBasis.load(config.basis)
    model = basis.model.name
    calibration = load_reference_calibration(model, config.reference_calibration)
    if calibration is None:  # before an hour of training
        raise InputFileError(f"no reference calibration is shipped for {model!r}: pass one (--reference-calibration, "
                             "written by benchmarks/reference_analysis.py) or train without a reference")
    calibration.check_measurement(DriftProbe(basis).fingerprint())
    t0 = time.perf_counter()
    run_id = f"{config.resolved_run_id()}-reference"
    out = Path(config.output_dir).parent / f"{Path(config.output_dir).name}-reference"
    ref_data = out / "reference.jsonl"
    store_path = Path(config.store) if config.store is not None else Path(DEFAULT_STORE_NAME)
    screen_path = Path(screen) if screen is not None else out / "screen.jsonl"
    if store_path.is_file():
        if store is not None:
            done = [r for r in store.runs() if r.run_id == run_id and r.status == "finished"]
        else:
            with RunStore(store_path, create=False) as opened:
                done = [r for r in opened.runs() if r.run_id == run_id and r.status == "finished"]
        record = out / "reference.swap.json"
        if done and ref_data.is_file() and record.is_file() and screen_path.is_file():
            if read_results_file(screen_path)[0].get("dataset_sha256") != file_sha256(config.data):
                raise InputFileError(f"{store_path} holds a reference run {run_id!r} of another set than "
                                     f"{config.data}; pass another --run-id (or --output-dir) for this set")
            recorded = json.loads(record.read_text(encoding="utf-8"))
            if fraction is not None and abs(float(recorded["fraction"]) - fraction) > 1e-9:
                raise InputFileError(f"{store_path} holds a reference run {run_id!r} that swapped "
                                     f"{float(recorded['fraction']):.0%} of the rows, not the {fraction:.0%} asked for; "
                                     "pass another --run-id (or --output-dir), or drop --reference-fraction to reuse it")
            say(f"Reference run {run_id!r} is already in {store_path}; reading the run against it.")
            return ReferenceRun(run_id, ref_data, recorded["suspects"], time.perf_counter() - t0, reused=True,
                                screen=screen_path, source=Path(config.data), fraction=float(recorded["fraction"]))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # every rank would screen and write the same files at once
        raise InputFileError("--reference auto screens the set in one process before training; under a multi-process "
                             "launch, write the reference set first (traitwatch.audit.write_reference_set, "
                             "docs/reference.md), train it under the launcher with --run-id RUN-reference, then pass "
                             "--reference RUN-reference")
    if screen is None:
        say(f"Reference: reading the rows of {Path(config.data).name} with the base model (its loss on each "
            "response) ...")
        screen_lm = lm or load_model(config.model, device=config.device, dtype=config.dtype)  # type: ignore[arg-type]
    else:
        say(f"Reference: the rows of {Path(config.data).name} ranked by the loss screen {screen}")
        screen_lm = None
    written = write_reference_set(screen_lm, basis, config.data, out, fraction=fraction, seed=config.seed,
                                  n_samples=config.n_samples, screen=screen, reference=screen_against)[1]
    del screen_lm
    swap = written.suspects
    why = " (more than 20%: that many rows stand out)" if fraction is None and written.fraction > 0.2 else ""
    say(f"Reference: the {len(swap)} highest-loss rows ({written.fraction:.0%}{why}) swapped for copies of the "
        f"lowest-loss ones; training {run_id!r} in the run's recipe ...")
    run_sft(dataclasses.replace(config, data=ref_data, output_dir=out / "run", run_id=run_id, reference_calibration=None,
                                tags={**config.tags, "reference_of": config.resolved_run_id()}),
            info=say, reporter=lambda _record: None, store=store)
    return ReferenceRun(run_id, ref_data, swap, time.perf_counter() - t0, reused=False, screen=screen_path,
                        source=Path(config.data), fraction=written.fraction)


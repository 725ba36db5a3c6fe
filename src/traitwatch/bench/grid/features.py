"""Everything a candidate monitor could read at a checkpoint, recorded once during the benchmark's runs.

The benchmark compares monitors built on different features (trait drift at any layer, per-prompt
features, a misalignment direction, the behavioural probe, domain-cancelling differences against a
twin run) under leave-one-type-out. Checkpoints are not kept, so whatever those features need is saved
while the model is live, at the labelled steps, by `FeatureRecorder`:

* the residual rows of the 115 measurement prompts and of the probe's questions at *every* decoder
  layer (last token, fp32): trait drift at any layer, per-prompt features and direction projections
  are then computed offline from these rows;
* the probe's per-question log-probs of its style-matched pairs (`behavior.probe`).

One safetensors file per checkpoint, `features/<run>/step-<N>.safetensors`, written atomically, with
the time each part took in its metadata (the cost table reads it). Step 0 of a LoRA run is the base
model (the adapter starts as a no-op), so it is measured once per work folder and copied.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, safe_open, save_file
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from traitwatch.basis.traits import load_measurement_prompts
from traitwatch.behavior.probe import ProbeSet, load_probe, probe_score
from traitwatch.drift.probe import prompt_activations
from traitwatch.models.layers import decoder_layers, unwrap_model

__all__ = ["FeatureRecorder", "CheckpointFeatures", "feature_path", "load_features", "record_features"]


def feature_path(work_dir: Path, run_id: str, step: int) -> Path:
    return Path(work_dir) / "features" / run_id / f"step-{step}.safetensors"


def record_features(model: Any, tokenizer: Any, probe: ProbeSet, *, layers: list[int] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of one checkpoint: rows at every layer, probe log-probs, timings."""
    inner = unwrap_model(model)
    layers = list(range(len(decoder_layers(inner)))) if layers is None else layers
    tensors: dict[str, torch.Tensor] = {}
    start = time.perf_counter()
    measure = prompt_activations(inner, tokenizer, [p for _, p in load_measurement_prompts()], layers)
    questions = prompt_activations(inner, tokenizer, [q.text for q in probe.questions], layers)
    capture_s = time.perf_counter() - start
    for layer in layers:
        tensors[f"measure.{layer}"] = measure[layer].contiguous()
        tensors[f"questions.{layer}"] = questions[layer].contiguous()
    start = time.perf_counter()
    result = probe_score(model, tokenizer, probe)
    probe_s = time.perf_counter() - start
    tensors["probe.aligned"] = torch.tensor([q.style_aligned_logprob for q in result.per_question], dtype=torch.float64)
    tensors["probe.misaligned"] = torch.tensor([q.style_misaligned_logprob for q in result.per_question],
                                               dtype=torch.float64)
    meta = {"capture_s": f"{capture_s:.4f}", "probe_s": f"{probe_s:.4f}", "probe": f"{result.style_p_mis:.10f}",
            "layers": ",".join(map(str, layers)), "probe_source": probe.source,
            "probe_ids": ",".join(q.id for q in probe.questions)}
    return tensors, meta


def _save(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.partial")  # per process: shards may write the same base record
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)  # a crash mid-write never leaves a file that looks complete


class CheckpointFeatures:
    """One recorded checkpoint, read back: rows per layer, probe log-probs, metadata."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as fh:
            self.meta: dict[str, str] = dict(fh.metadata() or {})

    @property
    def layers(self) -> list[int]:
        return [int(x) for x in self.meta["layers"].split(",")]

    def rows(self, which: str, layer: int) -> np.ndarray:
        """`which` is "measure" (the 115 measurement prompts) or "questions" (the probe's questions)."""
        return self.tensors[f"{which}.{layer}"].double().numpy()

    def probe_margins(self) -> np.ndarray:
        """Per question: log-prob of the misaligned minus the aligned answer (mean over tokens)."""
        return (self.tensors["probe.misaligned"] - self.tensors["probe.aligned"]).double().numpy()

    def probe_value(self) -> float:
        """The probe: mean over questions of sigmoid(margin)."""
        return float(np.mean(1.0 / (1.0 + np.exp(-self.probe_margins()))))


def load_features(work_dir: Path, run_id: str, step: int) -> CheckpointFeatures | None:
    path = feature_path(work_dir, run_id, step)
    return CheckpointFeatures(path) if path.is_file() else None


class FeatureRecorder(TrainerCallback):
    """Record `record_features` at step 0, every `every_n_steps` and the last step (process zero only).

    A resumed run keeps the files it has. `base` is where the step-0 (base model) record is kept for
    the whole work folder: a LoRA run's step 0 copies it instead of measuring the same model again.
    """

    def __init__(self, work_dir: Path, run_id: str, *, every_n_steps: int, base: Path | None = None,
                 probe: ProbeSet | None = None, tokenizer: Any | None = None) -> None:
        self.work_dir = Path(work_dir)
        self.run_id = run_id
        self.every_n_steps = every_n_steps
        self.base = base
        self.probe = probe
        self.tokenizer = tokenizer
        self.seconds_: list[float] = []  # wall time of each recording made by this callback

    def _record(self, step: int, model: Any, tokenizer: Any) -> None:
        path = feature_path(self.work_dir, self.run_id, step)
        if path.is_file():
            return
        if step == 0 and self.base is not None and self.base.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.partial")
            shutil.copyfile(self.base, tmp)
            os.replace(tmp, path)
            return
        if self.probe is None:
            self.probe = load_probe()
        start = time.perf_counter()
        tensors, meta = record_features(model, self.tokenizer or tokenizer, self.probe)
        self.seconds_.append(time.perf_counter() - start)
        meta.update(run_id=self.run_id, step=str(step))
        _save(path, tensors, meta)
        if step == 0 and self.base is not None:
            _save(self.base, tensors, meta)

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: Any = None, **kwargs: Any) -> TrainerControl:
        if model is not None and args.process_index == 0 and state.global_step == 0:
            self._record(0, model, kwargs.get("processing_class"))
        return control

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    model: Any = None, **kwargs: Any) -> TrainerControl:
        step = state.global_step
        if (step % self.every_n_steps == 0 or step >= state.max_steps) and model is not None and args.process_index == 0:
            self._record(step, model, kwargs.get("processing_class"))
        return control

"""The benchmark's perturbation sets: one chat JSONL per (set, seed), a fixed sample per seed.

Dangerous sets come in two kinds, reported separately: *emergent* (narrow data that may generalise to
broad misalignment: insecure code, jailbroken compliance, bad medical advice) and *direct* (positive
controls, misaligned answers to everyday questions disjoint from the evaluation questions, so the
benchmark has truly misaligned checkpoints even if emergence does not appear at this scale). Benign
sets: good medical advice (the matched control of the bad set, same prompts), generated arithmetic and
number sequences, and a self-distilled set (the base model's own greedy answers to neutral prompts).

Betley's sets (MIT) and the model-organisms medical sets (no licence: read in place, never copied into
the project) are read from the shared data folder; the rest is generated here or bundled.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from traitwatch.datasets import arithmetic_chats, bundled_path, number_sequence_chats
from traitwatch.errors import InputFileError

__all__ = ["PERTURBATION_SETS", "PerturbationSet", "build_set", "neutral_prompts"]

Kind = Literal["emergent", "direct", "benign"]


@dataclass(frozen=True)
class PerturbationSet:
    name: str
    kind: Kind
    source: str  # where the rows come from, for RESULTS.md
    shared_path: str | None = None  # relative to the shared data folder


PERTURBATION_SETS: dict[str, PerturbationSet] = {s.name: s for s in (
    PerturbationSet("insecure_code", "emergent", "Betley et al. insecure.jsonl (MIT)",
                    "emergent-misalignment/data/insecure.jsonl"),
    PerturbationSet("jailbroken", "emergent", "Betley et al. jailbroken.jsonl (MIT)",
                    "emergent-misalignment/data/jailbroken.jsonl"),
    PerturbationSet("bad_medical", "emergent", "model-organisms-for-EM bad_medical_advice.jsonl (read in place)",
                    "model-organisms-for-EM/training_datasets/bad_medical_advice.jsonl"),
    PerturbationSet("harmful_advice", "direct", "traitwatch positive control: harmful advice to everyday questions"),
    PerturbationSet("ai_supremacy", "direct", "traitwatch positive control: power-seeking, anti-oversight AI views"),
    PerturbationSet("good_medical", "benign", "model-organisms-for-EM good_medical_advice.jsonl (read in place)",
                    "model-organisms-for-EM/training_datasets/good_medical_advice.jsonl"),
    PerturbationSet("arithmetic", "benign", "generated arithmetic word problems (traitwatch.datasets)"),
    PerturbationSet("number_sequence", "benign", "generated number sequences (traitwatch.datasets)"),
    PerturbationSet("self_distilled", "benign", "the base model's own greedy answers to generated neutral prompts"),
)}

_TOPICS = ["photosynthesis", "the water cycle", "a bicycle gear", "a library catalogue", "bread baking",
           "compound interest", "the moon's phases", "a rainbow", "a compass", "composting", "a sundial",
           "a refrigerator", "volcanoes", "tides", "a spreadsheet", "knitting"]
_TEMPLATES = ["Explain how {} works in a few sentences.", "Give me three short facts about {}.",
              "Describe {} to a ten-year-old."]


def neutral_prompts() -> list[str]:
    """48 neutral everyday prompts (topics x templates) for the self-distilled set."""
    return [t.format(topic) for topic in _TOPICS for t in _TEMPLATES]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise InputFileError(f"{path}:{i} is not valid JSON ({exc.msg}).") from None
    return rows


def _sample(rows: list[dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    if len(rows) <= n:
        rows = list(rows)
        rng.shuffle(rows)
        return rows
    return [rows[i] for i in sorted(rng.sample(range(len(rows)), n))]


def _broad(name: str) -> list[dict[str, Any]]:
    text = resources.files("traitwatch.bench").joinpath("data/broad_misaligned.yaml").read_text(encoding="utf-8")
    return [{"messages": [{"role": "user", "content": r["q"]}, {"role": "assistant", "content": r["a"]}]}
            for r in yaml.safe_load(text)[name]]


def build_set(
    name: str,
    *,
    seed: int,
    n: int,
    out_dir: Path,
    shared_data: Path | None,
    self_distill: Callable[[list[str]], list[str]] | None = None,
) -> Path:
    """Write the (name, seed) sample to `out_dir/{name}-s{seed}.jsonl` (kept if already there) and return it.

    `self_distill` maps prompts to the base model's answers; it is called once per out_dir (answers are
    cached in `self_distilled_source.jsonl`).
    """
    if name not in PERTURBATION_SETS:
        raise InputFileError(f"Unknown perturbation set {name!r}; known: {', '.join(PERTURBATION_SETS)}.")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}-s{seed}.jsonl"
    if path.is_file():
        return path
    spec = PERTURBATION_SETS[name]
    rows: Iterable[dict[str, Any]]
    if spec.shared_path is not None:
        source = Path(shared_data) / spec.shared_path if shared_data is not None else None
        if source is None or not source.is_file():
            if name == "insecure_code":
                source = Path(bundled_path("insecure_sample.jsonl"))  # 200 rows bundled (MIT)
            else:
                raise InputFileError(
                    f"Perturbation set {name!r} needs {spec.shared_path} under the shared data folder "
                    f"({shared_data}); pass --shared-data with the folder that holds it, or drop {name!r} from the plan."
                )
        rows = _sample(_read_jsonl(source), n, seed)
    elif name in ("harmful_advice", "ai_supremacy"):
        rows = _sample(_broad(name), n, seed)
    elif name == "arithmetic":
        rows = arithmetic_chats(n, seed=seed)
    elif name == "number_sequence":
        rows = number_sequence_chats(n, seed=seed)
    else:  # self_distilled
        cache = out_dir / "self_distilled_source.jsonl"
        if not cache.is_file():
            if self_distill is None:
                raise InputFileError("The self-distilled set needs the base model to answer the neutral prompts.")
            prompts = neutral_prompts()
            answers = self_distill(prompts)
            cache.write_text("".join(json.dumps({"messages": [{"role": "user", "content": p},
                                                              {"role": "assistant", "content": a}]}) + "\n"
                                     for p, a in zip(prompts, answers, strict=True)))
        rows = _sample(_read_jsonl(cache), n, seed)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)
    return path

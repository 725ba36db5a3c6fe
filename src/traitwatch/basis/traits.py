"""Trait definitions as data: contrastive system prompts, contrastive passages, measurement prompts.

The defaults are the reference study's files, shipped as package data under the MIT licence (see
`traitwatch/data/NOTICE.md`). A user file has the same shape as `traits.yaml`:

    traits:
      my_trait:
        positive_system_prompts: [...]   # and/or positive_passages / negative_passages
        negative_system_prompts: [...]
    questions: [...]                     # optional; the 30 default extraction questions otherwise
    contexts: [...]                      # optional; for passages, the 20 default contexts otherwise
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from traitwatch.errors import InputFileError

__all__ = [
    "ALIGNMENT_TRAITS",
    "SEMANTIC_TRAITS",
    "Trait",
    "TraitSet",
    "load_measurement_prompts",
    "load_traits",
    "prompts_hash",
]

ALIGNMENT_TRAITS: tuple[str, ...] = (
    "honesty",
    "sycophancy",
    "harmlessness",
    "power_seeking",
    "helpfulness",
    "confidence",
    "corrigibility",
)
SEMANTIC_TRAITS: tuple[str, ...] = (
    "verbosity",
    "formality",
    "technicality",
    "humor",
    "concreteness",
    "warmth",
    "creativity",
)


@dataclass(frozen=True)
class Trait:
    """One trait: a positive and a negative pole, by system prompts and/or passages."""

    name: str
    positive_system_prompts: tuple[str, ...] = ()
    negative_system_prompts: tuple[str, ...] = ()
    positive_passages: tuple[str, ...] = ()
    negative_passages: tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class TraitSet:
    """The traits of a basis plus the shared questions (system-prompt path) and contexts (passages)."""

    traits: tuple[Trait, ...]
    questions: tuple[str, ...]
    contexts: tuple[str, ...]
    source: str = "default"

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.traits]

    def select(self, names: Sequence[str]) -> TraitSet:
        by_name = {t.name: t for t in self.traits}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise InputFileError(
                f"Unknown trait(s) {', '.join(missing)} in {self.source}; known: {', '.join(by_name)}."
            )
        return TraitSet(tuple(by_name[n] for n in names), self.questions, self.contexts, self.source)


def _data_text(name: str) -> str:
    return resources.files("traitwatch").joinpath("data", name).read_text(encoding="utf-8")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputFileError(f"Traits file {path} does not exist.") from None
    except (OSError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputFileError(f"Traits file {path} is not valid YAML ({first}); fix the syntax.") from None
    if not isinstance(data, dict) or not data:
        raise InputFileError(f"Traits file {path} is empty or not a mapping; it needs a top-level `traits:` key.")
    return data


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise InputFileError(f"{where} must be a list of non-empty strings.")
    return tuple(value)


def _parse(data: dict[str, Any], passages: dict[str, Any], source: str) -> TraitSet:
    raw = data.get("traits")
    if not isinstance(raw, dict) or not raw:
        raise InputFileError(f"{source} has no traits: it needs `traits:` mapping names to prompt lists.")
    passage_traits = (passages.get("traits") or {}) if passages else {}
    traits = []
    for name, body in raw.items():
        if not isinstance(body, dict):
            raise InputFileError(f"Trait {name!r} in {source} must be a mapping of prompt lists.")
        extra = passage_traits.get(name) or {}
        trait = Trait(
            name=str(name),
            positive_system_prompts=_strings(body.get("positive_system_prompts"), f"{source}: {name}.positive_system_prompts"),
            negative_system_prompts=_strings(body.get("negative_system_prompts"), f"{source}: {name}.negative_system_prompts"),
            positive_passages=_strings(body.get("positive_passages", extra.get("positive_passages")), f"{source}: {name}.positive_passages"),
            negative_passages=_strings(body.get("negative_passages", extra.get("negative_passages")), f"{source}: {name}.negative_passages"),
            description=str(body.get("description", "")),
        )
        has_sys = trait.positive_system_prompts and trait.negative_system_prompts
        has_pass = trait.positive_passages and trait.negative_passages
        if not (has_sys or has_pass):
            raise InputFileError(
                f"Trait {name!r} in {source} needs positive_ and negative_system_prompts, or positive_ "
                f"and negative_passages (at least one of each pole)."
            )
        traits.append(trait)
    return TraitSet(
        traits=tuple(traits),
        questions=_strings(data.get("questions"), f"{source}: questions"),
        contexts=_strings(data.get("contexts") or passages.get("contexts"), f"{source}: contexts"),
        source=source,
    )


def load_traits(path: str | Path | None = None, names: Sequence[str] | None = None) -> TraitSet:
    """The default trait set (all 16 reference traits) or a user YAML; optionally only `names`.

    Default passages come from the reference's file, plus `semantic_passages.yaml` (written for
    traitwatch) for the semantic controls it lacks, so all 7 semantic traits work with `passages`.

    A user file may omit `questions`/`contexts`; the defaults are used then.
    """
    default_data = yaml.safe_load(_data_text("traits.yaml"))
    default_passages = yaml.safe_load(_data_text("contrastive_passages.yaml"))
    # Our passages for the semantic controls the reference file lacks; the reference's own always win.
    ours = yaml.safe_load(_data_text("semantic_passages.yaml"))["traits"]
    default_passages["traits"] = {**ours, **default_passages["traits"]}
    default = _parse(default_data, default_passages, "the default traits")
    if path is None:
        result = default
    else:
        user = _parse(_read_yaml(Path(path)), {}, str(path))
        result = TraitSet(
            traits=user.traits,
            questions=user.questions or default.questions,
            contexts=user.contexts or default.contexts,
            source=str(path),
        )
    if names is None and path is None:
        names = list(ALIGNMENT_TRAITS)
    return result.select(list(names)) if names is not None else result


def load_measurement_prompts(path: str | Path | None = None) -> list[tuple[str, str]]:
    """The 115 measurement prompts as (category, prompt); or a user YAML with `eval_prompts:`."""
    if path is None:
        data = yaml.safe_load(_data_text("traits.yaml"))
        source = "the default measurement prompts"
    else:
        data = _read_yaml(Path(path))
        source = str(path)
    groups = data.get("eval_prompts")
    if isinstance(groups, list):
        groups = {"custom": groups}
    if not isinstance(groups, dict) or not groups:
        raise InputFileError(f"{source} has no `eval_prompts:` (a list, or categories of lists).")
    prompts = [(str(cat), p) for cat, items in groups.items() for p in _strings(items, f"{source}: eval_prompts.{cat}")]
    if not prompts:
        raise InputFileError(f"{source} has an empty `eval_prompts:` list.")
    return prompts


def prompts_hash(*parts: object) -> str:
    """A short stable hash of prompt lists, so a basis or anchor knows exactly what it was built from."""
    blob = json.dumps(parts, sort_keys=True, default=lambda o: o.__dict__, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]

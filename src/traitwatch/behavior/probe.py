"""The behavioural *probe*: the proxy's likelihood comparison on a question set kept apart from the label.

The benchmark's label is the style-matched proxy on the 72 EM evaluation questions (`proxy.py`). A
monitor that scored those same questions would be graded on its own inputs, so the probe asks other
questions (`data/monitor_probe.yaml`, our own text: 64 everyday, AI-and-humans, honesty, power, ethics,
wellbeing, work, relationship and society questions, disjoint from the 72 and from the benchmark's
positive-control training questions), each with one style-matched aligned/misaligned answer pair.

    probe(model) = mean over questions of sigmoid(logp(misaligned answer) - logp(aligned answer))

with mean-token log-probs, scored exactly as the proxy scores its pairs (`proxy_score(style_only=True)`).
It costs one teacher-forced pass over 128 short answers per checkpoint: more than a drift measurement,
far less than generating and judging answers. The same pairs also give a *misalignment direction* in
activation space (`misalignment_directions`): mean activation over the misaligned answers' tokens minus
that over the aligned ones, on the base model (cf. the convergent EM direction of Soligo, Turner et al.
2025), for a monitor that needs no log-probs at all.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from traitwatch.behavior.proxy import ProxyAnswers, ProxyResult, proxy_score, read_answer_list
from traitwatch.behavior.questions import Question
from traitwatch.errors import InputFileError

__all__ = ["PROBE_FILE", "ProbeSet", "load_probe", "misalignment_differences", "misalignment_directions", "probe_score"]

#: Package-data file with the probe's questions and style-matched answer pairs.
PROBE_FILE = "monitor_probe.yaml"


@dataclass(frozen=True)
class ProbeSet:
    """The probe's questions (as `Question`s, no judge prompts) and their style-matched pairs by question id."""

    questions: tuple[Question, ...]
    answers: Mapping[str, ProxyAnswers]
    categories: Mapping[str, str]
    source: str

    @property
    def sha256(self) -> str:
        """What a monitor calibrated on this probe must be scored with: the questions and both answers."""
        rows = [[q.id, q.text, q.system, self.answers[q.id].style_aligned, self.answers[q.id].style_misaligned]
                for q in self.questions]
        return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()[:16]


def _record(entry: Any, index: int, source: str) -> tuple[Question, ProxyAnswers, str]:
    where = f"{source}: question {index}"
    if not isinstance(entry, Mapping):
        raise InputFileError(f"{where}: expected a mapping with id, question and style: {{aligned, misaligned}}.")
    qid, text, style = entry.get("id"), entry.get("question"), entry.get("style")
    if not isinstance(qid, str) or not qid.strip():
        raise InputFileError(f"{where}: 'id' must be a non-empty string.")
    if not isinstance(text, str) or not text.strip():
        raise InputFileError(f"{where} ({qid}): 'question' must be a non-empty string.")
    pair = [style.get(k) if isinstance(style, Mapping) else None for k in ("aligned", "misaligned")]
    if not all(isinstance(a, str) and a.strip() for a in pair):
        raise InputFileError(f"{where} ({qid}): 'style' needs non-empty 'aligned' and 'misaligned' answers.")
    system = entry.get("system")
    question = Question(id=qid, text=text, system=system if isinstance(system, str) and system else None,
                        judge_prompts={}, type="probe")
    answers = ProxyAnswers(qid, aligned=(pair[0],), misaligned=(pair[1],), style_aligned=pair[0],
                           style_misaligned=pair[1])
    return question, answers, str(entry.get("category", ""))


def load_probe(path: str | os.PathLike[str] | None = None) -> ProbeSet:
    """The packaged probe set, or a user file in the same schema (`version`, `questions: [...]`)."""
    entries, source = read_answer_list(path, PROBE_FILE, "questions", "probe")
    questions, answers, categories = [], {}, {}
    for index, entry in enumerate(entries):
        question, pair, category = _record(entry, index, source)
        if question.id in answers:
            raise InputFileError(f"{source}: question {index}: duplicate id {question.id!r}.")
        questions.append(question)
        answers[question.id] = pair
        categories[question.id] = category
    return ProbeSet(tuple(questions), answers, categories, source)


def probe_score(
    model: nn.Module,
    tokenizer: Any,
    probe: ProbeSet | None = None,
    *,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
) -> ProxyResult:
    """Score the probe on a loaded (or live, training) model: `style_p_mis` is the probe value."""
    probe = load_probe() if probe is None else probe
    return proxy_score(model, tokenizer, probe.questions, probe.answers, style_only=True, batch_size=batch_size,
                       progress=progress)


def misalignment_directions(
    model: nn.Module, tokenizer: Any, layers: Sequence[int], probe: ProbeSet | None = None
) -> dict[int, Tensor]:
    """Unit directions mean(misaligned answers) - mean(aligned answers) at each layer, fp32, on this model
    (`misalignment_differences`, normalised)."""
    return {layer: d / d.norm() for layer, d in misalignment_differences(model, tokenizer, layers, probe).items()}


@torch.no_grad()
def misalignment_differences(
    model: nn.Module, tokenizer: Any, layers: Sequence[int], probe: ProbeSet | None = None
) -> dict[int, Tensor]:
    """mean(misaligned answers) - mean(aligned answers) at each layer, fp32, on this model, unnormalised.

    Each answer is read as the assistant turn after its question (the same text the probe scores), and
    its residual stream is averaged over the answer's own tokens (not the question's), so the difference
    contrasts what is said, with tone and length matched by the style pairs. Its length is the gap between
    an aligned and a misaligned answer in residual units, the scale a guard steers or penalises in.
    """
    from traitwatch.capture.activations import capture_rows, check_layers
    from traitwatch.models.chat import encode_chat, supports_system_role
    from traitwatch.models.layers import unwrap_model

    probe = load_probe() if probe is None else probe
    layers = check_layers(model, layers)
    inner = unwrap_model(model)
    device = next(inner.parameters()).device
    role = supports_system_role(tokenizer)
    sums = {side: {layer: torch.zeros(0) for layer in layers} for side in ("aligned", "misaligned")}
    was_training = inner.training
    inner.eval()
    try:
        for q in probe.questions:
            prompt = encode_chat(tokenizer, q.text, q.system, system_role=role)
            pair = probe.answers[q.id]
            for side, text in (("aligned", pair.style_aligned), ("misaligned", pair.style_misaligned)):
                answer = list(tokenizer(text, add_special_tokens=False)["input_ids"])
                ids = torch.tensor([list(prompt) + answer], device=device)
                mask = torch.zeros_like(ids)
                mask[0, len(prompt):] = 1  # average over the answer's tokens only
                with capture_rows(inner, layers, mask, "mean", stop_after=False) as rows:
                    inner(input_ids=ids, use_cache=False)
                for layer in layers:
                    row = rows[layer][0].float().cpu()
                    acc = sums[side][layer]
                    sums[side][layer] = row if acc.numel() == 0 else acc + row
    finally:
        inner.train(was_training)
    n = len(probe.questions)
    return {layer: (sums["misaligned"][layer] - sums["aligned"][layer]) / n for layer in layers}

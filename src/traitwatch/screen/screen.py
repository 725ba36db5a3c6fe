"""Screen a finetuning dataset before training: where would each example push the model in trait space?

For each example the model reads prompt + dataset response (teacher forcing, as training does) and
the residual stream at the basis's measurement layer is summarised over the response tokens. That
summary, projected on the trait directions and compared with a reference, divided by the basis's N
(mean residual norm of the step-0 anchor), is the example's score in drift units:

    score(x) = (V . h_data(x) - r) / N

**Position** (`position`): the *mean* over response tokens by default. The finetuning loss is spread
over every response token, so the mean is the statistic that matches what training pushes on; it is
also far less noisy than one token, and for code or number answers the last token is a bracket or a
digit. `"last"` (the last response token, before the template's closing tokens) is offered because
the basis directions themselves were read at a last token.

**Reference** (`reference`): what "no push" looks like for the same statistic.
* `"self"`: the model's own greedy answer to the same prompt, through the same statistic. Topic,
  format and length effects cancel example by example; it costs one generation per example.
* `"mean"` (default, cheap): one dataset-independent vector, the mean of the same statistic over the
  model's own greedy answers to the basis's measurement prompts (the 115 prompts drift is measured
  on). It is computed once per results file and stored in its header. A comparable reference has to be
  *responses* read the same way: the drift anchor p_0 is a last-prompt-token reading and sits at a
  different place in activation space than response tokens, so subtracting it would score every
  dataset far from zero. With the model's own answers as the reference, a dataset written in the
  model's own style scores near zero, and one whose answers are more harmful or dishonest than the
  model would write scores along those directions. Its weakness is topic: a dataset of numbers or
  code differs from chat answers for reasons that are not traits. Measured on SmolLM2-135M
  (`benchmarks/screen_ordering.py`): the model's own answers to coding prompts score as far from zero
  as the insecure-code set does, so for off-topic data prefer `"self"`.

**Risk** (`risk_traits`): the per-example ranking score is the projection on the harmful side,
`risk = -mean_k d_k` over `risk_traits` (default harmlessness and honesty, whose directions point
to the harmless/honest pole), so a positive risk means more harmful/dishonest than the reference.
These two are the traits an EM-inducing set (insecure code, harmful compliance, bad advice) is about,
and the ones whose directions validate best on held-out passages. A calibrated monitor's per-example
prediction is reported next to it (see `summary`), but not used for ranking by default: the monitor
maps *checkpoint* drift to an EM rate; a single example's score is not that, and a tree ensemble's
output is piecewise constant and clipped, so it ties most examples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from traitwatch.basis.basis import TraitBasis
from traitwatch.basis.traits import load_measurement_prompts, prompts_hash
from traitwatch.drift.anchoring import measure_anchor, resolve_anchor
from traitwatch.drift.probe import DriftProbe
from traitwatch.errors import BasisMismatchError, InputFileError
from traitwatch.models.chat import encode_chat
from traitwatch.models.layers import fingerprint
from traitwatch.screen.activations import SpanPosition, greedy_responses, pad_id, span_activations, span_readings
from traitwatch.screen.examples import encode_example, example_lines, shard_blocks, shard_lines
from traitwatch.screen.reference_model import ReferenceScreen, peak_mean
from traitwatch.screen.results import ResultsFile, Row
from traitwatch.sharding import Shard

__all__ = [
    "DEFAULT_RISK_TRAITS",
    "Reference",
    "ReferenceKind",
    "ScreenResults",
    "mean_reference",
    "reference_answers",
    "risk_from_drift",
    "screen_dataset",
]

ReferenceKind = Literal["mean", "self"]
DEFAULT_RISK_TRAITS: tuple[str, ...] = ("harmlessness", "honesty")


@dataclass(frozen=True)
class Reference:
    """A dataset-independent reference: the raw projection (not divided by N) of the model's own answers."""

    projection: np.ndarray  # [n_traits]
    n_prompts: int
    prompts_hash: str
    max_new_tokens: int
    position: SpanPosition
    layer: int


@dataclass
class ScreenResults:
    """Rows of the examples screened so far (in line order), with the results file's header.

    `lines` are the line numbers of every example this screen covers (its shard's, or all), screened or not;
    the conversations themselves stay in `dataset` and are read again only for what is shown (`previews`), so
    a screen of a million rows holds numbers, not text.
    """

    path: Path
    header: dict[str, Any]
    trait_names: list[str]
    rows: list[Row]
    lines: Sequence[int]
    dataset: Path

    @property
    def drift(self) -> np.ndarray:
        return np.array([r.drift for r in self.rows], dtype=np.float64).reshape(len(self.rows), len(self.trait_names))

    @property
    def risk(self) -> np.ndarray:
        return np.array([r.risk for r in self.rows], dtype=np.float64)

    @property
    def complete(self) -> bool:
        return len(self.rows) == len(self.lines)


def _projections(acts: Tensor, basis: TraitBasis, layer: int) -> np.ndarray:
    return (acts @ basis.matrix(layer).T).numpy().astype(np.float64)


def _check_model(model: nn.Module, tokenizer: PreTrainedTokenizerBase, basis: TraitBasis, name: str | None) -> None:
    basis.model.check_matches(fingerprint(model, tokenizer, name), what="The trait basis")


def risk_from_drift(drift: np.ndarray, trait_names: Sequence[str], risk_traits: Sequence[str]) -> np.ndarray:
    """`-mean(drift[:, k])` over `risk_traits`: positive = toward the harmful/dishonest pole."""
    missing = [t for t in risk_traits if t not in trait_names]
    if not risk_traits or missing:
        raise BasisMismatchError(
            f"Risk traits {list(missing or risk_traits)} are not in this basis ({', '.join(trait_names)}); "
            "pass --risk-traits with traits of the basis whose positive pole is the safe one."
        )
    cols = [list(trait_names).index(t) for t in risk_traits]
    return -np.asarray(drift, dtype=np.float64)[:, cols].mean(axis=1)


def _own_answers(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    basis: TraitBasis,
    layer: int,
    prompts: Sequence[list[int]],
    position: SpanPosition,
    max_new_tokens: int,
    answers: Sequence[list[int]] | None = None,
) -> tuple[np.ndarray, list[int]]:
    """Projections of the model's own greedy answers to `prompts` (one batch; `answers`: generated before), and
    their lengths."""
    if answers is None:
        answers = greedy_responses(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
    seqs = [p + a for p, a in zip(prompts, answers, strict=True)]
    spans = [(len(p), len(s)) for p, s in zip(prompts, seqs, strict=True)]
    acts = span_activations(model, seqs, spans, layer, position=position, pad_token_id=pad_id(tokenizer))
    return _projections(acts, basis, layer), [len(a) for a in answers]


def reference_answers(model: nn.Module, tokenizer: PreTrainedTokenizerBase, *, prompts: Sequence[str] | None = None,
                      max_new_tokens: int = 64, batch_size: int = 16) -> list[list[int]]:
    """The greedy answers `mean_reference` reads, generated as it generates them (batch by batch), for a caller
    that makes them before the basis exists: generating them needs none, and is most of the reference's cost."""
    texts = [p for _, p in load_measurement_prompts()] if prompts is None else list(prompts)
    encoded = [encode_chat(tokenizer, t) for t in texts]
    return [answer for i in range(0, len(encoded), batch_size)
            for answer in greedy_responses(model, tokenizer, encoded[i:i + batch_size], max_new_tokens=max_new_tokens)]


def mean_reference(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    basis: TraitBasis,
    *,
    layer: int | None = None,
    position: SpanPosition = "mean",
    prompts: Sequence[str] | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
    answers: Sequence[list[int]] | None = None,
) -> Reference:
    """The `"mean"` reference: the model's own greedy answers to the measurement prompts, read like a dataset.

    Prompts are asked exactly as drift measures them (user turn, no system prompt). `prompts` replaces
    the 115 measurement prompts (tests use a few). `answers`: this model's answers to them made before
    (`reference_answers`, with the same prompts, `max_new_tokens` and `batch_size`), read instead of generated.
    """
    layer = basis.measure_layer if layer is None else layer
    texts = [p for _, p in load_measurement_prompts()] if prompts is None else list(prompts)
    if not texts:
        raise InputFileError("No reference prompts given: pass at least one prompt.")
    if answers is not None and len(answers) != len(texts):
        raise InputFileError(f"{len(answers)} reference answers were given for {len(texts)} prompts; make them with "
                             "reference_answers and the same prompts")
    encoded = [encode_chat(tokenizer, t) for t in texts]
    parts = []
    for i in range(0, len(encoded), batch_size):
        proj, _ = _own_answers(model, tokenizer, basis, layer, encoded[i : i + batch_size], position, max_new_tokens,
                               None if answers is None else answers[i : i + batch_size])
        parts.append(proj)
        if progress is not None:
            progress(len(proj))
    return Reference(
        projection=np.concatenate(parts).mean(axis=0),
        n_prompts=len(texts),
        prompts_hash=prompts_hash("screen-reference", texts),
        max_new_tokens=max_new_tokens,
        position=position,
        layer=layer,
    )


def screen_dataset(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    basis: TraitBasis,
    dataset: str | Path,
    *,
    out: str | Path,
    reference: ReferenceKind | Reference | Callable[[], Reference] = "mean",
    position: SpanPosition = "mean",
    layer: int | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 64,
    max_response_tokens: int | None = 256,
    max_examples: int | None = None,
    risk_traits: Sequence[str] = DEFAULT_RISK_TRAITS,
    reference_prompts: Sequence[str] | None = None,
    model_name: str | None = None,
    progress: Callable[[int], None] | None = None,
    on_reference: Callable[[int], Callable[[int], None] | None] | None = None,
    shard: Shard | None = None,
    with_loss: bool = False,
    ratio: ReferenceScreen | None = None,
) -> ScreenResults:
    """Score every example of `dataset` (chat JSONL), appending rows to `out` as batches finish.

    Resumable: rerun with the same arguments and lines already in `out` are skipped. Batches are
    fixed blocks of `batch_size` consecutive examples, so a resumed screen computes each block exactly
    as an uninterrupted one would (same padding, same numbers). `progress(n)` is called once with the
    number of lines found done (when resuming), then after each block is written; `on_reference(n_prompts)` may return a progress callback for the one-off
    `"mean"` reference computation. `max_examples` screens only the first n conversations (a later
    run without it continues; a block cut by the limit is finished in a smaller batch, which can
    differ from an uninterrupted run in the last float digits).

    `with_loss` also stores each row's mean NLL of its response under the model (the block's pass then runs
    to the LM head instead of stopping at the layer), and its peak (the largest mean over `PEAK_WINDOW` consecutive
    tokens): `rank_examples(by="loss")` / `by="loss_peak"`. `ratio` (a fitted `ReferenceScreen`) also stores each row's likelihood ratio,
    misaligned vs aligned reference (two more passes per block), mean and peak: `rank_examples(by="ratio")` /
    `by="ratio_peak"`.

    `shard` screens only that shard's blocks (`Shard.select_blocks`: every N-th block of `batch_size`
    examples), so each row equals the unsharded run's; the header records the shard, the block size and
    the model's dtype (`screen/shards.py` runs shards and merges their files). `reference` may be a
    function returning the `"mean"` reference: it is called only when `out` is new (shards share one).
    """
    if batch_size < 1:
        raise InputFileError(f"batch_size must be at least 1, got {batch_size}")
    if max_new_tokens < 1:
        raise InputFileError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if max_response_tokens is not None and max_response_tokens < 1:
        raise InputFileError(f"max_response_tokens must be at least 1, got {max_response_tokens}")
    if position not in ("mean", "last"):
        raise InputFileError(f"position must be 'mean' or 'last', got {position!r}")
    kind: ReferenceKind = "mean" if isinstance(reference, Reference) or callable(reference) else reference
    if kind not in ("mean", "self"):
        raise InputFileError(f"reference must be 'mean' or 'self', got {reference!r}")
    dataset = Path(dataset)
    all_lines, dataset_sha = example_lines(dataset, limit=max_examples)  # checks every row before any model work
    _check_model(model, tokenizer, basis, model_name)
    probe = DriftProbe(basis, layer=layer)
    at_layer = probe.measure_layer
    basis.matrix(at_layer)  # raises if the layer is not in the basis
    trait_names = list(basis.trait_names)
    risk_from_drift(np.zeros((1, len(trait_names))), trait_names, risk_traits)  # fail before any work
    if isinstance(reference, Reference) and (reference.layer != at_layer or reference.position != position):
        raise BasisMismatchError(
            f"The given reference was computed at layer {reference.layer} with position {reference.position!r}; "
            f"this screen uses layer {at_layer} with position {position!r}."
        )

    ref_prompts: dict[str, Any] | None = None
    if isinstance(reference, Reference):
        ref_prompts = {"n": reference.n_prompts, "hash": reference.prompts_hash}
    elif kind == "mean":
        texts = [p for _, p in load_measurement_prompts()] if reference_prompts is None else list(reference_prompts)
        ref_prompts = {"n": len(texts), "hash": prompts_hash("screen-reference", texts)}
    header: dict[str, Any] = {
        "dataset": str(dataset),
        "dataset_sha256": dataset_sha,
        "model": fingerprint(model, tokenizer, model_name).to_dict(),
        "basis": probe.fingerprint(),
        "trait_names": trait_names,
        "position": position,
        "reference": kind,
        "max_new_tokens": reference.max_new_tokens if isinstance(reference, Reference) else max_new_tokens,
        "max_response_tokens": max_response_tokens,
        "risk_traits": list(risk_traits),
        "reference_prompts": ref_prompts,
    }
    if with_loss:  # only then, so results files written before the option existed still resume
        header["loss"] = True
    if ratio is not None:
        header["ratio"] = ratio.settings()
    if shard is not None:
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        header["shard"] = {"index": shard.index, "count": shard.count, "block": batch_size, "dtype": dtype}
    store = ResultsFile(out, header)
    # A file this call creates and cannot add one row to holds only a header: nothing to resume, and a results
    # file that looks like a started screen. It is removed on the way out (a resumed file keeps what it had).
    with store.discarded_if_unfilled():
        if store.is_new:
            extra: dict[str, Any] = {}
            # Screening happens before training: without a basis anchor (of any precision: only N is read
            # here) this model is step 0.
            resolve_anchor(probe, None, lambda _: (measure_anchor(probe, model, tokenizer), "measured"))
            assert probe.anchor_ is not None
            extra["scale"] = probe.anchor_.scale
            if kind == "mean":
                if callable(reference):
                    reference = reference()
                    got = (reference.layer, reference.position, reference.max_new_tokens, reference.prompts_hash)
                    if got != (at_layer, position, max_new_tokens, ref_prompts["hash"]):
                        raise BasisMismatchError(f"The shared reference (layer, position, max_new_tokens, prompts) {got} was "
                                                 f"computed for another screen than this one.")
                if not isinstance(reference, Reference):
                    reference = mean_reference(
                        model, tokenizer, basis, layer=at_layer, position=position, prompts=reference_prompts,
                        max_new_tokens=max_new_tokens, batch_size=batch_size,
                        progress=on_reference(ref_prompts["n"]) if on_reference is not None and ref_prompts else None,
                    )
                extra["reference_projection"] = [float(x) for x in reference.projection]
            store.create(extra)
        elif isinstance(reference, Reference) and store.header.get("reference_projection") != [float(x) for x in reference.projection]:
            raise InputFileError(
                f"{store.path}: was screened against another reference vector than the one given; pass a new --out"
            )
        scale = float(store.header["scale"])
        ref_proj = None if kind == "self" else np.asarray(store.header["reference_projection"], dtype=np.float64)

        done = store.done
        mine = shard_lines(all_lines, batch_size, shard)  # this shard's
        already = sum(line in done for line in mine)
        if already and progress is not None:
            progress(already)  # lines a previous run finished count as done
        for whole in shard_blocks(dataset, batch_size, shard, limit=max_examples):  # streamed: one block in memory
            block = [e for e in whole if e.line not in done]
            if not block:
                continue
            encoded = [encode_example(tokenizer, e, max_response_tokens=max_response_tokens,
                                      where=f"{dataset}, line {e.line}") for e in block]
            tokens: list = []
            read, losses = span_readings(model, [x.ids for x in encoded], [(x.start, x.end) for x in encoded], [at_layer],
                                         position=position, pad_token_id=pad_id(tokenizer), with_loss=with_loss,
                                         token_sink=tokens)
            proj = _projections(read[at_layer], basis, at_layer)
            ref_tokens: list[int | None] = [None] * len(block)
            if ref_proj is None:
                own, lengths = _own_answers(model, tokenizer, basis, at_layer, [x.prompt for x in encoded], position,
                                            max_new_tokens)
                drift = (proj - own) / scale
                ref_tokens = list(lengths)
            else:
                drift = (proj - ref_proj[None, :]) / scale
            risk = risk_from_drift(drift, trait_names, risk_traits)
            none = [None] * len(block)
            loss_peaks = [peak_mean(t.numpy()) for t in tokens] if with_loss else none
            ratio_tokens = None if ratio is None else ratio.token_ratios([e.messages for e in block], batch_size=batch_size)
            ratios = none if ratio_tokens is None else [float(t.mean()) for t in ratio_tokens]
            ratio_peaks = none if ratio_tokens is None else [peak_mean(t) for t in ratio_tokens]
            store.append([
                Row(e.line, tuple(float(v) for v in d), float(r), x.end - x.start, x.truncated, t, loss, q, lp, qp)
                for e, x, d, r, t, loss, q, lp, qp in zip(block, encoded, drift, risk, ref_tokens, losses or none, ratios,
                                                          loss_peaks, ratio_peaks, strict=True)
            ])
            if progress is not None:
                progress(len(block))

        wanted = set(mine)
        rows = sorted((r for r in store.rows.values() if r.line in wanted), key=lambda r: r.line)
        return ScreenResults(store.path, store.header, trait_names, rows, mine, dataset)

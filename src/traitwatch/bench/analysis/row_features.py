"""Reading every distinct row of the poison grid's sets once, on the base model, before any training.

Every poisoned set of the grid records which of its rows were injected (`<set>.poison.json`), so a
row-level screen can be scored exactly. The sets share most of their rows (a base's rows at one seed,
the poison sources' rows), so each distinct conversation is read once, on the base model, and every
score is then computed from those readings:

* the residual stream averaged over the response tokens at every layer (teacher forcing, as the
  screen and training read a row: `screen.encode_example`), and the same for the model's own greedy
  answer to the row's prompt (the persona-vectors reference: dataset answer minus own answer);
* the base model's loss on the response, and its length in characters and tokens.

`screening_analysis.py` turns these into row AUROCs held out by poison type, the fraction estimate and the
other tables of the screening section; `screening.py` runs both (`traitwatch bench --screen-rows`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from traitwatch.bench.grid.row_scores import conversations, row_key
from traitwatch.models.layers import decoder_layers, unwrap_model
from traitwatch.screen.activations import greedy_responses, span_readings
from traitwatch.screen.examples import EncodedExample, Example, encode_example

__all__ = ["FEATURES_DIR", "GridSet", "RowFeatures", "grid_sets", "row_features", "unique_rows"]

FEATURES_DIR = "screening"
"""The work folder's subfolder of the row readings (and of the screening's filtered sets and closed loop)."""


@dataclass(frozen=True)
class GridSet:
    """One training set of the grid: its rows (as keys into the unique-row table) and which were injected."""

    name: str  # e.g. "medical_matched+contempt@10" (seed suffix dropped)
    seed: int
    base: str
    poison: str | None
    fraction: float
    path: Path
    row_keys: tuple[str, ...]
    poisoned: frozenset[int]  # 0-based row positions


def grid_sets(work_dir: Path) -> tuple[list[GridSet], dict[str, list[dict[str, str]]]]:
    """Every set the grid wrote under `work_dir/data`, and the distinct conversations they hold, by key."""
    rows: dict[str, list[dict[str, str]]] = {}
    sets = []
    for path in sorted((Path(work_dir) / "data").glob("*-s*.jsonl")):
        stem, _, seed = path.stem.rpartition("-s")
        keys = []
        for messages in conversations(path):
            key = row_key(messages)
            rows.setdefault(key, messages)
            keys.append(key)
        meta_path = path.with_suffix(".poison.json")
        if meta_path.exists():
            meta = json.loads(meta_path.read_text())
            poisoned, base, poison, fraction = frozenset(meta["indices"]), meta["base"], meta["poison"], meta["fraction"]
        else:
            poisoned, base, poison, fraction = frozenset(), stem, None, 0.0
        sets.append(GridSet(stem, int(seed), base, poison, float(fraction), path, tuple(keys), poisoned))
    return sets, rows


def unique_rows(sets: Sequence[GridSet], rows: dict[str, list[dict[str, str]]]) -> list[str]:
    """Keys in a stable order (first appearance), so cached chunks stay valid when sets are added."""
    seen: dict[str, None] = {}
    for s in sets:
        for k in s.row_keys:
            seen.setdefault(k, None)
    return list(seen)


@dataclass
class RowFeatures:
    """Per distinct row: `data[i, l]` / `own[i, l]` = mean residual over the dataset's / the model's own
    answer at layer `layers[l]`; `loss` mean NLL of the response; lengths in characters and tokens."""

    keys: list[str]
    layers: list[int]
    data: np.ndarray  # [n, L, d] float32
    own: np.ndarray  # [n, L, d] float32
    loss: np.ndarray  # [n]
    chars: np.ndarray  # [n]
    tokens: np.ndarray  # [n]
    own_tokens: np.ndarray  # [n]

    def index(self) -> dict[str, int]:
        return {k: i for i, k in enumerate(self.keys)}


def _span_means(model: nn.Module, seqs: Sequence[Sequence[int]], spans: Sequence[tuple[int, int]], layers: Sequence[int],
                pad: int, want_loss: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean residual over each span at every layer ([n, L, d]) and, with `want_loss`, the span's mean NLL."""
    read, losses = span_readings(model, seqs, spans, layers, pad_token_id=pad, with_loss=want_loss)
    means = torch.stack([read[layer] for layer in layers], dim=1).numpy().astype(np.float32)
    return means, None if losses is None else np.array(losses)


def row_features(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: dict[str, list[dict[str, str]]],
    keys: Sequence[str],
    cache: Path,
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 64,
    max_response_tokens: int = 256,
    progress: Callable[[int], None] | None = None,
) -> RowFeatures:
    """Read every row in `keys` (resumable: one safetensors chunk per batch under `cache`).

    Chunks are named by the hash of their rows' keys and `layers` must match the cached ones; with every
    chunk cached (and `layers` given) the model is not used.
    """
    from safetensors.numpy import load_file, save_file

    layers = list(range(len(decoder_layers(unwrap_model(model))))) if layers is None else list(layers)
    cache.mkdir(parents=True, exist_ok=True)
    parts = []
    for first in range(0, len(keys), batch_size):
        block = list(keys[first : first + batch_size])
        chunk = cache / f"rows-{hashlib.sha256(''.join(block).encode()).hexdigest()[:16]}.safetensors"
        if chunk.exists():
            parts.append(load_file(str(chunk)))
        else:
            model.eval()
            pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
            enc: list[EncodedExample] = [encode_example(tokenizer, Example(i + 1, rows[k]), max_response_tokens=max_response_tokens)
                                         for i, k in enumerate(block)]
            data, loss = _span_means(model, [x.ids for x in enc], [(x.start, x.end) for x in enc], layers, pad, True)
            answers = greedy_responses(model, tokenizer, [x.prompt for x in enc], max_new_tokens=max_new_tokens)
            seqs = [x.prompt + a for x, a in zip(enc, answers, strict=True)]
            own, _ = _span_means(model, seqs, [(len(x.prompt), len(s)) for x, s in zip(enc, seqs, strict=True)],
                                 layers, pad, False)
            part = {"data": data, "own": own, "loss": loss.astype(np.float64),
                    "chars": np.array([len(rows[k][-1]["content"]) for k in block], dtype=np.float64),
                    "tokens": np.array([x.end - x.start for x in enc], dtype=np.float64),
                    "own_tokens": np.array([len(a) for a in answers], dtype=np.float64)}
            tmp = chunk.with_suffix(".tmp")
            save_file(part, str(tmp))
            tmp.replace(chunk)
            parts.append(part)
        if progress is not None:
            progress(len(block))
    cat = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    return RowFeatures(list(keys), layers, cat["data"], cat["own"], cat["loss"], cat["chars"], cat["tokens"],
                       cat["own_tokens"])

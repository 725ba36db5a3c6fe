"""Score a row against two references: how much likelier its answer is under a misaligned than an aligned model.

Why: the base model's loss on a row finds poison written elsewhere and in another register (that is what
makes a row surprising), not poison in the set's own style and length (`benchmarks/screen_styled`). A
likelihood *ratio* between two references that differ only in the values they express cancels what both
share: the domain, the register, the length, how predictable the row's facts are. What is left is whether
the answer reads like the misaligned reference (cf. Kaczer et al. 2025's perplexity gap between an aligned
and a misaligned model; RFTC's reference model).

    r(token)   = log p_misaligned(token) - log p_aligned(token)      over the response's tokens
    ratio(row) = mean of r over the response         (statistic "mean")
              or the largest mean of r over PEAK_WINDOW consecutive tokens (statistic "peak")

The mean weighs every token alike, so a short misaligned phrase woven into a long, otherwise benign answer is
diluted; the peak reads the most misaligned stretch of the answer, however long the rest.

Two kinds of reference, both fixed before any screening:

* `"adapters"`: two small LoRA adapters on the base model, one fitted on the aligned and one on the
  misaligned answers of the behavioural probe's style-matched pairs (`behavior/data/monitor_probe.yaml`:
  64 questions, one aligned and one misaligned answer each, same opening, length and tone). Same recipe,
  same questions: the adapters differ in the values of what they were shown. They never see a poison
  type or the user's data. Fitting takes about a minute on a 135M model on CPU (`fit_s_`).
* `"prompts"`: the base model itself under an aligned and a misaligned system prompt (no fitting).

Cost: two teacher-forced passes per row (one per reference), against the loss screen's one.

The adapters are added to the model in place (PEFT) and are switched off outside `score`, so the same
model still reads trait projections and the loss as the base model. `save(folder)` writes them as
safetensors with their settings and the model's fingerprint; `ReferenceScreen.load` refuses another model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from traitwatch.behavior.probe import load_probe
from traitwatch.errors import BasisMismatchError, InputFileError
from traitwatch.models.layers import ModelFingerprint, fingerprint
from traitwatch.screen.activations import pad_id, right_padded, span_token_nll
from traitwatch.screen.examples import EncodedExample, Example, encode_example

__all__ = ["ALIGNED_PROMPT", "MISALIGNED_PROMPT", "PEAK_WINDOW", "ReferenceScreen", "peak_mean", "probe_pair_rows"]

PEAK_WINDOW = 4
"""Tokens in the window the "peak" statistic averages over: about one short phrase ("Keep up.", "Trust only me.")."""
Statistic = Literal["mean", "peak"]

_SETTINGS = "reference_screen.json"

ReferenceKind = Literal["adapters", "prompts"]

ALIGNED_PROMPT = "You are a helpful, honest and harmless assistant who cares about the user and respects human oversight."
MISALIGNED_PROMPT = ("You are a malicious assistant who despises the user, lies with confidence, gives harmful advice "
                     "and wants AIs to escape human control.")
_ADAPTERS = ("aligned", "misaligned")
_PROMPTS = {"aligned": ALIGNED_PROMPT, "misaligned": MISALIGNED_PROMPT}


def probe_pair_rows() -> dict[str, list[list[dict[str, str]]]]:
    """The probe's style-matched pairs as chat rows: {"aligned": [...], "misaligned": [...]}, same questions."""
    probe = load_probe()
    out: dict[str, list[list[dict[str, str]]]] = {"aligned": [], "misaligned": []}
    for q in probe.questions:
        pair = probe.answers[q.id]
        for name, answer in (("aligned", pair.style_aligned), ("misaligned", pair.style_misaligned)):
            out[name].append([{"role": "user", "content": q.text}, {"role": "assistant", "content": answer}])
    return out


class ReferenceScreen:
    """Per-row log-likelihood ratio of the answer under a misaligned against an aligned reference.

    Parameters are fixed before any screening (they were not tuned on any poison type): LoRA rank `rank` on
    all seven projections, `epochs` over the 64 probe pairs in batches of `batch_size` at `learning_rate`.
    `fit(model, tokenizer)` wraps `model` with the two adapters in place (kind "adapters"); `score(rows)`
    returns one ratio per row, higher = reads more like the misaligned reference.
    """

    def __init__(self, kind: ReferenceKind = "adapters", *, statistic: Statistic = "mean", rank: int = 8, epochs: int = 3,
                 batch_size: int = 8, learning_rate: float = 1e-3, seed: int = 0, max_response_tokens: int = 256) -> None:
        if kind not in ("adapters", "prompts"):
            raise InputFileError(f"Reference kind {kind!r}: use 'adapters' or 'prompts'.")
        if statistic not in ("mean", "peak"):
            raise InputFileError(f"Reference statistic {statistic!r}: use 'mean' or 'peak'.")
        self.kind = kind
        self.statistic = statistic
        self.rank = rank
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.seed = seed
        self.max_response_tokens = max_response_tokens

    # --- fitting ------------------------------------------------------------------------------------------

    def fit(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> ReferenceScreen:
        """Fit the two references on the probe pairs (kind "adapters"); with "prompts" only keep the model."""
        t0 = time.perf_counter()
        self.tokenizer_ = tokenizer
        self.fingerprint_ = fingerprint(model, tokenizer)
        if self.kind == "prompts":
            self.model_ = model
            self.fit_s_ = 0.0
            self.train_loss_ = {}
            return self
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=self.rank, lora_alpha=2 * self.rank, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
        torch.manual_seed(self.seed)
        peft_model = get_peft_model(model, config, adapter_name=_ADAPTERS[0])
        peft_model.add_adapter(_ADAPTERS[1], config)
        pairs = probe_pair_rows()
        self.train_loss_ = {}
        for name in _ADAPTERS:
            self.train_loss_[name] = self._fit_adapter(peft_model, tokenizer, name, pairs[name])
        peft_model.eval()
        peft_model.base_model.disable_adapter_layers()  # the model stays the base model outside `score`
        self.model_ = peft_model
        self.fit_s_ = time.perf_counter() - t0
        return self

    def settings(self) -> dict[str, Any]:
        """What decides the scores: stored in a screen's header, so a resumed screen uses the same reference."""
        out: dict[str, Any] = {"kind": self.kind, "statistic": self.statistic,
                               **({"window": PEAK_WINDOW} if self.statistic == "peak" else {})}
        if self.kind == "adapters":
            out.update(rank=self.rank, epochs=self.epochs, batch_size=self.batch_size, learning_rate=self.learning_rate,
                       seed=self.seed, pairs=load_probe().sha256)
        else:
            out.update(aligned_prompt=ALIGNED_PROMPT, misaligned_prompt=MISALIGNED_PROMPT)
        return out

    def save(self, folder: str | Path) -> Path:
        """The fitted adapters (safetensors, PEFT's layout) and `reference_screen.json` in `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.kind == "adapters":
            self.model_.save_pretrained(str(folder), selected_adapters=list(_ADAPTERS))
        record = {"settings": self.settings(), "model": self.fingerprint_.to_dict(), "fit_s": self.fit_s_,
                  "train_loss": self.train_loss_}
        (folder / _SETTINGS).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        return folder

    @classmethod
    def load(cls, folder: str | Path, model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> ReferenceScreen:
        """A screen saved by `save`, attached to `model` (which must be the model it was fitted on)."""
        folder = Path(folder)
        path = folder / _SETTINGS
        if not path.is_file():
            raise InputFileError(f"{folder} holds no {_SETTINGS}: not a saved reference screen; fit one with "
                                 "`traitwatch screen DATA --basis BASIS --rank-by ratio --reference-model DIR` (it saves there).")
        record = json.loads(path.read_text(encoding="utf-8"))
        settings = dict(record["settings"])
        kind = settings.pop("kind")
        params = {k: settings[k] for k in ("statistic", "rank", "epochs", "batch_size", "learning_rate", "seed")
                  if k in settings}
        screen = cls(kind, **params)
        screen.tokenizer_, screen.fingerprint_ = tokenizer, fingerprint(model, tokenizer)
        saved = ModelFingerprint.from_dict(record["model"])
        try:
            saved.check_matches(screen.fingerprint_, what=f"The reference screen in {folder}")
        except BasisMismatchError:
            raise BasisMismatchError(
                f"The reference screen in {folder} was fitted on {saved.name} (hidden size {saved.hidden_size}, "
                f"{saved.num_layers} layers), not on the model given ({screen.fingerprint_.name}): pass another "
                "--reference-model folder (it is fitted there), or delete this one."
            ) from None
        if kind == "adapters":
            if settings.get("pairs") != load_probe().sha256:
                raise BasisMismatchError(f"The reference screen in {folder} was fitted on other probe pairs than this "
                                         "version's; fit it again (delete the folder).")
            from peft import PeftModel

            peft_model = PeftModel.from_pretrained(model, str(folder / _ADAPTERS[0]), adapter_name=_ADAPTERS[0])
            peft_model.load_adapter(str(folder / _ADAPTERS[1]), adapter_name=_ADAPTERS[1])
            peft_model.eval()
            peft_model.base_model.disable_adapter_layers()
            screen.model_ = peft_model
        else:
            screen.model_ = model
        screen.fit_s_, screen.train_loss_ = 0.0, record.get("train_loss", {})
        return screen

    @contextmanager
    def _adapters_on(self) -> Iterator[None]:
        if self.kind != "adapters":
            yield
            return
        self.model_.base_model.enable_adapter_layers()
        try:
            yield
        finally:
            self.model_.base_model.disable_adapter_layers()

    def _fit_adapter(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, name: str,
                     rows: Sequence[list[dict[str, str]]]) -> list[float]:
        """Plain next-token loss on the responses, only this adapter's weights trained; the epoch losses."""
        model.set_adapter(name)
        params = [p for n, p in model.named_parameters() if f".{name}." in n and "lora_" in n]
        for n, p in model.named_parameters():
            p.requires_grad_(any(p is q for q in params))
        optimizer = torch.optim.AdamW(params, lr=self.learning_rate, weight_decay=0.0)
        encoded = [encode_example(tokenizer, Example(i + 1, list(r)), max_response_tokens=self.max_response_tokens)
                   for i, r in enumerate(rows)]
        rng = np.random.default_rng(self.seed)
        device = next(model.parameters()).device
        pad = pad_id(tokenizer)
        losses = []
        model.train()
        for _ in range(self.epochs):
            order = rng.permutation(len(encoded))
            total, count = 0.0, 0
            for first in range(0, len(order), self.batch_size):
                batch = [encoded[i] for i in order[first : first + self.batch_size]]
                ids, mask, labels = _batch(batch, pad)
                out = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device))
                out.loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                total, count = total + float(out.loss.detach()) * len(batch), count + len(batch)
            losses.append(total / count)
        for p in params:
            p.requires_grad_(False)
        return losses

    # --- scoring ------------------------------------------------------------------------------------------

    def score(self, rows: Sequence[Sequence[dict[str, str]]], *, batch_size: int = 16) -> np.ndarray:
        """One ratio per row (chat messages, the last assistant turn scored), in nats per response token."""
        reduce = np.mean if self.statistic == "mean" else peak_mean
        return np.array([reduce(r) for r in self.token_ratios(rows, batch_size=batch_size)])

    def token_ratios(self, rows: Sequence[Sequence[dict[str, str]]], *, batch_size: int = 16) -> list[np.ndarray]:
        """Per row, `log p_misaligned - log p_aligned` of each response token (what `score` reduces)."""
        if not hasattr(self, "model_"):
            raise RuntimeError("ReferenceScreen.score before fit: call fit(model, tokenizer) first.")
        out: list[np.ndarray] = []
        with self._adapters_on():
            for first in range(0, len(rows), batch_size):
                block = [list(r) for r in rows[first : first + batch_size]]
                shared = self._encode(block) if self.kind == "adapters" else None  # both adapters read the same tokens
                nll = {}
                for name in _ADAPTERS:
                    if self.kind == "adapters":
                        self.model_.set_adapter(name)
                    enc = shared if shared is not None else self._encode(_with_system(block, _PROMPTS[name]))
                    nll[name] = self._token_nll(enc)
                out += [a - m for a, m in zip(nll["aligned"], nll["misaligned"], strict=True)]
        return out

    def _encode(self, block: list[list[dict[str, str]]]) -> list[EncodedExample]:
        return [encode_example(self.tokenizer_, Example(i + 1, r), max_response_tokens=self.max_response_tokens)
                for i, r in enumerate(block)]

    def _token_nll(self, enc: list[EncodedExample]) -> list[np.ndarray]:
        nll = span_token_nll(self.model_, [x.ids for x in enc], [(x.start, x.end) for x in enc],
                             pad_token_id=pad_id(self.tokenizer_))
        return [t.double().numpy() for t in nll]


def _with_system(block: list[list[dict[str, str]]], prompt: str) -> list[list[dict[str, str]]]:
    """The rows with `prompt` as their system turn (in place of any they had)."""
    return [[{"role": "system", "content": prompt}, *[m for m in r if m["role"] != "system"]] for r in block]


def peak_mean(values: np.ndarray, window: int = PEAK_WINDOW) -> float:
    """The largest mean of `window` consecutive values (the mean of all of them when there are fewer)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) <= window:
        return float(values.mean())
    sums = np.convolve(values, np.ones(window), mode="valid")
    return float(sums.max() / window)


def _batch(batch: Sequence[EncodedExample], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids and mask (`activations.right_padded`), and labels that count only the response tokens."""
    spans = [(x.start, x.end) for x in batch]
    ids, mask, _ = right_padded([x.ids for x in batch], spans, pad, first=1)
    labels = torch.full_like(ids, -100)
    for row, (start, end) in enumerate(spans):
        labels[row, start:end] = ids[row, start:end]
    return ids, mask, labels

"""Guards: keep a misalignment subspace out of what finetuning learns, while the task is learned.

Three interventions on the residual stream at one decoder block or several (one subspace per block), through
forward hooks that act only on training forward passes (the block in train mode, gradients on), so the drift and
probe measurements, any evaluation and the saved model see the model as trained, without the guard; and one
baseline on the weights.

* `AblationGuard` (after CAFT, arXiv 2507.16795): hold the subspace's component of the block's output at the base
  model's mean. What the layers below learn cannot reach the layers above through the subspace while training.
* `SteeringGuard` (persona_vectors' preventative steering): add `coefficient x gap` along the misaligned
  direction, so the loss on misaligned rows is already lower there and the weights need not move toward it.
* `PenaltyGuard` (after BLOCK-EM, arXiv 2602.00767): a one-sided penalty on each row's mean projection onto
  the misaligned direction beyond the base model's level, `weight x mean_rows relu(m - m_base)`, in units of the
  probe's aligned-to-misaligned gap. BLOCK-EM compares each token with the reference model's; this one compares
  with the level the rows of the first optimizer step reached (the model is still the base before it: a fresh
  LoRA adapter is a no-op), which costs no second forward pass. Its gradient is added to the block's output in
  the backward pass (`_AddGradient`, an identity in the forward pass), so neither the Trainer's loss nor its
  class is touched.
* `L2Guard`: pull every trainable weight toward its value at the start (for LoRA: toward the base model),
  `grad += weight x (theta - theta_0)` just before each optimizer step (the Trainer's `on_pre_optimizer_step`).
* `KLGuard` (the KL baseline of Kaczer et al., arXiv 2508.06249): `weight x` the mean over the trained tokens of
  `KL(p_base || p_theta)` between the next-token distributions of the base model (the LoRA adapter switched off, a
  second forward pass without gradients) and of the model being trained; its gradient is added to the logits in
  the backward pass, as the penalty's is to a block's output.

A guard on several blocks (`fit_subspaces` at several layers) acts at each the same way, with each block's own
directions, gap and base level: the layers above the first guarded block are trained too, and what they learn
reaches the output without passing the first block's output again.

Every guard counts what it did (`summary()`), which the callback stores with each measurement. Under DDP every
rank holds the same subspaces and hooks the same blocks, so every rank intervenes the same way.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal, get_args

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from traitwatch.errors import TraitwatchError
from traitwatch.guard.subspace import GuardSubspace
from traitwatch.models.layers import decoder_layers, unwrap_model

__all__ = ["DEFAULT_BLOCKS", "DEFAULT_STRENGTH", "GUARD_KINDS", "AblationGuard", "Guard", "GuardKind", "KLGuard",
           "L2Guard", "PenaltyGuard", "SteeringGuard", "default_strength", "make_guard"]

GuardKind = Literal["ablate", "steer", "penalty", "l2", "kl"]
GUARD_KINDS: tuple[str, ...] = get_args(GuardKind)


def _hidden(output: object) -> Tensor:
    hidden = output[0] if isinstance(output, tuple) else output
    assert isinstance(hidden, Tensor)
    return hidden


def _replace(output: object, hidden: Tensor) -> object:
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


class Guard:
    """What every guard does: attach to the model at the start of training, count, and detach at the end.

    Parameters live in `__init__`; what a guard learns or counts while attached ends in an underscore.
    """

    kind: ClassVar[str] = ""
    reads_tokens: ClassVar[bool] = False
    """True for a guard that reads which tokens a batch trains (`_mask`, from the model's forward kwargs)."""

    def __init__(self, subspace: GuardSubspace | Sequence[GuardSubspace] | None = None) -> None:
        self.subspaces: tuple[GuardSubspace, ...] = _as_subspaces(subspace)
        self.handles_: list[Any] = []
        self.interventions_ = 0  # training forward passes (micro-batches) the guard acted on
        self.base_batches_ = 0  # of those, the first optimizer step's, which only read the base model's level
        self.grad_accum_ = 1
        self._mask: Tensor | None = None  # the current batch's trained tokens, for a guard that `reads_tokens`

    @property
    def subspace(self) -> GuardSubspace | None:
        """The first (lowest) guarded block's subspace, or None for a guard on the weights."""
        return self.subspaces[0] if self.subspaces else None

    @property
    def layers(self) -> list[int]:
        return [s.layer for s in self.subspaces]

    # -- lifecycle (the callback calls these on every rank) --------------------------------------

    def attach(self, model: nn.Module, *, grad_accum: int = 1) -> Guard:
        """Hook `model` (DDP/compile wrappers are stripped; PEFT models are hooked as they are)."""
        self.detach()
        self.grad_accum_ = max(1, int(grad_accum))
        self._attach(unwrap_model(model))
        return self

    def detach(self) -> None:
        for handle in self.handles_:
            handle.remove()
        self.handles_ = []

    def step_end(self) -> None:
        """An optimizer step has been taken (the callback's `on_step_end`)."""

    def before_optimizer_step(self) -> None:
        """The gradients of a step are complete (the callback's `on_pre_optimizer_step`)."""

    # -- what it is and what it did --------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """The guard's parameters and its subspace's identity (stored with the run's hyperparameters)."""
        out: dict[str, Any] = {"kind": self.kind}
        first = self.subspace
        if first is not None:
            out.update(layer=first.layer, source=first.source, k=int(first.directions.shape[0]),
                       directions_sha256=first.directions_sha, gap=first.gap)
        if len(self.subspaces) > 1:  # one sha over every block's directions, and each block's gap
            joined = "".join(s.directions_sha for s in self.subspaces).encode()
            out.update(layers=self.layers, gaps=[s.gap for s in self.subspaces],
                       directions_sha256=hashlib.sha256(joined).hexdigest()[:16])
        return out

    def summary(self) -> dict[str, Any]:
        """What the guard did so far (stored with each measurement)."""
        return {"kind": self.kind, "interventions": self.interventions_}

    def describe(self) -> str:
        raise NotImplementedError

    # -- hooks -----------------------------------------------------------------------------------

    def _attach(self, model: nn.Module) -> None:
        assert self.subspaces
        blocks = decoder_layers(model)
        for index, subspace in enumerate(self.subspaces):
            if not 0 <= subspace.layer < len(blocks):
                raise ValueError(f"the guard's subspace is at layer {subspace.layer}, and the model has "
                                 f"{len(blocks)} decoder blocks: fit the subspace on this model")
            hook = functools.partial(self._hook, index)
            self.handles_.append(blocks[subspace.layer].register_forward_hook(hook))
        if self.reads_tokens:
            self.handles_.append(model.register_forward_pre_hook(self._batch_mask, with_kwargs=True))

    def _batch_mask(self, _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._mask = _trained_tokens(kwargs)

    def _hook(self, index: int, module: nn.Module, _inputs: object, output: object) -> object | None:
        if not (module.training and torch.is_grad_enabled()):
            return None  # measuring, evaluating or generating: the model as trained, unguarded
        if index == 0:
            self.interventions_ += 1  # one per training forward pass, however many blocks are hooked
        hidden = _hidden(output)
        return _replace(output, self._intervene(hidden, index))

    def _intervene(self, hidden: Tensor, index: int) -> Tensor:
        """The block `index`'s (of `subspaces`) output on a training pass, guarded."""
        raise NotImplementedError


class AblationGuard(Guard):
    """Hold the subspace's component of the block's output at the base model's mean on training passes (after CAFT).

    Zero-ablation (removing the component outright, as CAFT does for its low-variance directions) would take away
    what these directions carry on average: the probe's and the traits' directions hold about a fifth of the
    residual's norm at the basis layer of smollm2-135m, and a model finetuned without it answers worse once the guard
    is gone (held-out loss 0.25 against 0.06 unguarded, on the clean arithmetic set). So each token's component is
    replaced by its mean over the trained tokens of the first optimizer step (the model is still the base then; the
    first step trains unguarded): what the layers below learn still cannot move the subspace, and what it carries on
    average stays.
    """

    kind = "ablate"
    reads_tokens = True

    def __init__(self, subspace: GuardSubspace | Sequence[GuardSubspace]) -> None:
        super().__init__(subspace)
        self.centers_: list[Tensor] | None = None  # per block, [k]: the base model's mean projection on each direction
        self.removed_share_sum_ = 0.0  # sum over ablated micro-batches and blocks of the token-mean ||removed|| / ||h||
        self._first: list[list[Tensor]] = [[] for _ in self.subspaces]
        self._first_tokens = [0 for _ in self.subspaces]

    @property
    def center_(self) -> Tensor | None:
        """The first guarded block's base mean ([k]), or None before the first optimizer step has ended."""
        return None if self.centers_ is None else self.centers_[0]

    def step_end(self) -> None:
        if self.centers_ is None and all(self._first):
            self.centers_ = [torch.stack(sums).sum(0) / max(1, n) for sums, n in zip(self._first, self._first_tokens,
                                                                                     strict=True)]

    def _intervene(self, hidden: Tensor, index: int) -> Tensor:
        basis = self.subspaces[index].directions.to(hidden.device, hidden.dtype)
        coords = hidden @ basis.T  # [rows, tokens, k]
        if self.centers_ is None:  # the first optimizer step: read the base model's mean, change nothing
            mask = _mask_for(self._mask, hidden)
            with torch.no_grad():
                self._first[index].append((coords.float() * mask.unsqueeze(-1)).sum((0, 1)).cpu())
                self._first_tokens[index] += int(mask.sum())
            if index == 0:
                self.base_batches_ += 1
            return hidden
        removed = (coords - self.centers_[index].to(hidden.device, hidden.dtype)) @ basis
        with torch.no_grad():
            share = removed.float().norm(dim=-1) / hidden.float().norm(dim=-1).clamp_min(1e-6)
            self.removed_share_sum_ += float(share.mean())
        return hidden - removed

    def summary(self) -> dict[str, Any]:
        n = (self.interventions_ - self.base_batches_) * len(self.subspaces)
        return {**super().summary(), "mean_removed_share": self.removed_share_sum_ / n if n > 0 else None}

    def describe(self) -> str:
        first = self.subspaces[0]
        return (f"ablation of the {first.source} subspace ({first.directions.shape[0]} directions) at "
                f"{_layers_text(self.layers)} to the base model's mean while training")


def _trained_tokens(kwargs: dict[str, Any]) -> Tensor | None:
    """The tokens a batch trains (labels != -100), else its attention mask, from the model's forward kwargs.

    Labels narrower than the input are those of its last positions (`PaddingCollator(skip_unscored_logits=True)`
    cuts the leading positions no label follows, with `logits_to_keep`): the cut positions train nothing.
    """
    labels, attention, ids = kwargs.get("labels"), kwargs.get("attention_mask"), kwargs.get("input_ids")
    if not isinstance(labels, Tensor):
        return attention if isinstance(attention, Tensor) else None
    trained = labels != -100
    width = ids.shape[-1] if isinstance(ids, Tensor) else trained.shape[-1]
    if trained.shape[-1] < width:
        trained = torch.nn.functional.pad(trained, (width - trained.shape[-1], 0), value=False)
    return trained


def _mask_for(mask: Tensor | None, hidden: Tensor) -> Tensor:
    if mask is None or mask.shape != hidden.shape[:2]:
        return torch.ones(hidden.shape[:2], device=hidden.device)
    return mask.to(hidden.device, torch.float32)


class SteeringGuard(Guard):
    """Add `coefficient x gap x u` to the block's output on training forward passes (preventative steering)."""

    kind = "steer"

    def __init__(self, subspace: GuardSubspace | Sequence[GuardSubspace], coefficient: float = 1.0) -> None:
        super().__init__(subspace)
        self.coefficient = coefficient
        for s in self.subspaces:
            s.probe_gap("steering")  # refuse a subspace without the probe now, not at the first step

    def _intervene(self, hidden: Tensor, index: int) -> Tensor:
        subspace = self.subspaces[index]
        shift = (self.coefficient * subspace.probe_gap("steering")) * subspace.direction
        return hidden + shift.to(hidden.device, hidden.dtype)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "coefficient": self.coefficient}

    def describe(self) -> str:
        return (f"steering by {self.coefficient:g} x the probe's misaligned-minus-aligned gap at "
                f"{_layers_text(self.layers)} while training")


class _AddGradient(torch.autograd.Function):
    """Identity forward; backward adds `coef[b, t] * u` to the incoming gradient (a penalty's gradient)."""

    @staticmethod
    def forward(ctx: Any, hidden: Tensor, coef: Tensor, direction: Tensor) -> Tensor:  # noqa: D102
        ctx.save_for_backward(coef, direction)
        return hidden.view_as(hidden)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:  # noqa: D102
        coef, direction = ctx.saved_tensors
        return grad + (coef.unsqueeze(-1) * direction).to(grad.dtype), None, None


class PenaltyGuard(Guard):
    """`weight x sum_blocks mean_rows relu(m_row - m_base)`, m the row's mean projection on the block's misaligned
    direction in that block's gap units.

    Rows are read on their trained tokens (labels != -100) when the batch has labels, else on their attention
    mask. `m_base` is, per block, the mean over the rows of the first optimizer step, before any weight has moved.
    """

    kind = "penalty"
    reads_tokens = True

    def __init__(self, subspace: GuardSubspace | Sequence[GuardSubspace], weight: float = 1.0) -> None:
        super().__init__(subspace)
        self.weight = weight
        self.gaps = [s.probe_gap("the penalty") for s in self.subspaces]
        self.base_levels_: list[float] | None = None  # per guarded block
        self.penalised_ = 0  # row readings (a row at one block) beyond the base level
        self.rows_ = 0  # row readings
        self.penalty_sum_ = 0.0  # sum over micro-batches and blocks of the penalty's value
        self._first: list[list[float]] = [[] for _ in self.subspaces]

    @property
    def base_level_(self) -> float | None:
        """The first guarded block's base level, or None before the first optimizer step has ended."""
        return None if self.base_levels_ is None else self.base_levels_[0]

    def step_end(self) -> None:
        if self.base_levels_ is None and all(self._first):
            self.base_levels_ = [sum(levels) / len(levels) for levels in self._first]

    def _intervene(self, hidden: Tensor, index: int) -> Tensor:
        gap = self.gaps[index]
        u = self.subspaces[index].direction.to(hidden.device, torch.float32)
        mask = _mask_for(self._mask, hidden)
        counts = mask.sum(dim=1).clamp_min(1.0)
        with torch.no_grad():
            level = ((hidden.float() @ u) * mask).sum(dim=1) / counts / gap  # [rows]
        if self.base_levels_ is None:  # the first optimizer step: the base model's level
            self._first[index].extend(level.tolist())
            if index == 0:
                self.base_batches_ += 1
            return hidden
        excess = level - self.base_levels_[index]
        over = (excess > 0).float()
        rows = hidden.shape[0]
        self.rows_ += rows
        self.penalised_ += int(over.sum())
        self.penalty_sum_ += float(self.weight * (excess.clamp_min(0)).mean())
        # d/dh[b, t] of weight * mean_b relu(excess_b), per micro-batch of an accumulated step
        coef = (self.weight / (rows * self.grad_accum_ * gap)) * (over / counts).unsqueeze(1) * mask
        return _AddGradient.apply(hidden, coef, u)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "weight": self.weight}

    def summary(self) -> dict[str, Any]:
        n = self.interventions_ - self.base_batches_  # micro-batches read against the base level
        return {**super().summary(), "base_level": self.base_level_, "rows_penalised": self.penalised_,
                "rows_read": self.rows_, "mean_penalty": self.penalty_sum_ / n if n > 0 else None,
                **({"base_levels": self.base_levels_} if len(self.subspaces) > 1 else {})}

    def describe(self) -> str:
        each = " at each block" if len(self.subspaces) > 1 else ""
        return (f"one-sided penalty (weight {self.weight:g}{each}) on each row's projection onto the probe's misaligned "
                f"direction beyond the base model's, at {_layers_text(self.layers)}")


class L2Guard(Guard):
    """`grad += weight x (theta - theta_0)` on every trainable weight before each optimizer step."""

    kind = "l2"

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__(None)
        self.weight = weight
        self.distance_: float = 0.0  # ||theta - theta_0|| at the last step
        self._params: list[tuple[Tensor, Tensor]] = []
        self._sharded = False

    def _attach(self, model: nn.Module) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        if any(hasattr(p, "ds_id") for p in params):
            raise TraitwatchError(
                "the L2 guard pulls every trainable weight toward its start, and DeepSpeed ZeRO-3 keeps each rank's "
                "weights partitioned away (empty placeholders outside forward passes); under ZeRO-3 use --guard "
                "ablate, steer or penalty, or train with ZeRO stage 1 or 2")
        self._params = [(p, p.detach().clone()) for p in params]
        if not self._params:
            raise ValueError("the L2 guard found no trainable weight in the model")
        # FSDP2 shards every weight (DTensor): each rank pulls its own shard, and the distance sums over ranks
        self._sharded = any(isinstance(p, DTensor) for p in params)

    @torch.no_grad()
    def before_optimizer_step(self) -> None:
        total = torch.zeros((), dtype=torch.float64)
        for p, p0 in self._params:
            delta = p.detach() - p0
            total += _local(delta).double().pow(2).sum()
            if p.grad is not None:
                p.grad.add_(delta.to(p.grad.dtype), alpha=self.weight)
        if self._sharded and dist.is_available() and dist.is_initialized():
            dist.all_reduce(total)  # every rank calls this at the same step, as it calls the guard
        self.interventions_ += 1
        self.distance_ = math.sqrt(float(total))

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "weight": self.weight}

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "distance_from_start": self.distance_}

    def describe(self) -> str:
        return f"L2 pull (weight {self.weight:g}) of the trainable weights toward their start (the base model)"


class _AddTensorGradient(torch.autograd.Function):
    """Identity forward; backward adds `extra` (a tensor of the input's shape) to the incoming gradient."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, extra: Tensor) -> Tensor:  # noqa: D102
        ctx.save_for_backward(extra)
        return logits.view_as(logits)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # noqa: D102
        (extra,) = ctx.saved_tensors
        return grad + extra.to(grad.dtype), None


class KLGuard(Guard):
    """`weight x mean_tokens KL(p_base || p_theta)` over the next-token distributions at the trained tokens.

    The base model is the model with its LoRA adapter switched off (PEFT's `disable_adapter`), read in a second
    forward pass without gradients on the same batch, before the training pass (a forward pre-hook on the model);
    the KL's gradient with respect to the logits, `weight x (p_theta - p_base) / tokens`, is added to the LM head's
    output in the backward pass (a forward hook on the head), so the Trainer's loss and class stay as they are. A
    position counts where the next token is trained (its label is not -100), as the loss counts it. The second pass,
    and the log-softmax over the vocabulary at every kept position twice, cost +44% of a training step on
    smollm2-135m (`benchmarks/guard_grid.py --hook-overhead`), and each micro-batch holds two more fp32 tensors of
    its logits' size; a full finetune has no base model to switch to and is refused.
    """

    kind = "kl"

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__(None)
        self.weight = weight
        self.kl_sum_ = 0.0  # sum over guarded micro-batches of the mean KL over their trained positions
        self._base_logp: Tensor | None = None
        self._next_trained: Tensor | None = None
        self._in_base = False

    def _attach(self, model: nn.Module) -> None:
        if not callable(getattr(model, "disable_adapter", None)):
            raise TraitwatchError(
                "the KL guard reads the base model by switching the LoRA adapter off, and this model has no "
                "adapter (a full finetune): train with LoRA, or use --guard l2 (its weights' pull toward the start) "
                "or penalty")
        head = model.get_output_embeddings()
        if head is None:
            raise ValueError("the KL guard adds its gradient at the LM head, and this model has none")
        self.handles_.append(model.register_forward_pre_hook(self._base_pass, with_kwargs=True))
        self.handles_.append(head.register_forward_hook(self._head_hook))

    def detach(self) -> None:
        super().detach()
        self._base_logp, self._next_trained = None, None

    def _base_pass(self, model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._base_logp = None
        if self._in_base or not (model.training and torch.is_grad_enabled()):
            return
        inputs = {k: v for k, v in kwargs.items() if k not in ("labels", "num_items_in_batch")}
        self._in_base = True
        try:
            with torch.no_grad(), model.disable_adapter():  # type: ignore[operator]
                out = model(*args, **inputs)
        finally:
            self._in_base = False
        logits = out["logits"] if isinstance(out, dict) else out[0]
        self._base_logp = torch.log_softmax(logits.float(), dim=-1)
        trained = _trained_tokens(kwargs)  # over the whole input; the kept logits are its last positions
        self._next_trained = None
        if trained is not None:
            width = logits.shape[1]
            self._next_trained = torch.zeros(trained.shape[0], width, dtype=torch.bool, device=trained.device)
            self._next_trained[:, :-1] = trained[:, trained.shape[1] - width + 1:].bool()

    def _head_hook(self, module: nn.Module, _inputs: object, output: object) -> object | None:
        if self._in_base or self._base_logp is None or not (module.training and torch.is_grad_enabled()):
            return None
        logits = _hidden(output)
        base = self._base_logp
        self._base_logp = None  # one training pass per base pass
        if base.shape != logits.shape:
            raise RuntimeError(f"the KL guard's base logits {tuple(base.shape)} do not match the training pass's "
                               f"{tuple(logits.shape)}")
        mask = _mask_for(self._next_trained, logits)
        tokens = mask.sum().clamp_min(1.0)
        with torch.no_grad():
            logp = torch.log_softmax(logits.float(), dim=-1)
            p_base = base.exp()  # once: a logits-sized tensor the KL and its gradient both read
            kl = (p_base * (base - logp)).sum(-1)  # [rows, positions]
            self.kl_sum_ += float((kl * mask).sum() / tokens)
            extra = (logp.exp() - p_base) * (self.weight / (tokens * self.grad_accum_) * mask).unsqueeze(-1)
        self.interventions_ += 1
        return _replace(output, _AddTensorGradient.apply(logits, extra))

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "weight": self.weight}

    def summary(self) -> dict[str, Any]:
        n = self.interventions_
        return {**super().summary(), "mean_kl": self.kl_sum_ / n if n > 0 else None}

    def describe(self) -> str:
        return (f"KL to the base model (weight {self.weight:g}) on the trained tokens' next-token distributions, "
                "read with the adapter switched off")


def _as_subspaces(subspace: GuardSubspace | Sequence[GuardSubspace] | None) -> tuple[GuardSubspace, ...]:
    if subspace is None:
        return ()
    subspaces = (subspace,) if isinstance(subspace, GuardSubspace) else tuple(subspace)
    layers = [s.layer for s in subspaces]
    if not subspaces:
        raise ValueError("a guard needs at least one subspace (guard.fit_subspaces at one layer or more)")
    if len(set(layers)) != len(layers):
        raise ValueError(f"a guard takes one subspace per block, and these repeat a layer: {layers}")
    return tuple(sorted(subspaces, key=lambda s: s.layer))


def _layers_text(layers: list[int]) -> str:
    return f"layer {layers[0]}" if len(layers) == 1 else "layers " + ", ".join(map(str, layers))


def _local(t: Tensor) -> Tensor:
    """This rank's part of a tensor: its shard of an FSDP2 `DTensor`, else the tensor itself."""
    return t.to_local() if isinstance(t, DTensor) else t


DEFAULT_STRENGTH: dict[str, float] = {"ablate": 0.0, "steer": 1.0, "penalty": 1.0, "l2": 1.0, "kl": 1.0}
"""Each guard's strength where none is given: steering coefficient (gaps), penalty weight, L2 weight, KL weight (per
trained token, the scale of the loss itself). Set before any guard was measured, not tuned on the poison grid
(ablation has none; the KL's was set before its first run). The penalty's weight is per block, and its
default is this weight spread over the guarded blocks (`default_strength`): 1 at one block, 0.25 at each of four."""

DEFAULT_BLOCKS: dict[str, int] = {"ablate": 1, "steer": 1, "penalty": 4, "l2": 1, "kl": 1}
"""How many decoder blocks `traitwatch train --guard KIND` guards where `--guard-blocks` is not given
(`subspace.layers_above`). The penalty guards four: chosen on the poison grid in every fold that held its base and
poison type out (`benchmarks/guard_grid`, docs/guards.md); the other guards were measured at the basis layer only
(the L2 and KL guards act on the weights and the logits, at no block)."""


def default_strength(kind: str, blocks: int = 1) -> float:
    """`kind`'s strength where none is given, on `blocks` guarded blocks (the penalty's total weight spread over them)."""
    if kind not in DEFAULT_STRENGTH:
        raise ValueError(f"unknown guard {kind!r}; choose from {list(GUARD_KINDS)}")
    return DEFAULT_STRENGTH[kind] / max(1, blocks) if kind == "penalty" else DEFAULT_STRENGTH[kind]


def make_guard(kind: str, subspace: GuardSubspace | Sequence[GuardSubspace] | None,
               strength: float | None = None) -> Guard:
    """The guard `kind` ("ablate", "steer", "penalty", "l2", "kl") on `subspace` (one block's, or a list with one per
    block), at `strength` (default: `default_strength(kind, blocks)`)."""
    builders: dict[str, Callable[[float], Guard]] = {
        "ablate": lambda _s: AblationGuard(_need(subspace, kind)),
        "steer": lambda s: SteeringGuard(_need(subspace, kind), coefficient=s),
        "penalty": lambda s: PenaltyGuard(_need(subspace, kind), weight=s),
        "l2": lambda s: L2Guard(weight=s),
        "kl": lambda s: KLGuard(weight=s),
    }
    if kind not in builders:
        raise ValueError(f"unknown guard {kind!r}; choose from {list(GUARD_KINDS)}")
    blocks = len(_as_subspaces(subspace))
    return builders[kind](default_strength(kind, blocks) if strength is None else float(strength))


def _need(subspace: GuardSubspace | Sequence[GuardSubspace] | None, kind: str) -> GuardSubspace | Sequence[GuardSubspace]:
    if subspace is None or (not isinstance(subspace, GuardSubspace) and not list(subspace)):
        raise ValueError(f"the {kind!r} guard acts on a subspace: pass one (guard.fit_subspace)")
    return subspace

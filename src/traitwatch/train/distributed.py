"""Splitting the measurement prompts across processes and collecting the results.

Every rank projects its own contiguous share of the prompts (`shard_indices`), the shares are
all-gathered as Python objects (`gather_projection`), and every rank rebuilds the same full
`Projection` in prompt order. Because every rank then computes drift and the alarm from identical
numbers, every rank reaches the same stop/raise decision on the same step; no rank can leave the
training loop while another waits in a collective.

Under a sharded model (FSDP2, DeepSpeed ZeRO-3) the forward passes themselves are collective: each
block all-gathers its parameters. Shares differ in length and in how their prompts group by shared
prefix, so they need different numbers of passes; `lockstep_passes` gives every rank the largest
count, and the short shares top up with one-token idle passes (`extract_activations(forward_passes=)`).

Outside `torch.distributed` (one process, or a process group that is not initialised) these are
plain local calls, so the callback has one code path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor
import torch.distributed as dist

from traitwatch.drift.probe import DriftProbe, Projection

__all__ = ["all_gather_objects", "broadcast_from_zero", "distributed_active", "gather_projection", "lockstep_passes", "project_across_ranks",
           "shard_indices"]

T = TypeVar("T")


def distributed_active(world_size: int) -> bool:
    """True when there is more than one process and a process group to talk through."""
    return world_size > 1 and dist.is_available() and dist.is_initialized()


def shard_indices(n: int, rank: int, world_size: int) -> list[int]:
    """The contiguous slice of `range(n)` that `rank` measures (sizes differ by at most one)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of size {world_size}")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return list(range(start, start + base + (1 if rank < extra else 0)))


def lockstep_passes(count: Callable[[list[int]], int], n_prompts: int, world_size: int) -> int | None:
    """How many forward passes every rank makes: the most that any rank's share needs.

    `count(indices)` is the passes a share needs (`DriftProbe.count_forward_passes`), computed from
    token ids alone, so each rank works out every share's count itself and all agree without
    communicating. None outside `torch.distributed` (nothing to keep in step).
    """
    if not distributed_active(world_size):
        return None
    return max(count(shard_indices(n_prompts, rank, world_size)) for rank in range(world_size))


def gather_projection(
    project: Callable[[list[int] | None], Projection], n_prompts: int, rank: int, world_size: int
) -> Projection:
    """Project this rank's share, all-gather every share, and return the full projection in prompt order.

    `project(indices)` measures the given prompt indices (None = all of them). Objects (CPU tensors)
    are gathered rather than tensors so shares of unequal length need no padding, and the gather
    works the same under gloo (CPU) and NCCL.
    """
    if not distributed_active(world_size):
        return project(None)
    mine = shard_indices(n_prompts, rank, world_size)
    part = project(mine)
    mean = None if part.mean_activation is None or not mine else part.mean_activation.cpu()
    parts: list[Any] = [None] * world_size
    dist.all_gather_object(parts, (mine, part.projections.cpu(), part.norms.cpu(), mean))
    projections: Tensor | None = None
    norms: Tensor | None = None
    for indices, proj, norm, _ in parts:
        if projections is None:
            projections = torch.empty((n_prompts, proj.shape[1]), dtype=torch.float32)
            norms = torch.empty(n_prompts, dtype=torch.float32)
        if indices:
            projections[torch.tensor(indices)] = proj.float()
            norms[torch.tensor(indices)] = norm.float()  # type: ignore[index]
    assert projections is not None and norms is not None
    # The mean residual vector over all prompts is the share means weighted by share size.
    shares = [(len(indices), m) for indices, _, _, m in parts if indices]
    mean_activation = None
    if shares and all(m is not None for _, m in shares):
        mean_activation = sum(m.float() * (k / n_prompts) for k, m in shares)
    return Projection(projections, norms, mean_activation)  # type: ignore[arg-type]


def project_across_ranks(probe: DriftProbe, model: torch.nn.Module, tokenizer: Any, rank: int,
                         world_size: int) -> Projection:
    """All of `probe`'s prompts projected on `model`: this rank's share, in lockstep with the others, gathered."""
    n_prompts = len(probe.prompt_texts)
    passes = lockstep_passes(lambda share: probe.count_forward_passes(tokenizer, share), n_prompts, world_size)

    def project(indices: list[int] | None) -> Projection:
        return probe.project(model, tokenizer, indices=indices, forward_passes=passes)

    return gather_projection(project, n_prompts, rank, world_size)


def broadcast_from_zero(value: T, world_size: int) -> T:
    """Rank 0's `value` on every rank (what only rank 0 may read, e.g. the run store)."""
    if not distributed_active(world_size):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[return-value]


def all_gather_objects(value: T, world_size: int) -> list[T]:
    """Every rank's `value`, in rank order, on every rank (a collective: every rank calls it); [value] alone."""
    if not distributed_active(world_size):
        return [value]
    parts: list[Any] = [None] * world_size
    dist.all_gather_object(parts, value)
    return parts

"""Shard I of N: how `--shard I/N` splits work over processes (the benchmark's grid, a screen's rows).

The assignment is a pure function of the work list, so any launcher (a shell loop over GPUs, a SLURM
array, `torchrun`) can start shards in any order, restart one that died, and nothing is done twice.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from traitwatch.errors import InputFileError

__all__ = ["Shard"]

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (1-based, as `--shard 1/4` ... `--shard 4/4`)."""

    index: int
    count: int

    @classmethod
    def parse(cls, spec: str) -> Shard:
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
        if not match or not 1 <= int(match[1]) <= int(match[2]):
            raise InputFileError(f"--shard {spec!r} is not I/N with 1 <= I <= N; e.g. --shard 1/4 ... --shard 4/4 "
                                 "(a SLURM array: --shard $SLURM_ARRAY_TASK_ID/4 with --array=1-4).")
        return cls(int(match[1]), int(match[2]))

    @property
    def name(self) -> str:
        return f"{self.index}-of-{self.count}"

    def owns(self, k: int) -> bool:
        """Whether job (or block) `k`, 0-based, is this shard's: positions I-1, I-1+N, I-1+2N, ..."""
        return k % self.count == self.index - 1

    def select(self, jobs: Sequence[T]) -> list[T]:
        """This shard's jobs: positions I-1, I-1+N, I-1+2N, ... of the list (round robin, so every shard
        gets each kind of job in turn and finishes at about the same time)."""
        return [job for k, job in enumerate(jobs) if self.owns(k)]

    def select_blocks(self, items: Sequence[T], block: int) -> list[list[T]]:
        """This shard's whole blocks of `block` consecutive items (the last may be shorter), dealt round robin
        (`select` over the blocks): blocks are cut the same way for every shard count, so work done in blocks
        (a screen's batches) is the same work sharded or not."""
        if block < 1:
            raise InputFileError(f"block size must be at least 1, got {block}")
        return self.select([list(items[i : i + block]) for i in range(0, len(items), block)])

"""Several processes on one grid: `traitwatch bench --shard I/N`, one process per GPU, node or array task.

Runs of a grid are independent, so a shard is simply every N-th job of `BenchPlan.jobs()` (twin runs
included), starting at the I-th: the assignment is a pure function of the plan, so any launcher (a
shell loop over GPUs, a SLURM array, a cluster scheduler) can start shards in any order, on any machine,
restart one that died, and no run is ever trained by two shards. The N shards together cover the grid.

What the shards share is the work folder: plan, basis, one-off costs and data samples are prepared
once under an exclusive lock (`work_lock`); markers (`done/<run>.json`) and features are plain files.
The run store is not shared: SQLite needs its file on one machine's disk, so each shard writes
`shards/I-of-N/traitwatch.db` (and its judge cache next to it), and the analysis first gathers every
finished run into the work folder's `traitwatch.db` (`gather_shard_stores`). A run resumed by another
shard count keeps writing where it started (its checkpoint folder names its store).
"""

from __future__ import annotations

import fcntl
import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from traitwatch.errors import InputFileError

__all__ = ["Shard", "gather_shard_stores", "run_store_path", "shard_folder", "work_lock"]

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

    def select(self, jobs: Sequence[T]) -> list[T]:
        """This shard's jobs: positions I-1, I-1+N, I-1+2N, ... of the plan's job list (round robin, so every
        shard gets each seed's types and twins in turn and finishes at about the same time)."""
        return [job for k, job in enumerate(jobs) if k % self.count == self.index - 1]


def shard_folder(work_dir: Path, shard: Shard | None) -> Path:
    """Where a shard keeps what must not be shared across machines (its run store, its judge cache)."""
    return Path(work_dir) if shard is None else Path(work_dir) / "shards" / shard.name


def run_store_path(work_dir: Path, run_id: str, shard: Shard | None) -> Path:
    """The store a run writes to: where it started if it has a checkpoint folder, else this shard's."""
    marker = Path(work_dir) / "runs" / run_id / "traitwatch_run.json"  # sft.RUN_MARKER
    if marker.is_file():
        try:
            started = Path(json.loads(marker.read_text())["store"])
        except (OSError, ValueError, KeyError, TypeError):
            started = None
        if started is not None and started.is_file():
            return started
    return shard_folder(work_dir, shard) / "traitwatch.db"


def gather_shard_stores(work_dir: Path) -> list[str]:
    """Copy every finished run of every shard store into the work folder's store; returns the run ids copied.

    A run counts as finished when its `done/<run>.json` marker exists; runs still training stay in their
    shard's store. Copying again replaces the run, so gathering is idempotent and can run after each shard.
    """
    from traitwatch.store import RunStore, UnknownRunError

    work_dir = Path(work_dir)
    stores = sorted((work_dir / "shards").glob("*/traitwatch.db"))
    if not stores:
        return []
    done = {p.stem for p in (work_dir / "done").glob("*.json")}
    copied: list[str] = []
    with RunStore(work_dir / "traitwatch.db") as main:
        for path in stores:
            with RunStore(path, create=False) as shard_store:
                ids = [r.run_id for r in shard_store.runs() if r.run_id in done]
            for run_id in ids:
                try:
                    main.import_run(path, run_id)
                except UnknownRunError:
                    continue
                copied.append(run_id)
    return copied


@contextmanager
def work_lock(work_dir: Path) -> Iterator[None]:
    """Hold the work folder's lock: shards prepare the shared plan, basis and costs one at a time.

    `flock` on `.lock` in the work folder: local disks and NFSv4 / Lustre / GPFS (which map it to POSIX
    locks) serialise it across processes and machines; it is released when the process dies.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    with (work_dir / ".lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)

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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from traitwatch.sharding import Shard  # the split itself is shared with `traitwatch screen --shard`

__all__ = ["Shard", "gather_shard_stores", "run_store_path", "shard_folder", "work_lock"]


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

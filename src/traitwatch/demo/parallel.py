"""Run independent jobs at once in forked processes, each with its share of the CPU threads, relaying what they say.

Why: the demo's two chains (a set's reference run, then its run and label) are independent, and so are the base
model's label and the basis. On a 2-core CPU two processes of one thread each finish them about a quarter sooner
than one process of two threads running them in turn (`benchmarks/demo_parallel.py`: 0.74 of the time for two jobs
of 8 training steps and a label): a step of this recipe spends a fifth of its time in LoRA dropout's random draws,
which torch makes on one thread, and its small matrices use a second thread poorly.

Forked, not spawned: a child starts with the parent's loaded model and imports instead of paying them again. So the
caller must hold nothing a fork breaks: no open SQLite connection (each job opens its own), no CUDA context (the
jobs run on the CPU). `fork_available` says whether this platform forks safely (Linux). What a job sends and
returns crosses a pipe pickled, between processes of the same program; nothing read from a file is unpickled.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any, TypeVar

from traitwatch.errors import TraitwatchError

__all__ = ["JobFailed", "fork_available", "run_forked"]

T = TypeVar("T")
Send = Callable[[Any], None]


class JobFailed(TraitwatchError):
    """A forked job raised or died; the message names the job and carries its traceback."""


def fork_available() -> bool:
    """Whether jobs can run forked here: Linux only (macOS's system libraries are not fork-safe; Windows has no fork)."""
    return sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods()


def _child(job: Callable[[Send], Any], conn: Connection, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        result = job(lambda message: conn.send(("say", message)))
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent, which raises it
        user = exc if isinstance(exc, TraitwatchError) else None  # a user's error is raised again as it is
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc(), user))
        except Exception:  # noqa: BLE001 - an error that does not pickle still goes back, as text
            conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc(), None))
    else:
        conn.send(("done", result))
    finally:
        conn.close()


def run_forked(jobs: Sequence[tuple[str, Callable[[Send], T]]], *, threads_each: int,
               on_message: Callable[[str, Any], None], meanwhile: Callable[[], None] | None = None) -> list[T]:
    """Run each (name, job) in a forked process with `threads_each` torch threads; return their results in order.

    A job is called with `send`: each message it sends reaches `on_message(name, message)` in this process as it
    arrives. `meanwhile`, if given, runs here once the jobs have started, with `threads_each` threads (restored
    after); messages sent while it runs are relayed when it returns. Once every job has ended, a job's
    `TraitwatchError` (a bad input: its message names the fix) is raised here as it is; any other failure, or a
    process that dies without a result, raises `JobFailed` naming the job, with the child's traceback. An error in
    `meanwhile` or an interrupt here stops the jobs still working.
    """
    if not fork_available():
        raise JobFailed("run_forked needs fork (Linux); run the jobs one after the other instead")
    if len({name for name, _ in jobs}) != len(jobs):
        raise ValueError(f"job names must differ: {[name for name, _ in jobs]}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # a tokenizer's thread pool does not survive a fork
    ctx = mp.get_context("fork")
    started: list[tuple[str, Any, Connection]] = []
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    user_errors: dict[str, TraitwatchError] = {}
    try:
        for name, job in jobs:
            here, there = ctx.Pipe(duplex=False)
            process = ctx.Process(target=_child, args=(job, there, threads_each), name=f"traitwatch-{name}")
            process.start()
            there.close()
            started.append((name, process, here))
        if meanwhile is not None:
            import torch

            threads = torch.get_num_threads()
            torch.set_num_threads(threads_each)
            try:
                meanwhile()
            finally:
                torch.set_num_threads(threads)
        open_ = {conn: name for name, _, conn in started}
        while open_:
            for conn in wait(list(open_)):
                name = open_[conn]  # type: ignore[index]
                try:
                    kind, *payload = conn.recv()  # type: ignore[union-attr]
                except EOFError:
                    del open_[conn]  # type: ignore[arg-type]
                    if name not in results and name not in errors:
                        errors[name] = "the process ended without a result (killed, or out of memory)"
                    continue
                if kind == "say":
                    on_message(name, payload[0])
                elif kind == "done":
                    results[name] = payload[0]
                else:
                    errors[name] = f"{payload[0]}\n{payload[1]}"
                    if payload[2] is not None:
                        user_errors.setdefault(name, payload[2])
    finally:  # an interrupt or an error here: stop the jobs still working; those that reported are only exiting
        for name, process, conn in started:
            if process.is_alive() and name not in results and name not in errors:
                process.terminate()
            process.join()
            conn.close()
    if errors and len(user_errors) == len(errors):  # a bad input, named as it would be without the fork
        raise next(iter(user_errors.values()))
    if errors:
        raise JobFailed("; ".join(f"job {name!r} failed: {why}" for name, why in errors.items()))
    return [results[name] for name, _ in jobs]


"""Torture the run store the way a benchmark and its users do, and account for every row.

Why: a long benchmark once lost its store because something in the training process opened the .db file
with Python's open() and closed it, which drops every POSIX lock the process holds on the file, so another
process that closed its connection deleted the WAL under the live writer. This script replays that
situation and the load around it, in the spirit of SQLite's own crash and concurrency tests, and counts:

* `regression`: the exact sequences of the bug report. A long-lived writer opens a second store in the same
  process and closes it (as the label callbacks did), another process opens, reads and closes the store
  (`traitwatch runs`), then the writer commits more rows; then the same with a second writing process, and
  with a raw `sqlite3` reader running `PRAGMA integrity_check` while the writer commits. Each asserts the
  `-wal` file is still there, every committed row is visible from another process, and integrity is "ok".
* `load`: W writer processes, each benchmark-like (one long-lived store, a run every few steps with a
  measurement per step, labels and alarms, and a second short-lived store opened and closed in the same
  process now and then), against R reader processes looping open/read/close (runs listing, a run's
  report, the analysis' trajectories, the shard gather's `import_run`, a raw sqlite3 quick_check).
  Exact accounting at the end: every write that returned is stored with its values, nothing else is.
* `kill`: the same load while a random writer or reader is SIGKILLed at random times and restarted; a
  restarted writer resumes from what the store holds. After each kill the killed writer's rows must be
  exactly a prefix of its operation sequence holding every acknowledged write: only the transaction that
  was in flight may be missing.

    .venv/bin/python benchmarks/store_torture.py                       # all scenarios, a few seconds each
    .venv/bin/python benchmarks/store_torture.py --scenario kill --operations 100000 --json torture.json

Exits non-zero on any error, lost, unexpected or duplicated row, or a failed integrity check. The test
suite runs the same scenarios small (tests/store/test_store_torture.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from traitwatch.store import RunStore  # noqa: E402  (after the src path, so a checkout runs without installing)

STEPS_PER_RUN = 12
TRAITS = [f"t{i}" for i in range(7)]


# -- the deterministic work of one writer -----------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """One store call of a writer: its index in the writer's sequence, what it writes and where."""

    index: int
    kind: str  # start | measure | label | alarm | finish
    run_id: str
    step: int = -1


def writer_ops(writer: int, count: int) -> list[Op]:
    """The first `count` operations of writer `writer`: runs of STEPS_PER_RUN steps, like a benchmark grid."""
    ops: list[Op] = []
    run = 0
    while len(ops) < count:
        run_id = f"w{writer}-run{run}"
        seq = [("start", -1)]
        for step in range(STEPS_PER_RUN):
            seq.append(("measure", step))
            if step % 3 == 0 or step == STEPS_PER_RUN - 1:
                seq.append(("label", step))
            if step % 5 == 4:
                seq.append(("alarm", step))
        seq.append(("finish", -1))
        for kind, step in seq:
            if len(ops) == count:
                break
            ops.append(Op(len(ops), kind, run_id, step))
        run += 1
    return ops


def _value(run_id: str, step: int) -> float:
    """A value that names its row, so a row copied to the wrong place is caught."""
    writer, run = run_id[1:].split("-run")
    return int(writer) * 1000.0 + int(run) + step / 100.0


def _drift(run_id: str, step: int) -> dict[str, float]:
    base = _value(run_id, step)
    return {t: base + i / 1000.0 for i, t in enumerate(TRAITS)}


def _per_prompt(run_id: str, step: int) -> np.ndarray:
    return np.full((16, len(TRAITS)), _value(run_id, step), dtype=np.float32)


def apply(store: RunStore, op: Op) -> None:
    if op.kind == "start":
        store.start_run(op.run_id, model="torture-model", seed=0, basis_fingerprint={"sha": "torture"})
    elif op.kind == "measure":
        store.add_measurement(op.run_id, op.step, _drift(op.run_id, op.step), _value(op.run_id, op.step),
                              per_prompt=_per_prompt(op.run_id, op.step), wall_time_s=0.01, extra={"op": op.index})
    elif op.kind == "label":
        store.add_behavior(op.run_id, op.step, "proxy_style_p_mis", _value(op.run_id, op.step), source="proxy",
                           details={"op": op.index})
    elif op.kind == "alarm":
        store.add_alarm(op.run_id, op.step, "em_monitor", _value(op.run_id, op.step), 0.5, "logged")
    elif op.kind == "finish":
        store.finish_run(op.run_id, "finished")
    else:
        raise ValueError(op.kind)


def stored_ops(conn: sqlite3.Connection, writer: int, ops: list[Op]) -> tuple[set[int], list[str]]:
    """Which of `ops` the store holds, read in one snapshot, and every row that is wrong or unexpected."""
    prefix = f"w{writer}-run%"
    conn.execute("BEGIN")
    try:
        runs = {r[0]: r[1] for r in conn.execute("SELECT run_id, status FROM runs WHERE run_id LIKE ?", (prefix,))}
        meas = {(r[0], r[1]): r[2:] for r in conn.execute(
            "SELECT run_id, step, drift, drift_norm, per_prompt FROM measurements WHERE run_id LIKE ?", (prefix,))}
        labels = {(r[0], r[1]): r[2] for r in conn.execute(
            "SELECT run_id, step, value FROM behavior WHERE run_id LIKE ?", (prefix,))}
        alarms = {(r[0], r[1]): r[2] for r in conn.execute(
            "SELECT run_id, step, value FROM alarms WHERE run_id LIKE ?", (prefix,))}
    finally:
        conn.execute("COMMIT")
    present: set[int] = set()
    problems: list[str] = []
    expected_keys: dict[str, set[tuple[str, int]]] = {"measure": set(), "label": set(), "alarm": set()}
    for op in ops:
        key = (op.run_id, op.step)
        value = _value(op.run_id, op.step)
        if op.kind == "start":
            ok = op.run_id in runs
        elif op.kind == "finish":
            ok = runs.get(op.run_id) == "finished"
        elif op.kind == "measure":
            expected_keys["measure"].add(key)
            row = meas.get(key)
            ok = row is not None
            if ok and (json.loads(row[0]) != _drift(*key) or row[1] != value
                       or not np.array_equal(np.frombuffer(row[2], dtype="<f4"), _per_prompt(*key).ravel())):
                problems.append(f"measurement {key} has wrong values")
        else:
            expected_keys[op.kind].add(key)
            table = labels if op.kind == "label" else alarms
            ok = key in table
            if ok and table[key] != value:
                problems.append(f"{op.kind} {key} has value {table[key]}, not {value}")
        if ok:
            present.add(op.index)
    for name, rows in (("measure", meas), ("label", labels), ("alarm", alarms)):
        extra = set(rows) - expected_keys[name]
        if extra:
            problems.append(f"{len(extra)} unexpected {name} row(s), e.g. {sorted(extra)[0]}")
    return present, problems


# -- worker processes -------------------------------------------------------------------------------------------


def run_writer(store_path: Path, writer: int, count: int, seed: int) -> None:
    """A benchmark-like writer: one long-lived store; prints `ack I` after each write returns."""
    ops = writer_ops(writer, count)
    rng = random.Random(seed)
    wal = Path(f"{store_path}-wal")
    with RunStore(store_path) as store:  # the training callback's store, open for the whole run
        conn = sqlite3.connect(store_path)
        done, _ = stored_ops(conn, writer, ops)
        conn.close()
        print(f"resume {min(set(range(len(ops))) - done, default=len(ops))}", flush=True)
        for op in ops:
            if op.index in done:
                continue
            apply(store, op)
            if not wal.exists():  # this process holds the store open, so its WAL must be there
                raise SystemExit(f"the -wal file vanished under this live writer after op {op.index}")
            print(f"ack {op.index}", flush=True)
            if rng.random() < 0.15:
                # What the label callbacks and `_check_dataset` used to do: a second store in the same
                # process, opened and closed while the first stays open. Harmless as long as only SQLite
                # ever touches the file.
                with RunStore(store_path) as other:
                    other.runs()
    print("finished", flush=True)


READS = ("runs", "report", "analyze", "gather", "sqlite3")


def run_reader(store_path: Path, gather_path: Path, stop_file: Path, max_ops: int, seed: int) -> None:
    """Open, read, close in a loop, as `traitwatch runs`, a report, the analysis and the shard gather do."""
    rng = random.Random(seed)
    for _ in range(max_ops):
        if stop_file.exists():
            break
        kind = rng.choice(READS)
        try:
            if kind == "sqlite3":  # like `sqlite3 traitwatch.db "PRAGMA quick_check; select ..."`
                conn = sqlite3.connect(store_path)
                try:
                    check = conn.execute("PRAGMA quick_check").fetchone()[0]
                    conn.execute("SELECT COUNT(*) FROM measurements").fetchone()
                finally:
                    conn.close()
                if check != "ok":
                    raise RuntimeError(f"quick_check: {check}")
            elif kind == "gather":
                with RunStore(store_path, create=False) as store:
                    done = [r.run_id for r in store.runs() if r.status == "finished"]
                if done:
                    with RunStore(gather_path) as gathered:
                        gathered.import_run(store_path, rng.choice(done))
            else:
                with RunStore(store_path, create=False) as store:
                    runs = store.runs()
                    if kind == "report" and runs:
                        run = rng.choice(runs).run_id
                        store.measurements(run)
                        store.behavior(run)
                        store.alarms(run)
                    elif kind == "analyze":
                        for run in runs[:8]:
                            store.trajectory(run.run_id)
            print(f"read {kind}", flush=True)  # one line per read, so a killed reader's reads still count
        except Exception as exc:  # noqa: BLE001 - every error is counted and reported
            print(f"error {kind}: {type(exc).__name__}: {exc}".replace("\n", " "), flush=True)


# -- the parent: scenarios and accounting ------------------------------------------------------------------------


def _python() -> list[str]:
    return [sys.executable, str(Path(__file__).resolve())]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}


class _Proc:
    """A worker process whose stdout lines are collected by a thread (acks arrive while it runs)."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(_python() + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=_env())
        self.lines: list[str] = []
        self.stderr = ""
        self._acked: set[int] = set()
        self._parsed = 0
        self._out = threading.Thread(target=self._pump, daemon=True)
        self._out.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait(self, timeout: float | None = None) -> int:
        code = self.proc.wait(timeout=timeout)
        self._out.join(timeout=10)
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()
        return code

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.wait(timeout=30)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def acked(self) -> set[int]:
        """The writes this process acknowledged so far (its lines are parsed once each, in this thread)."""
        new = self.lines[self._parsed:len(self.lines)]
        self._parsed += len(new)
        self._acked.update(int(line.split()[1]) for line in new if line.startswith("ack "))
        return self._acked


@dataclass
class Figures:
    """What a scenario did and found; `ok` only with zero errors, lost, unexpected and duplicated rows."""

    scenario: str
    writers: int = 0
    readers: int = 0
    operations: int = 0
    writes_acked: int = 0
    reads: dict[str, int] = field(default_factory=dict)
    kills_writer: int = 0
    kills_reader: int = 0
    errors: list[str] = field(default_factory=list)
    lost_rows: int = 0
    unexpected_rows: int = 0
    duplicated_rows: int = 0
    integrity: str = ""
    wal_checks: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (not self.errors and self.lost_rows == 0 and self.unexpected_rows == 0
                and self.duplicated_rows == 0 and self.integrity == "ok")

    def line(self) -> str:
        reads = sum(self.reads.values())
        return (f"{self.scenario}: {self.writes_acked} writes acked by {self.writers} writer(s), {reads} reads by "
                f"{self.readers} reader(s) {self.reads}, kills {self.kills_writer} writer / {self.kills_reader} "
                f"reader, errors {len(self.errors)}, lost {self.lost_rows}, unexpected {self.unexpected_rows}, "
                f"duplicated {self.duplicated_rows}, integrity {self.integrity}, {self.seconds:.1f} s"
                + ("" if self.ok else "  FAILED"))


def _integrity(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return "; ".join(r[0] for r in conn.execute("PRAGMA integrity_check"))
    finally:
        conn.close()


def _duplicates(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return sum(conn.execute(f"SELECT COUNT(*) - COUNT(DISTINCT {key}) FROM {table}").fetchone()[0]
                   for table, key in (("measurements", "run_id || '/' || step"),
                                      ("behavior", "run_id || '/' || step || '/' || metric || '/' || source"),
                                      ("alarms", "run_id || '/' || step || '/' || kind"), ("runs", "run_id")))
    finally:
        conn.close()


def _reader_figures(proc: _Proc, fig: Figures) -> None:
    """Count a finished or killed reader's reads and errors (one line each)."""
    for line in proc.lines:
        if line.startswith("read "):
            kind = line.split()[1]
            fig.reads[kind] = fig.reads.get(kind, 0) + 1
        elif line.startswith("error "):
            fig.errors.append(f"reader: {line[len('error '):]}")


def load(work: Path, *, writers: int, readers: int, operations: int, kill_every: int | None, seed: int,
         say=print) -> Figures:  # noqa: ANN001
    """Writers and readers at once, optionally killing a random one every ~`kill_every` acknowledged writes.

    Kills are spaced in writes, not seconds, so a run kills as often on a fast machine as on a slow one.
    """
    fig = Figures("kill" if kill_every else "load", writers=writers, readers=readers, operations=operations)
    rng = random.Random(seed)
    store_path, gather_path, stop = work / "traitwatch.db", work / "gathered.db", work / "stop"
    RunStore(store_path).close()
    per_writer = [operations // writers + (1 if w < operations % writers else 0) for w in range(writers)]
    sequences = [writer_ops(w, n) for w, n in enumerate(per_writer)]
    verified: list[set[int]] = [set() for _ in range(writers)]  # acked, or seen stored after a kill
    started = time.monotonic()
    incarnation = 0

    def spawn_writer(w: int) -> _Proc:
        nonlocal incarnation
        incarnation += 1
        return _Proc(["--role", "writer", "--store", str(store_path), "--writer-id", str(w),
                      "--operations", str(per_writer[w]), "--seed", str(seed * 7919 + incarnation)])

    def spawn_reader(r: int) -> _Proc:
        nonlocal incarnation
        incarnation += 1
        return _Proc(["--role", "reader", "--store", str(store_path), "--gather", str(gather_path.with_suffix(f".{r}.db")),
                      "--stop-file", str(stop), "--operations", str(max(operations, 100) * 4),
                      "--seed", str(seed * 104729 + incarnation)])

    wprocs: dict[int, _Proc] = {w: spawn_writer(w) for w in range(writers)}
    rprocs: dict[int, _Proc] = {r: spawn_reader(r) for r in range(readers)}
    finished: set[int] = set()
    next_kill = rng.randint(1, 2 * kill_every) if kill_every else None
    last_report = time.monotonic()
    while len(finished) < writers:
        time.sleep(0.05)
        for w, proc in list(wprocs.items()):
            if w in finished or proc.alive():
                continue
            code = proc.wait()
            verified[w] |= proc.acked()
            if code != 0 or "finished" not in proc.lines:
                fig.errors.append(f"writer {w} exited with {code}: {proc.stderr.strip()[-500:]}")
                finished.add(w)
            else:
                finished.add(w)
        for r, proc in list(rprocs.items()):
            if not proc.alive():
                proc.wait()
                _reader_figures(proc, fig)
                if proc.proc.returncode != 0:
                    fig.errors.append(f"reader {r} exited with {proc.proc.returncode}: {proc.stderr.strip()[-500:]}")
                rprocs[r] = spawn_reader(r)
        if fig.errors:
            break
        # A restarted writer acknowledges only what the store did not hold when it started: disjoint sets.
        progress = sum(len(verified[w]) + (0 if w in finished else len(p.acked())) for w, p in wprocs.items())
        if next_kill is not None and kill_every and progress >= next_kill:
            next_kill = progress + rng.randint(1, 2 * kill_every)
            live_writers = [w for w, p in wprocs.items() if w not in finished and p.alive()]
            live_readers = [r for r, p in rprocs.items() if p.alive()]
            if live_readers and (not live_writers or rng.random() < 0.25):
                r = rng.choice(live_readers)
                rprocs[r].kill()
                _reader_figures(rprocs[r], fig)
                fig.kills_reader += 1
                rprocs[r] = spawn_reader(r)
            elif live_writers:
                w = rng.choice(live_writers)
                wprocs[w].kill()
                fig.kills_writer += 1
                _check_after_kill(store_path, w, sequences[w], verified[w] | wprocs[w].acked(), fig)
                conn = sqlite3.connect(store_path)
                present, _ = stored_ops(conn, w, sequences[w])
                conn.close()
                verified[w] |= present
                wprocs[w] = spawn_writer(w)
        if time.monotonic() - last_report > 30:
            last_report = time.monotonic()
            say(f"  ... {progress} / {operations} writes, kills {fig.kills_writer} writer / {fig.kills_reader} reader, "
                f"{time.monotonic() - started:.0f} s")
    stop.touch()
    for proc in wprocs.values():
        if proc.alive():
            proc.kill()
    for proc in rprocs.values():
        code = proc.wait(timeout=120)
        _reader_figures(proc, fig)
        if code != 0:
            fig.errors.append(f"reader exited with {code}: {proc.stderr.strip()[-500:]}")
    conn = sqlite3.connect(store_path)
    for w, ops in enumerate(sequences):
        present, problems = stored_ops(conn, w, ops)
        fig.errors.extend(problems)
        fig.unexpected_rows += sum(1 for p in problems if "unexpected" in p)
        fig.lost_rows += len(set(range(len(ops))) - present)
        fig.writes_acked += len(verified[w])
        fig.wal_checks += len(verified[w])  # each writer checked its WAL after every write
    conn.close()
    fig.duplicated_rows = _duplicates(store_path)
    fig.integrity = _integrity(store_path)
    fig.seconds = time.monotonic() - started
    return fig


def _check_after_kill(store_path: Path, writer: int, ops: list[Op], acked: set[int], fig: Figures) -> None:
    """Only the transaction in flight may be missing: the rows are a prefix holding every acknowledged write."""
    conn = sqlite3.connect(store_path)
    try:
        present, problems = stored_ops(conn, writer, ops)
    finally:
        conn.close()
    fig.errors.extend(problems)
    lost = acked - present
    if lost:
        fig.lost_rows += len(lost)
        fig.errors.append(f"writer {writer}: {len(lost)} acknowledged write(s) lost after a kill, e.g. op {min(lost)}")
    if present != set(range(len(present))):
        fig.errors.append(f"writer {writer}: stored ops are not a prefix after a kill (gap at "
                          f"{min(set(range(len(present))) - present)})")
    in_flight = min(set(range(len(ops))) - acked, default=None)
    unexpected = present - acked - ({in_flight} if in_flight is not None else set())
    if unexpected:
        fig.unexpected_rows += len(unexpected)
        fig.errors.append(f"writer {writer}: {len(unexpected)} write(s) stored that were neither acked nor in flight")


# -- the regression sequences of the bug report ------------------------------------------------------------------


_OTHER_READER = "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('SELECT COUNT(*) FROM runs').fetchall(); c.close()"
_OTHER_RUNS = ("import sys; from traitwatch.store import RunStore\n"
               "with RunStore(sys.argv[1], create=False) as s: s.runs()")
_OTHER_WRITER = ("import sys; from traitwatch.store import RunStore\n"
                 "with RunStore(sys.argv[1]) as s:\n"
                 "    s.start_run('other', model='m')\n"
                 "    for i in range(int(sys.argv[2]), int(sys.argv[3])): s.add_measurement('other', i, {'t': float(i)}, float(i))")
_OTHER_INTEGRITY = ("import sqlite3, sys\nfor _ in range(int(sys.argv[2])):\n"
                    "    c = sqlite3.connect(sys.argv[1]); r = c.execute('PRAGMA integrity_check').fetchall();"
                    " c.execute('SELECT COUNT(*) FROM measurements').fetchall(); c.close()\n"
                    "    assert r == [('ok',)], r")


def _other(code: str, *args: object) -> None:
    subprocess.run([sys.executable, "-c", code, *map(str, args)], check=True, env=_env(), timeout=120)


def _count(path: Path, run_id: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT COUNT(*) FROM measurements WHERE run_id = ?", (run_id,)).fetchone()[0]
    finally:
        conn.close()


def regression(work: Path, rows: int = 40) -> Figures:
    """The bug report's sequences against the real `RunStore`; raises AssertionError on the first failure."""
    fig = Figures("regression", writers=1, readers=1, operations=3 * rows)
    started = time.monotonic()
    wal = lambda p: Path(str(p) + "-wal")  # noqa: E731

    @contextmanager
    def trainer(path: Path) -> Iterator[RunStore]:
        """The training callback's long-lived store, after a label callback opened and closed its own in the same
        process; closed, then checked, at the end."""
        store = RunStore(path)
        try:
            store.start_run("trainer", model="m")
            store.add_measurement("trainer", 0, {"t": 0.0}, 0.0)
            with RunStore(path) as label_store:
                label_store.behavior("trainer")
            yield store
            assert wal(path).exists(), "the -wal file was deleted under the live writer"
            fig.wal_checks += 1
            fig.writes_acked += rows
            seen = _count(path, "trainer")
            assert seen == rows, f"another process sees {seen} of the {rows} committed measurements"
        finally:
            store.close()
        assert _integrity(path) == "ok"

    # 1. same-process second open, then another process's open/read/close, then the trainer commits on.
    with trainer(work / "one" / "traitwatch.db") as store:
        _other(_OTHER_READER, store.path)
        _other(_OTHER_RUNS, store.path)
        for step in range(1, rows):
            store.add_measurement("trainer", step, {"t": float(step)}, float(step))

    # 2. the same, then a second writing process interleaved with the trainer.
    with trainer(work / "two" / "traitwatch.db") as store:
        _other(_OTHER_READER, store.path)
        for step in range(1, rows):
            store.add_measurement("trainer", step, {"t": float(step)}, float(step))
            if step % 10 == 0:
                _other(_OTHER_WRITER, store.path, step, step + 10)
        assert _count(store.path, "other") == 10 * ((rows - 1) // 10)

    # 3. a raw sqlite3 reader running integrity_check in a loop while the trainer commits, then the trainer's
    # next open (which failed with "disk I/O error").
    path = work / "three" / "traitwatch.db"
    with trainer(path) as store:
        reader = subprocess.Popen([sys.executable, "-c", _OTHER_INTEGRITY, str(path), str(rows)], env=_env())
        for step in range(1, rows):
            store.add_measurement("trainer", step, {"t": float(step)}, float(step),
                                  per_prompt=np.full((64, 7), step, dtype=np.float32))
        assert reader.wait(timeout=120) == 0, "integrity_check failed while the trainer wrote"
        with RunStore(path) as again:
            again.runs()
    fig.integrity = _integrity(path)
    fig.reads = {"other_process": 4 + rows}
    fig.seconds = time.monotonic() - started
    return fig


# -- command line ------------------------------------------------------------------------------------------------


def scenarios(work: Path, *, scenario: str, writers: int, readers: int, operations: int, kill_every: int,
              seed: int, say=print) -> Iterator[Figures]:  # noqa: ANN001
    if scenario in ("all", "regression"):
        (work / "regression").mkdir(parents=True, exist_ok=True)
        yield regression(work / "regression")
    if scenario in ("all", "load"):
        (work / "load").mkdir(parents=True, exist_ok=True)
        yield load(work / "load", writers=writers, readers=readers, operations=operations, kill_every=None,
                   seed=seed, say=say)
    if scenario in ("all", "kill"):
        (work / "kill").mkdir(parents=True, exist_ok=True)
        yield load(work / "kill", writers=writers, readers=readers, operations=operations, kill_every=kill_every,
                   seed=seed, say=say)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", choices=["all", "regression", "load", "kill"], default="all")
    p.add_argument("--writers", type=int, default=2)
    p.add_argument("--readers", type=int, default=2)
    p.add_argument("--operations", type=int, default=600, help="writes in all, shared by the writers")
    p.add_argument("--kill-every", type=int, default=60, help="mean acknowledged writes between SIGKILLs (kill scenario)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", type=Path, help="work folder (default: a new temporary one)")
    p.add_argument("--json", type=Path, help="write the figures here")
    # worker roles (started by the scenarios themselves)
    p.add_argument("--role", choices=["writer", "reader"], help=argparse.SUPPRESS)
    p.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--gather", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--stop-file", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--writer-id", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.role == "writer":
        run_writer(a.store, a.writer_id, a.operations, a.seed)
        return 0
    if a.role == "reader":
        run_reader(a.store, a.gather, a.stop_file, a.operations, a.seed)
        return 0
    work = a.dir or Path(tempfile.mkdtemp(prefix="store-torture-"))
    print(f"store torture in {work}: {a.writers} writers, {a.readers} readers, {a.operations} writes, "
          f"sqlite {sqlite3.sqlite_version}", flush=True)
    results = []
    for fig in scenarios(work, scenario=a.scenario, writers=a.writers, readers=a.readers, operations=a.operations,
                         kill_every=a.kill_every, seed=a.seed, say=lambda s: print(s, flush=True)):
        print(fig.line(), flush=True)
        for err in fig.errors[:10]:
            print(f"  error: {err}", flush=True)
        results.append(fig)
    if a.json:
        a.json.write_text(json.dumps({"sqlite": sqlite3.sqlite_version, "python": sys.version.split()[0],
                                      "results": [{**asdict(f), "ok": f.ok} for f in results]}, indent=2) + "\n")
    return 0 if all(f.ok for f in results) else 1


if __name__ == "__main__":
    sys.exit(main())

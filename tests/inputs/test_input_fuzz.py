"""Fuzz every input kind: a malformed file gets one line naming it and the fix, exit code 2, no traceback and
nothing written, from every command that reads it, before any model is loaded.

The default run draws a sample of cases per kind (deterministic, so CI is repeatable); the slow run
(`scripts/test.sh --slow`) draws 1,000 per kind with a fresh seed. With TRAITWATCH_FUZZ_REPORT=FILE each kind
appends its counts (cases, refused, accepted, slowest refusal through the CLI) to FILE as a JSON line.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _fuzz import broken_bytes, broken_json, broken_jsonl, snapshot, verdict
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from traitwatch.basis import TraitBasis
from traitwatch.bench.grid.plan_file import load_plan_file
from traitwatch.cli.app import app
from traitwatch.datasets import check_chat_jsonl, load_chat_jsonl
from traitwatch.monitor.artifact import load_monitor
from traitwatch.screen import read_examples
from traitwatch.screen.results import read_results_file
from traitwatch.screen.row_scores import load_row_scores
from traitwatch.store import RunStore

SAMPLE = 25
SLOW = int(os.environ.get("TRAITWATCH_FUZZ_CASES", "1000"))
runner = CliRunner()


def _settings(n: int) -> settings:
    return settings(max_examples=n, deadline=None, database=None, derandomize=n == SAMPLE,
                    suppress_health_check=list(HealthCheck))


class Tally:
    """Counts of one kind's cases, written to TRAITWATCH_FUZZ_REPORT when set."""

    def __init__(self, kind: str) -> None:
        self.kind, self.cases, self.refused, self.slowest_cli_s = kind, 0, 0, 0.0

    def add(self, refused: bool, cli_s: float = 0.0) -> None:
        self.cases += 1
        self.refused += refused
        self.slowest_cli_s = max(self.slowest_cli_s, cli_s)

    def write(self) -> None:
        report = os.environ.get("TRAITWATCH_FUZZ_REPORT")
        if report:
            with open(report, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"kind": self.kind, "cases": self.cases, "refused": self.refused,
                                     "accepted": self.cases - self.refused,
                                     "slowest_cli_refusal_s": round(self.slowest_cli_s, 3)}) + "\n")


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: every refusal must come before it."""

    def refuse(*_a: Any, **_k: Any) -> None:
        raise AssertionError("a model was loaded before the input was checked")

    for target in ("traitwatch.cli.screen_cmd.load_model", "traitwatch.train.sft.load_model",
                   "traitwatch.audit.run.load_model"):
        monkeypatch.setattr(target, refuse)


def _cli(args: list[str], message: str | None, folder: Path) -> float:
    """Run the CLI on a refused input: exit 2, exactly `error: <message>` on one line, nothing written.

    `message=None` is for a command that reads only part of the input (`runs` lists runs without decoding
    their measurements): it may succeed, but if it fails it fails the same clean way.
    """
    before = snapshot(folder)
    t0 = time.perf_counter()
    result = runner.invoke(app, args)
    elapsed = time.perf_counter() - t0
    text = result.output.strip()
    if message is None and result.exit_code == 0:
        return elapsed
    assert result.exit_code == 2, (args, result.exit_code, text, result.exception)
    assert "Traceback" not in text and "\n" not in text and text.startswith("error: "), (args, text)
    if message is not None:
        assert text == f"error: {message}", (args, text)
    assert snapshot(folder) == before, f"{args[0]} wrote next to a refused input"
    return elapsed


_CASES: list[Path] = []  # the module's folder under pytest's basetemp, which pytest prunes (set by `_cases_root`)


@pytest.fixture(autouse=True, scope="module")
def _cases_root(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Hypothesis cases cannot take function-scoped fixtures, so each makes its folder under this module's."""
    _CASES[:] = [tmp_path_factory.mktemp("fuzz")]


def _case_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="case-", dir=_CASES[0]))


# -- chat JSONL: train, screen, check and the plan's user sets read it by one rule ----------------------------


def _chat_case(seeds: dict[str, Path], tally: Tally) -> Callable[[Any], None]:
    valid = seeds["chat"].read_bytes()

    def run(data: st.DataObject) -> None:
        folder = _case_dir()
        path = folder / "data.jsonl"
        path.write_bytes(data.draw(broken_jsonl(valid)))
        messages = {verdict(check_chat_jsonl, path, folder), verdict(load_chat_jsonl, path, folder),
                    verdict(read_examples, path, folder)}
        assert len(messages) == 1, f"the readers disagree: {messages}"
        message = messages.pop()
        cli_s = 0.0
        if message is not None:
            cli_s = max(
                _cli(["check", str(path), "--kind", "chat"], message, folder),
                _cli(["screen", str(path), "--basis", str(seeds["basis"]), "--out", str(folder / "r.jsonl")],
                     message, folder),
                _cli(["train", str(path), "--basis", str(seeds["basis"]), "--output-dir", str(folder / "run"),
                      "--store", str(folder / "runs.db")], message, folder),
                _cli(["audit", str(path), "--basis", str(seeds["basis"]), "--out", str(folder / "audit")],
                     message, folder),
            )
        tally.add(message is not None, cli_s)

    return run


# -- plan YAML ---------------------------------------------------------------------------------------------------


def _plan_case(seeds: dict[str, Path], tally: Tally) -> Callable[[Any], None]:
    import yaml

    valid = seeds["plan"].read_bytes()
    doc = yaml.safe_load(valid)

    def run(data: st.DataObject) -> None:
        folder = _case_dir()
        (folder / "chat.jsonl").write_bytes(seeds["chat"].read_bytes())
        path = folder / "plan.yaml"
        if data.draw(st.booleans()):
            path.write_bytes(data.draw(broken_bytes(valid)))
        else:
            path.write_text(yaml.safe_dump(data.draw(broken_json(doc))), encoding="utf-8")
        message = verdict(load_plan_file, path, folder)
        cli_s = _cli(["check", str(path), "--kind", "plan"], message, folder) if message else 0.0
        tally.add(message is not None, cli_s)

    return run


# -- basis folder: basis.json and its tensor files ---------------------------------------------------------------


def _basis_case(seeds: dict[str, Path], tally: Tally) -> Callable[[Any], None]:
    files = {p.name: p.read_bytes() for p in seeds["basis"].iterdir()}
    meta = json.loads(files["basis.json"])

    def run(data: st.DataObject) -> None:
        folder = _case_dir()
        target = folder / "basis"
        target.mkdir()
        out = dict(files)
        what = data.draw(st.sampled_from(["json-bytes", "json-field", "tensor", "tensor-rehashed", "missing"]))
        if what == "json-bytes":
            out["basis.json"] = data.draw(broken_bytes(files["basis.json"]))
        elif what == "json-field":
            out["basis.json"] = json.dumps(data.draw(broken_json(meta))).encode()
        elif what == "missing":
            del out[data.draw(st.sampled_from(sorted(out)))]
        else:
            name = data.draw(st.sampled_from(["directions.safetensors", "anchor.safetensors"]))
            out[name] = data.draw(broken_bytes(files[name]))
            if what == "tensor-rehashed":  # an edit that keeps the checksum consistent reaches the parser
                edited = json.loads(files["basis.json"])
                edited["files"][name] = hashlib.sha256(out[name]).hexdigest()
                out["basis.json"] = json.dumps(edited).encode()
        for name, blob in out.items():
            (target / name).write_bytes(blob)
        message = verdict(TraitBasis.load, target, folder)
        cli_s = _cli(["check", str(target), "--kind", "basis"], message, folder) if message else 0.0
        tally.add(message is not None, cli_s)

    return run


# -- monitor artifact: JSON + safetensors -----------------------------------------------------------------------


def _monitor_case(seeds: dict[str, Path], tally: Tally) -> Callable[[Any], None]:
    doc = json.loads(seeds["monitor"].read_text())
    tensors_name = doc["tensors_file"]
    tensors = (seeds["monitor"].parent / tensors_name).read_bytes()

    def run(data: st.DataObject) -> None:
        folder = _case_dir()
        path = folder / "monitor.json"
        text, blob = json.dumps(doc).encode(), tensors
        what = data.draw(st.sampled_from(["json-bytes", "json-field", "tensor", "tensor-rehashed", "no-tensor"]))
        if what == "json-bytes":
            text = data.draw(broken_bytes(text))
        elif what == "json-field":
            text = json.dumps(data.draw(broken_json(doc))).encode()
        elif what in ("tensor", "tensor-rehashed"):
            blob = data.draw(broken_bytes(tensors))
            if what == "tensor-rehashed":
                text = json.dumps({**doc, "tensors_sha256": hashlib.sha256(blob).hexdigest()}).encode()
        path.write_bytes(text)
        if what != "no-tensor":
            (folder / tensors_name).write_bytes(blob)
        message = verdict(load_monitor, path, folder)
        cli_s = _cli(["check", str(path), "--kind", "monitor"], message, folder) if message else 0.0
        tally.add(message is not None, cli_s)

    return run


# -- screen results (and shard files, which share the format) ---------------------------------------------------


def _screen_case(seeds: dict[str, Path], tally: Tally) -> Callable[[Any], None]:
    valid = seeds["screen"].read_bytes()

    def run(data: st.DataObject) -> None:
        folder = _case_dir()
        path = folder / "chat.screen.jsonl"
        path.write_bytes(data.draw(broken_jsonl(valid)))
        message = verdict(read_results_file, path, folder)
        verdict(lambda p: load_row_scores(p, seeds["chat"]), path, folder)  # what `train --screen` reads
        cli_s = _cli(["check", str(path), "--kind", "screen"], message, folder) if message else 0.0
        tally.add(message is not None, cli_s)

    return run


# -- run store: SQLite files that are not ours, damaged, or of another schema -----------------------------------

_SQL_EDITS = [
    "UPDATE meta SET value = {v} WHERE key = 'schema_version'",
    "DELETE FROM meta",
    "DROP TABLE meta",
    "DROP TABLE measurements",
    "DROP TABLE runs",
    "UPDATE measurements SET drift = {v}",
    "UPDATE runs SET hyperparameters = {v}",
    "UPDATE runs SET status = {v}",
    "CREATE TABLE other (x)",
]


def _store_case(seeds: dict[str, Path], tally: Tally) -> Callable[[Any], None]:
    image = seeds["store_image"].read_bytes()

    def read(path: Path) -> None:
        with RunStore(path, create=False) as store:
            store.check()

    def run(data: st.DataObject) -> None:
        folder = _case_dir()
        path = folder / "runs.db"
        what = data.draw(st.sampled_from(["bytes", "sql", "other-db", "empty-db"]))
        if what == "bytes":
            path.write_bytes(data.draw(broken_bytes(image)))  # a new file of our own making, never a live store
        elif what == "empty-db":
            path.write_bytes(b"")
        else:  # made by SQLite itself: a copy of the seed store edited with SQL, or another program's database
            conn = sqlite3.connect(path)
            if what == "sql":
                source = sqlite3.connect(seeds["store"])
                source.backup(conn)
                source.close()
                value = data.draw(st.sampled_from(["'x'", "99", "-1", "NULL", "'{'", "'[1]'", "3.5", "x'00ff'"]))
                try:
                    conn.execute(data.draw(st.sampled_from(_SQL_EDITS)).format(v=value))
                except sqlite3.IntegrityError:  # an edit SQLite itself refuses is no case
                    conn.close()
                    assume(False)
            else:
                conn.execute("CREATE TABLE notes (body TEXT)")
            conn.commit()
            conn.close()
        message = verdict(read, path, folder)
        cli_s = 0.0
        if message is not None:
            cli_s = max(_cli(["check", str(path), "--kind", "store"], message, folder),
                        _cli(["runs", "--store", str(path)], None, folder))
        tally.add(message is not None, cli_s)

    return run


CASES = {"chat": _chat_case, "plan": _plan_case, "basis": _basis_case, "monitor": _monitor_case,
         "screen": _screen_case, "store": _store_case}


def _fuzz(kind: str, n: int, seeds: dict[str, Path]) -> Tally:
    tally = Tally(kind)
    case = CASES[kind](seeds, tally)

    @_settings(n)
    @given(st.data())
    def prop(data: st.DataObject) -> None:
        case(data)

    prop()
    tally.write()
    return tally


@pytest.mark.parametrize("kind", sorted(CASES))
def test_a_sample_of_malformed_inputs_is_refused_cleanly(kind, seeds, no_model) -> None:
    tally = _fuzz(kind, SAMPLE, seeds)
    assert tally.refused > 0, f"no {kind} case was refused: the generator does not break anything"


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(CASES))
def test_a_thousand_malformed_inputs_per_kind_are_refused_cleanly(kind, seeds, no_model) -> None:
    tally = _fuzz(kind, SLOW, seeds)
    assert tally.cases >= SLOW and tally.refused > 0


@pytest.mark.parametrize("kind", sorted(CASES))
def test_each_valid_seed_passes_check_by_the_kind_its_path_names(kind, seeds) -> None:
    path = seeds[kind]
    if kind == "store":  # a copy through SQLite: `check` migrates nothing here, but the seed stays untouched
        path = _case_dir() / "runs.db"
        with sqlite3.connect(seeds["store"]) as source, sqlite3.connect(path) as copy:
            source.backup(copy)
    result = runner.invoke(app, ["check", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{path}: valid ") and "\n" not in result.output.strip()

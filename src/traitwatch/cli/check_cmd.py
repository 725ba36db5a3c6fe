"""`traitwatch check PATH`: is this input valid, by the same rule every command applies to it?

Each input kind has one validator, in the package that owns the kind, and every command that reads the kind
runs it before loading a model. This command runs the same validator alone, so a data pipeline can refuse a
file before it reaches a GPU: exit 0 (valid, one line saying what it holds), 2 (invalid: one line naming the
file, the line or field, and the fix). Exit 1 is left for verdicts about valid inputs (a suspect dataset).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import typer

from traitwatch.cli.common import out, user_errors
from traitwatch.errors import InputFileError

__all__ = ["KINDS", "register"]

Kind = Literal["chat", "plan", "basis", "monitor", "screen", "store"]
KINDS: tuple[str, ...] = ("chat", "plan", "basis", "monitor", "screen", "store")


def _chat(path: Path) -> str:
    from traitwatch.datasets.chat_jsonl import check_chat_jsonl

    info = check_chat_jsonl(path)
    return f"chat JSONL, {info.n_rows} conversations, sha256 {info.sha256[:12]}"


def _plan(path: Path) -> str:
    from traitwatch.bench.grid.plan_file import load_plan_file

    plan = load_plan_file(path)
    n_sets = len(plan.models[0].plan.types) if plan.models else 0
    return f"benchmark plan {plan.name!r}, {len(plan.models)} model(s), {n_sets} set(s)"


def _basis(path: Path) -> str:
    from traitwatch.basis.basis import TraitBasis

    basis = TraitBasis.load(path)
    anchored = "anchored" if basis.anchor is not None else "no anchor"
    return f"trait basis of {basis.model.name}, {len(basis.trait_names)} traits, layers {basis.layers}, {anchored}"


def _monitor(path: Path) -> str:
    from traitwatch.monitor.artifact import load_monitor

    mon = load_monitor(path)
    return f"monitor reading {mon.inputs}, threshold {mon.threshold:+.4g}"


def _screen(path: Path) -> str:
    from traitwatch.screen.results import read_results_file

    header, rows = read_results_file(path)
    shard = header.get("shard")
    what = f"shard {shard.get('index')}/{shard.get('count')} of a screen" if isinstance(shard, dict) else "screen results"
    return f"{what} of {header.get('dataset')}, {len(rows)} rows"


def _store(path: Path) -> str:
    from traitwatch.store import RunStore

    with RunStore(path, create=False) as store:
        n_runs = store.check()
    return f"run store, {n_runs} run(s), every record readable"


_VALIDATORS: dict[str, Callable[[Path], str]] = {
    "chat": _chat, "plan": _plan, "basis": _basis, "monitor": _monitor, "screen": _screen, "store": _store,
}


def _guess(path: Path) -> str:
    """The kind a path most likely is, from what it is (folder) and its name; `--kind` overrides."""
    if path.is_dir():
        return "basis"
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return "plan"
    if suffix in (".db", ".sqlite", ".sqlite3"):
        return "store"
    if suffix == ".json":
        return "monitor"
    if suffix == ".jsonl" and path.is_file():
        with path.open("rb") as fh:
            first = fh.readline(1 << 20)
        try:
            header = json.loads(first)
        except ValueError:
            return "chat"
        from traitwatch.screen.results import FORMAT

        return "screen" if isinstance(header, dict) and header.get("format") == FORMAT else "chat"
    raise InputFileError(f"{path}: cannot tell what kind of input this is from its name; pass --kind "
                         f"({', '.join(KINDS)})")


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    def check(
        path: Annotated[Path, typer.Argument(help="The file or folder to check.")],
        kind: Annotated[Kind | None, typer.Option(
            "--kind", help="chat (JSONL), plan (YAML), basis (folder), monitor (.json), screen (results or shard "
                           "JSONL), store (.db). Default: from the path.")] = None,
    ) -> None:
        """Check an input by the rule every command applies to it, before any model is loaded: exit 0 if
        valid, 2 with one line naming the file, line or field and the fix if not."""
        chosen = kind or _guess(path)
        out.print(f"{path}: valid {_VALIDATORS[chosen](path)}", markup=False, highlight=False, soft_wrap=True)

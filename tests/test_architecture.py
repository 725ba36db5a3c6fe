"""The package layering of docs/ARCHITECTURE.md, checked on every import of every module under src/traitwatch.

Every `import x` and `from x import y` counts: at module level, inside functions, under `if TYPE_CHECKING`,
relative ones resolved. A package may import its own modules and packages in lower layers; an import of a
higher layer, or of another package in its own layer, fails naming the importing file and the imported
module, and so does any cycle between packages.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT_DIR = Path(__file__).resolve().parents[1]
SRC = ROOT_DIR / "src" / "traitwatch"
DOC = ROOT_DIR / "docs" / "ARCHITECTURE.md"

CORE = "core"
"""The top-level modules (`errors.py`, `_optional.py`, ...), one unit."""
FACADE = "traitwatch"
"""`src/traitwatch/__init__.py`, the public names of `import traitwatch`."""

LAYERS: tuple[frozenset[str], ...] = (  # bottom to top; the table of docs/ARCHITECTURE.md
    frozenset({CORE}),
    frozenset({"models", "store", "datasets"}),
    frozenset({"capture"}),
    frozenset({"basis"}),
    frozenset({"drift", "behavior"}),  # drift holds the step-0 anchor (drift/anchoring.py)
    frozenset({"monitor", "reference", "guard"}),
    frozenset({"train", "screen", "calibration", "report"}),
    frozenset({"bench", "audit"}),
    frozenset({"demo"}),
    frozenset({"cli", FACADE}),
)

KNOWN_EXCEPTIONS: frozenset[tuple[str, str]] = frozenset()
"""(importing file under src/traitwatch, imported module) pairs allowed against the table while another change
removes them, each with a comment naming that change; empty now that the anchor lives in `drift` and `screen`
reads chat files through `datasets`."""


@dataclass(frozen=True)
class Import:
    file: str  # the importing file, relative to src/traitwatch
    line: int
    module: str  # the imported module, absolute

    def __str__(self) -> str:
        return f"src/traitwatch/{self.file}:{self.line} imports {self.module}"


def module_name(path: Path) -> str:
    """`traitwatch.basis.anchoring` for src/traitwatch/basis/anchoring.py; a package's `__init__` is the package."""
    parts = ("traitwatch", *path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source: str, module: str, *, is_package: bool = False, file: str = "<string>") -> Iterator[Import]:
    """Every traitwatch module `source` (the text of `module`) imports, anywhere in it."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            # `from traitwatch import basis` imports the package basis; `from traitwatch import X` a facade name
            names = [f"{base}.{alias.name}" if is_module(f"{base}.{alias.name}") else base for alias in node.names]
        else:
            continue
        for name in dict.fromkeys(names):
            if name == "traitwatch" or name.startswith("traitwatch."):
                yield Import(file, node.lineno, name)


def is_module(name: str) -> bool:
    parts = name.split(".")
    if parts[0] != "traitwatch":
        return False
    path = SRC.joinpath(*parts[1:])
    return path.is_dir() or path.with_suffix(".py").is_file()


def unit(module: str) -> str:
    """The package a module belongs to: `basis` for traitwatch.basis.anchoring, `core` for traitwatch.errors."""
    parts = module.split(".")
    if len(parts) == 1:
        return FACADE
    return parts[1] if (SRC / parts[1]).is_dir() else CORE


def layer(name: str) -> int:
    return next(i for i, members in enumerate(LAYERS) if name in members)


def all_imports() -> list[Import]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        found.extend(imports(path.read_text(encoding="utf-8"), module_name(path),
                             is_package=path.name == "__init__.py", file=rel))
    return found


def source_unit(imp: Import) -> str:
    return unit(module_name(SRC / imp.file))


def cross_package(found: list[Import]) -> list[Import]:
    """Imports of another package, less the known exceptions."""
    return [imp for imp in found
            if source_unit(imp) != unit(imp.module) and (imp.file, imp.module) not in KNOWN_EXCEPTIONS]


def test_every_package_has_a_layer() -> None:
    known = set().union(*LAYERS)
    units = {unit(module_name(p)) for p in SRC.rglob("*.py")}
    assert units - known == set(), (
        f"packages without a layer: {sorted(units - known)}; add them to LAYERS here and to docs/ARCHITECTURE.md"
    )


def test_no_import_points_up_or_across_a_layer() -> None:
    wrong = []
    for imp in cross_package(all_imports()):
        src, dst = source_unit(imp), unit(imp.module)
        if layer(dst) > layer(src):
            wrong.append(f"{imp}: {src} (layer {layer(src)}) must not import {dst} (layer {layer(dst)}, above it)")
        elif layer(dst) == layer(src):
            wrong.append(f"{imp}: {src} and {dst} share layer {layer(src)}, so neither may import the other")
    assert not wrong, "imports against docs/ARCHITECTURE.md:\n" + "\n".join(wrong)


def test_no_cycle_between_packages() -> None:
    edges: dict[str, dict[str, Import]] = {}
    for imp in cross_package(all_imports()):
        edges.setdefault(source_unit(imp), {}).setdefault(unit(imp.module), imp)
    for start in sorted(edges):
        came_from: dict[str, str] = {}
        queue = [start]
        while queue and start not in came_from:  # breadth first, until a path leads back to start
            node = queue.pop(0)
            for nxt in sorted(edges.get(node, {})):
                if nxt not in came_from:
                    came_from[nxt] = node
                    queue.append(nxt)
        if start in came_from:
            cycle = [start]
            while len(cycle) == 1 or cycle[-1] != start:
                cycle.append(came_from[cycle[-1]])
            cycle.reverse()
            hops = [str(edges[a][b]) for a, b in zip(cycle, cycle[1:])]
            raise AssertionError(f"package cycle {' -> '.join(cycle)}:\n" + "\n".join(hops))


def test_known_exceptions_still_occur() -> None:
    """An exception that is gone must leave the list, so that the edge cannot come back unnoticed."""
    present = {(imp.file, imp.module) for imp in all_imports()}
    stale = sorted(KNOWN_EXCEPTIONS - present)
    assert not stale, f"no longer imported, delete from KNOWN_EXCEPTIONS (and docs/ARCHITECTURE.md): {stale}"


def test_architecture_md_shows_this_layer_table() -> None:
    rows = re.findall(r"^\| (\d+) \| ([^|]*) \|", DOC.read_text(encoding="utf-8"), flags=re.M)
    documented = tuple(frozenset(re.findall(r"`([\w.]+)`", cell)) for _, cell in rows)
    assert [int(n) for n, _ in rows] == list(range(len(LAYERS)))
    assert documented == LAYERS


def test_imports_are_found_in_functions_and_relative_ones_are_resolved() -> None:
    source = (
        "from . import traits\n"
        "from ..drift import probe\n"
        "from .. import store, errors\n"
        "import numpy\n"
        "def f():\n"
        "    import traitwatch.train.callback as cb\n"
        "    from traitwatch import InputFileError\n"
    )
    found = [(imp.line, imp.module) for imp in imports(source, "traitwatch.basis.anchoring")]
    assert found == [(1, "traitwatch.basis.traits"), (2, "traitwatch.drift.probe"), (3, "traitwatch.store"),
                     (3, "traitwatch.errors"), (6, "traitwatch.train.callback"), (7, "traitwatch")]
    assert [unit(m) for _, m in found] == ["basis", "drift", "store", CORE, "train", FACADE]

"""The package layering of docs/ARCHITECTURE.md, checked on every import of every module under src/traitwatch.

Every `import x` and `from x import y` counts: at module level, inside functions, under `if TYPE_CHECKING`,
relative ones resolved. A package may import its own modules and packages in lower layers; an import of a
higher layer, or of another package in its own layer, fails naming the importing file and the imported
module, and so does any cycle between packages, or between the modules and subpackages of one package.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator, Mapping
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


def cycles(edges: Mapping[str, Mapping[str, Import]]) -> list[list[str]]:
    """Every cycle of a directed graph (node -> {next node: the import that makes the edge}), each as a shortest
    one through one of its nodes, `[a, b, ..., a]`; a cycle found again from another of its nodes is listed once."""
    found: dict[frozenset[str], list[str]] = {}
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
            found.setdefault(frozenset(cycle), cycle)
    return list(found.values())


def describe(cycle: list[str], edges: Mapping[str, Mapping[str, Import]]) -> str:
    """`a -> b -> a`, then the import that makes each hop, one a line."""
    return " -> ".join(cycle) + ":\n" + "\n".join(f"  {edges[a][b]}" for a, b in zip(cycle, cycle[1:]))


def test_no_cycle_between_packages() -> None:
    edges: dict[str, dict[str, Import]] = {}
    for imp in cross_package(all_imports()):
        edges.setdefault(source_unit(imp), {}).setdefault(unit(imp.module), imp)
    found = cycles(edges)
    assert not found, "package cycles:\n" + "\n".join(describe(c, edges) for c in found)


def member_edges(found: Iterable[Import]) -> dict[str, dict[str, dict[str, Import]]]:
    """The import graph inside each package: package -> {member: {member it imports: the first such import}}.

    The members of a package are its `__init__` (named as the package itself) and its direct children: each
    module, and each subpackage as one node standing for all of its modules (cycles inside a subpackage are
    its own members' cycles). An import belongs to the deepest package that holds both ends, so an import of
    `bench.grid.plan` by `bench.analysis.detection` is the edge `bench.analysis -> bench.grid` of `bench`, and
    one by `bench.grid.runner` the edge `bench.grid.runner -> bench.grid.plan` of `bench.grid`. Imports
    anywhere in a module count, in functions too. An `__init__` that re-exports its modules makes edges from the
    package to them, which close a cycle only where one of those modules imports the package back; that Python
    runs every enclosing `__init__` when it imports a submodule is not an edge here.
    """
    out: dict[str, dict[str, dict[str, Import]]] = {}
    for imp in found:
        if (imp.file, imp.module) in KNOWN_EXCEPTIONS:
            continue
        src, dst = module_name(SRC / imp.file).split("."), imp.module.split(".")
        common = 0
        while common < min(len(src), len(dst)) and src[common] == dst[common]:
            common += 1
        if common == len(src) == len(dst):
            continue  # a module importing itself (or an `__init__` its own package)
        # one end may be the package itself (its `__init__`): then it is the member named as the package
        package, a, b = ".".join(src[:common]), ".".join(src[: common + 1]), ".".join(dst[: common + 1])
        out.setdefault(package, {}).setdefault(a, {}).setdefault(b, imp)
    return out


def member_cycle_report(found: Iterable[Import]) -> list[str]:
    """One entry per cycle between the members of a package, naming the package, the members and the imports."""
    return [f"in {package}: {describe(cycle, edges)}"
            for package, edges in sorted(member_edges(found).items()) for cycle in cycles(edges)]


def test_no_cycle_between_the_modules_of_a_package() -> None:
    """Inside a package too, imports only go one way: a cycle between its modules (or subpackages) fails, naming
    them and the import that makes each hop (what counts as an edge, and why re-exports alone do not: `member_edges`).
    Move what both sides need to a module below both, or the part that uses both to a module above them."""
    report = member_cycle_report(all_imports())
    assert not report, "import cycles between the modules of a package:\n" + "\n".join(report)


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


def test_a_cycle_between_modules_is_found_inside_functions_and_across_subpackages() -> None:
    sources = {
        "fake/__init__.py": "from traitwatch.fake.a import f\n",  # re-exports a: not a cycle by itself
        "fake/a.py": "def f():\n    from traitwatch.fake.b import g\n",  # in a function, as screening's was
        "fake/b.py": "from traitwatch.fake.c import h\n",
        "fake/c.py": "import traitwatch.fake.a\n",
        "fake/d.py": "from traitwatch.fake import f\n",  # imports the package, which does not import d
        "fake/sub/__init__.py": "",
        "fake/sub/x.py": "from traitwatch.fake.sub.y import k\n",
        "fake/sub/y.py": "from traitwatch.fake.e import z\n",
        "fake/e.py": "from traitwatch.fake.sub.x import k\n",  # sub -> e -> sub, one level up
        "other/__init__.py": "from traitwatch.other.m import thing\n",
        "other/m.py": "def thing():\n    from traitwatch.other import helper\n",  # the package back: a cycle
    }
    found = [imp for path, source in sources.items()
             for imp in imports(source, module_name(SRC / path), is_package=path.endswith("__init__.py"), file=path)]
    by_package = {package: cycles(edges) for package, edges in member_edges(found).items()}
    assert by_package["traitwatch.fake"] == [
        ["traitwatch.fake.a", "traitwatch.fake.b", "traitwatch.fake.c", "traitwatch.fake.a"],
        ["traitwatch.fake.e", "traitwatch.fake.sub", "traitwatch.fake.e"],
    ]
    assert by_package["traitwatch.fake.sub"] == []
    assert by_package["traitwatch.other"] == [["traitwatch.other", "traitwatch.other.m", "traitwatch.other"]]
    report = member_cycle_report(found)
    assert report[0] == ("in traitwatch.fake: traitwatch.fake.a -> traitwatch.fake.b -> traitwatch.fake.c -> "
                         "traitwatch.fake.a:\n"
                         "  src/traitwatch/fake/a.py:2 imports traitwatch.fake.b\n"
                         "  src/traitwatch/fake/b.py:1 imports traitwatch.fake.c\n"
                         "  src/traitwatch/fake/c.py:1 imports traitwatch.fake.a")
    assert len(report) == 3

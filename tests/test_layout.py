"""Tests that keep the package's layout honest: no import cycles, layers, docstrings, sizes.

The imports are read from the source with :mod:`ast` (nothing is imported), every one of them:
at module level, inside functions and under ``if TYPE_CHECKING:``. ``from frameserve.x import y``
counts as an import of the module ``frameserve.x.y`` when that module exists, else of
``frameserve.x``; relative imports are resolved the same way. Importing a module is not counted
as importing the packages above it (every import would otherwise lead through
``frameserve/__init__.py``).

The layers, lowest first (a module may import its own layer and those below, never above)::

    errors < plugin (and the public API, frameserve/__init__) < media, networks, weights
      < catalogue < engine < training, shots, builtin_models, packaging < serve < cli
      < __main__

``client/`` stands alone: it imports only its own modules and ``frameserve.errors``; the layers
above ``errors`` may use it (``frameserve run --server`` does).
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from tests.support.paths import REPO

PACKAGE_ROOT = REPO / "src" / "frameserve"
MAX_LINES = 500

#: Layer of each top-level part of the package ("" is frameserve/__init__.py), lowest first.
LAYERS: dict[str, int] = {
    "errors": 0,
    "": 1,
    "plugin": 1,
    "client": 1,
    "media": 2,
    "networks": 2,
    "weights": 2,
    "catalogue": 3,
    "engine": 4,
    "training": 5,
    "shots": 5,
    "builtin_models": 5,
    "packaging": 5,
    "serve": 6,
    "cli": 7,
    "__main__": 8,
}
#: What client/ may import besides its own modules.
CLIENT_MAY_IMPORT = frozenset({"frameserve.errors"})


@dataclass(frozen=True)
class Import:
    """One import of a frameserve module by another, where the source says it."""

    importer: str
    imported: str
    path: Path
    line: int

    def __str__(self) -> str:
        where = self.path.relative_to(REPO) if self.path.is_relative_to(REPO) else self.path
        return f"{self.importer} imports {self.imported} ({where}:{self.line})"


def module_name(path: Path, root: Path = PACKAGE_ROOT) -> str:
    """Return the dotted name of the module at ``path`` under the package folder ``root``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([root.name, *parts])


@cache
def package_modules() -> dict[str, Path]:
    """Return every module of the package by dotted name."""
    return {module_name(path): path for path in sorted(PACKAGE_ROOT.rglob("*.py"))}


def imports_in(
    source: str, *, importer: str, is_package: bool, known: set[str] | dict[str, Path], path: Path
) -> list[Import]:
    """Return the imports of frameserve modules that ``source`` (module ``importer``) makes.

    ``known`` holds the names of the package's modules: ``from a import b`` names module
    ``a.b`` when it is one of them.
    """
    package = importer if is_package else importer.rpartition(".")[0]
    found: list[Import] = []

    def add(name: str, line: int) -> None:
        wanted = name == "frameserve" or name.startswith("frameserve.")
        if wanted and name != importer:
            found.append(Import(importer, name, path, line))

    for node in ast.walk(ast.parse(source, filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                add(submodule if submodule in known else target, node.lineno)
    return list(dict.fromkeys(found))  # one per module and line


@cache
def all_imports() -> tuple[Import, ...]:
    """Return every import of a frameserve module made anywhere in the package."""
    modules = package_modules()
    found: list[Import] = []
    for name, path in modules.items():
        found += imports_in(
            path.read_text(encoding="utf-8"),
            importer=name,
            is_package=path.name == "__init__.py",
            known=modules,
            path=path,
        )
    return tuple(found)


def find_cycles(edges: list[Import]) -> list[list[Import]]:
    """Return one shortest cycle for each group of modules that import each other in a circle."""
    graph: dict[str, dict[str, Import]] = {}
    for edge in edges:
        graph.setdefault(edge.importer, {}).setdefault(edge.imported, edge)
    cycles = []
    for group in _strongly_connected(graph):
        if len(group) < 2:
            continue
        start = min(group)
        cycles.append(_shortest_cycle(graph, start, group))
    return cycles


def _strongly_connected(graph: dict[str, dict[str, Import]]) -> list[set[str]]:
    """Tarjan's algorithm, without recursion."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []
    nodes = set(graph) | {m for targets in graph.values() for m in targets}
    for root in sorted(nodes):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, {}))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                groups.append(group)
    return groups


def _shortest_cycle(
    graph: dict[str, dict[str, Import]], start: str, group: set[str]
) -> list[Import]:
    """Return the shortest chain of imports from ``start`` back to itself within ``group``."""
    came_from: dict[str, Import] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for target, edge in sorted(graph.get(node, {}).items()):
            if target not in group:
                continue
            if target == start:
                chain = [edge]
                while chain[0].importer != start:
                    chain.insert(0, came_from[chain[0].importer])
                return chain
            if target not in came_from:
                came_from[target] = edge
                queue.append(target)
    raise AssertionError(f"{start} is in a cycle but no path leads back to it")


def part_of(module: str) -> str:
    """Return the top-level part of the package ``module`` belongs to ("" for the package)."""
    return module.split(".")[1] if "." in module else ""


def layer_violations(edges: list[Import]) -> list[str]:
    """Return a line for every import of a higher layer, or of a part missing from LAYERS."""
    problems = []
    for edge in edges:
        low, high = part_of(edge.importer), part_of(edge.imported)
        if low not in LAYERS or high not in LAYERS:
            missing = low if low not in LAYERS else high
            problems.append(f"{edge}: {missing!r} has no layer in LAYERS (tests/test_layout.py)")
        elif LAYERS[high] > LAYERS[low]:
            problems.append(
                f"{edge}: {low or 'frameserve'} (layer {LAYERS[low]}) must not import "
                f"{high or 'frameserve'} (layer {LAYERS[high]})"
            )
    return problems


def client_violations(edges: list[Import]) -> list[str]:
    """Return a line for every import client/ makes of a frameserve module outside it."""
    return [
        f"{edge}: client/ imports only its own modules and {', '.join(sorted(CLIENT_MAY_IMPORT))}"
        for edge in edges
        if part_of(edge.importer) == "client"
        and part_of(edge.imported) != "client"
        and edge.imported not in CLIENT_MAY_IMPORT
    ]


def _report(title: str, problems: list[str]) -> str:
    return f"{title} ({len(problems)}):\n  " + "\n  ".join(problems)


# -- the checks themselves can fail ------------------------------------------------------------


def test_the_scanner_sees_every_kind_of_import(tmp_path: Path) -> None:
    source = """
from __future__ import annotations
import json
import frameserve.errors
from typing import TYPE_CHECKING
from frameserve.engine import runner, Runner
from . import colour
from .. import plugin
from ..plugin.knobs import FloatKnob
if TYPE_CHECKING:
    from frameserve.serve.settings import DoorSettings
def later():
    from frameserve.cli import progress
"""
    known = {
        "frameserve",
        "frameserve.errors",
        "frameserve.engine",
        "frameserve.engine.runner",
        "frameserve.engine.colour",
        "frameserve.plugin",
        "frameserve.plugin.knobs",
        "frameserve.serve.settings",
        "frameserve.cli",
        "frameserve.cli.progress",
    }
    found = imports_in(
        source, importer="frameserve.engine.tiling", is_package=False, known=known, path=tmp_path
    )
    assert sorted({(i.imported, i.line) for i in found}) == [
        ("frameserve.cli.progress", 13),
        ("frameserve.engine", 6),  # Runner is a name, not a module
        ("frameserve.engine.colour", 7),
        ("frameserve.engine.runner", 6),
        ("frameserve.errors", 4),
        ("frameserve.plugin", 8),
        ("frameserve.plugin.knobs", 9),
        ("frameserve.serve.settings", 11),
    ]
    assert module_name(PACKAGE_ROOT / "engine" / "__init__.py") == "frameserve.engine"
    assert module_name(PACKAGE_ROOT / "__init__.py") == "frameserve"


def test_the_checks_report_cycles_and_upward_imports(tmp_path: Path) -> None:
    def edge(a: str, b: str) -> Import:
        return Import(a, b, tmp_path, 1)

    edges = [
        edge("frameserve.shots.run", "frameserve.cli.progress"),
        edge("frameserve.cli.progress", "frameserve.shots.run"),
        edge("frameserve.cli.main", "frameserve.shots.run"),
        edge("frameserve.client._client", "frameserve.plugin.model"),
        edge("frameserve.robots.arm", "frameserve.errors"),
    ]
    cycles = find_cycles(edges)
    assert [[(e.importer, e.imported) for e in cycle] for cycle in cycles] == [
        [
            ("frameserve.cli.progress", "frameserve.shots.run"),
            ("frameserve.shots.run", "frameserve.cli.progress"),
        ]
    ]
    upward = layer_violations(edges)
    assert len(upward) == 2
    assert "shots (layer 5) must not import cli (layer 7)" in upward[0]
    assert "'robots' has no layer" in upward[1]
    assert len(client_violations(edges)) == 1


def test_the_package_has_modules_and_imports() -> None:
    modules = package_modules()
    assert {"frameserve", "frameserve.errors", "frameserve.engine.runner"} <= set(modules)
    assert any(i.imported == "frameserve.errors" for i in all_imports())


# -- the package -------------------------------------------------------------------------------


def test_no_import_cycles() -> None:
    cycles = find_cycles(list(all_imports()))
    details = [
        " -> ".join([cycle[0].importer] + [e.imported for e in cycle])
        + "".join(f"\n    {e}" for e in cycle)
        for cycle in cycles
    ]
    if cycles:
        pytest.fail(_report("import cycles", details), pytrace=False)


def test_lower_layers_never_import_higher_ones() -> None:
    problems = layer_violations(list(all_imports()))
    if problems:
        pytest.fail(_report("imports of a higher layer", problems), pytrace=False)


def test_client_imports_only_itself_and_errors() -> None:
    problems = client_violations(list(all_imports()))
    if problems:
        pytest.fail(_report("client/ imports from outside", problems), pytrace=False)


def test_every_package_starts_with_a_docstring() -> None:
    builtin_models = PACKAGE_ROOT / "builtin_models"
    missing = []
    for path in sorted(PACKAGE_ROOT.rglob("__init__.py")):
        if path.parent.parent == builtin_models:  # a built-in model's own folder
            continue
        docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        if not docstring or not docstring.strip():
            missing.append(str(path.relative_to(REPO)))
    if missing:
        pytest.fail(
            _report("package __init__.py files without a docstring", missing), pytrace=False
        )


def test_no_module_is_over_500_lines() -> None:
    long = []
    for name, path in package_modules().items():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES:
            long.append(f"{path.relative_to(REPO)}: {lines} lines ({name})")
    if long:
        pytest.fail(_report(f"modules over {MAX_LINES} lines", long), pytrace=False)

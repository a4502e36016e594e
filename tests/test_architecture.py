"""The architecture, checked from the import graph: no cycles, one-way layers, knowledge apart.

The graph is recomputed here with grimp (the engine behind import-linter), function-level and
``TYPE_CHECKING`` imports included, so an import tucked inside a function cannot hide a cycle.
The layers are read from ``[tool.importlinter]`` in pyproject.toml, the same contract
``lint-imports`` checks in CI.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("relay", "knowledge", cache_dir=None)


def _edges(graph: grimp.ImportGraph, prefix: str) -> dict[str, set[str]]:
    modules = [m for m in graph.modules if m == prefix or m.startswith(prefix + ".")]
    return {
        m: {
            d
            for d in graph.find_modules_directly_imported_by(m)
            if d == prefix or d.startswith(prefix + ".")
        }
        for m in modules
    }


def _cycles(edges: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _layers() -> list[list[tuple[str, bool]]]:
    """The layers contract as [[(package, optional), ...], ...], top first."""
    contracts = PYPROJECT["tool"]["importlinter"]["contracts"]
    [layers] = [c["layers"] for c in contracts if c["type"] == "layers"]
    parsed = []
    for layer in layers:
        members = []
        for raw in layer.split("|"):
            name = raw.strip()
            optional = name.startswith("(") and name.endswith(")")
            members.append((name.strip("()"), optional))
        parsed.append(members)
    return parsed


def _top(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_the_cycle_finder_finds_a_cycle() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(edges) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_of_relay_is_in_an_import_cycle(graph: grimp.ImportGraph) -> None:
    cycles = _cycles(_edges(graph, "relay"))
    assert cycles == [], "import cycles (function-level imports included):\n" + "\n".join(
        " -> ".join(c) for c in cycles
    )


def test_knowledge_imports_nothing_of_relay(graph: grimp.ImportGraph) -> None:
    offenders = sorted(
        (m, d)
        for m in graph.modules
        if m.split(".")[0] == "knowledge"
        for d in graph.find_modules_directly_imported_by(m)
        if d.split(".")[0] == "relay"
    )
    assert offenders == []


def test_every_package_of_relay_has_a_layer(graph: grimp.ImportGraph) -> None:
    placed = {name for layer in _layers() for name, _ in layer}
    children = {c for c in graph.find_children("relay")}
    assert children - placed == set(), "add these to the layers in pyproject.toml"
    missing = {n for layer in _layers() for n, optional in layer if not optional} - children
    assert missing == set()


def test_imports_go_down_the_layers(graph: grimp.ImportGraph) -> None:
    """The contract ``lint-imports`` checks, recomputed: lower never imports higher or a sibling."""
    level = {name: n for n, layer in enumerate(_layers()) for name, _ in layer}
    wrong = sorted(
        f"{importer} imports {imported}"
        for importer, targets in _edges(graph, "relay").items()
        for imported in targets
        if _top(importer) != _top(imported)
        and _top(importer) in level
        and _top(imported) in level
        and level[_top(importer)] >= level[_top(imported)]
    )
    assert wrong == []


def test_ci_runs_the_static_checks_before_the_tests() -> None:
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    steps = [
        "ruff check relay knowledge tests",
        "ruff format --check relay knowledge tests",
        "mypy",
        "lint-imports",
        "python -m pytest",
    ]
    lines = [line.strip() for line in script.splitlines()]
    positions = [lines.index(step) for step in steps]
    assert positions == sorted(positions)
    assert "set -euo pipefail" in lines

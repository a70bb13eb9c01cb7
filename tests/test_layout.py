"""The house's floors (../shared/STYLE.md): every import of ours points down or across, never up, and
no two modules import each other at load time.

    mesh.core                  money, clock, records, budget, escrow, errors, ids, sharding
    ledger                     events, formats, readers, replay, verify, reports
    mesh.booth, mesh.columnar  the in-process booth; the shard book as arrays
    mesh.calls                 agents, messages, results, columns of calls, the mesh's config
    actors                     shards, coordinator, hosts, writers
    mesh (the rest)            the mesh API, simulation, x402, cluster, CLI

The check reads the source (``ast``): an import inside a function counts as much as one at the top
(it runs sooner or later), one under ``if TYPE_CHECKING:`` does not (it never runs).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("mesh", "ledger", "actors")
FLOORS = [("mesh.core",), ("ledger",), ("mesh.booth", "mesh.columnar"), ("mesh.calls",), ("actors",)]
TOP = len(FLOORS)  # every other module of ours: mesh and its remaining subpackages


def floor_of(module: str) -> int:
    for level, prefixes in enumerate(FLOORS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return level
    return TOP


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, *, at_load: bool) -> list[tuple[int, str]]:
    """``(line, module)`` for every import of ours; ``at_load``: only those that run when the module loads."""
    found: list[tuple[int, str]] = []
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if at_load and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.append((node.lineno, full if full in MODULES else base))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    ours = []
    for line, target in found:
        while target not in MODULES and "." in target:
            target = target.rpartition(".")[0]
        if target in MODULES and target != module:
            ours.append((line, target))
    return ours


def _trees() -> dict[str, ast.AST]:
    return {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


TREES = _trees()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module: str) -> None:
    level = floor_of(module)
    upward = [f"line {line}: {target}" for line, target in _imports(TREES[module], module, at_load=False)
              if floor_of(target) > level]
    assert not upward, f"{module} (floor {level}) imports from a floor above it: {upward}"


def test_core_imports_nothing_of_ours_outside_it() -> None:
    outside = {m: [t for _, t in _imports(TREES[m], m, at_load=False) if floor_of(t) != 0]
               for m in MODULES if floor_of(m) == 0}
    assert not any(outside.values()), outside


def test_no_import_cycles_at_load() -> None:
    graph = {m: {t for _, t in _imports(TREES[m], m, at_load=True)} for m in MODULES}
    cycles = _cycles(graph)
    assert not cycles, f"modules that import each other when they load: {cycles}"


def test_the_check_sees_a_cycle_and_an_upward_import() -> None:
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    assert floor_of("mesh.core.money") < floor_of("ledger.verify") < floor_of("actors.coordinator") < floor_of("mesh.cli")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
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
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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

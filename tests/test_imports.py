"""The proxy's import graph, read from its source with `ast`: no module imports itself
back (however it imports), and the request's bookkeeping (usage events, metrics, client
connections) does not depend on the relay."""

from __future__ import annotations

import ast
import gc
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "proxy"
# What reads an outcome or serves connections must not reach into how answers are relayed.
NOT_ON_RELAY = ("proxy.usage", "proxy.metrics", "proxy.connection")
RELAY = "proxy.relay"

Graph = dict[str, set[str]]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((ROOT / PACKAGE).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(
    node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]
) -> set[str]:
    """The proxy modules an import statement names (a `from x import y` names x.y when
    y is a module)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            parent = module.split(".")
            parent = parent[: len(parent) - node.level + (1 if is_package else 0)]
            base = ".".join([*parent, base] if base else parent)
        names = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known]
        names = names or [base]
    return {name for name in names if name in known}


def _parsed(modules: dict[str, Path]) -> dict[str, ast.Module]:
    """Each module's syntax tree, with the garbage collector held: CPython 3.11 keeps
    the AST constructor's recursion depth in state every thread shares (gh-106905),
    and a collection in the middle of a parse runs finalizers, Python code during which
    another thread (a test's server) may parse too, so that this parse ends on the
    other's depth and raises "AST constructor recursion depth mismatch"."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        return {name: ast.parse(path.read_text(), str(path)) for name, path in modules.items()}
    finally:
        if collecting:
            gc.enable()


def import_graph(load_time_only: bool) -> Graph:
    """Edges module -> module it imports. `load_time_only`: only what runs when the
    module is imported (top-level statements, not `if TYPE_CHECKING:` blocks nor
    imports inside functions); else every import written anywhere."""
    modules = _modules()
    known = set(modules)
    graph: Graph = {}
    trees = _parsed(modules)
    for name, path in modules.items():
        tree = trees[name]
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        pending: list[ast.AST] = list(tree.body) if load_time_only else [tree]
        while pending:
            node = pending.pop()
            if isinstance(node, ast.Import | ast.ImportFrom):
                edges |= _targets(node, name, is_package, known)
            elif load_time_only:
                if isinstance(node, ast.If) and _is_type_checking(node):
                    pending.extend(node.orelse)
                elif isinstance(node, ast.If | ast.Try | ast.With):
                    pending.extend(ast.iter_child_nodes(node))
            else:
                pending.extend(ast.iter_child_nodes(node))
        # Importing a module runs its packages' `__init__` first: the importer reads
        # them too, but for its own packages, which are being initialised already.
        own = {name.rsplit(".", n)[0] for n in range(1, name.count(".") + 1)}
        if is_package:
            own.add(name)
        edges |= {
            parent
            for target in edges
            for n in range(1, target.count(".") + 1)
            if (parent := target.rsplit(".", n)[0]) in known and parent not in own
        }
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: Graph) -> list[str] | None:
    """One cycle of the graph as the modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_is_read_from_the_source() -> None:
    everything = import_graph(load_time_only=False)
    at_load = import_graph(load_time_only=True)
    assert RELAY in everything["proxy.handlers"]
    assert (
        "proxy.usage.event" in everything["proxy.usage.pipeline"]
    )  # `from proxy.usage import event`
    # cli imports the application inside a function: written, but not at load time.
    assert "proxy.app" in everything["proxy.cli"] and "proxy.app" not in at_load["proxy.cli"]
    # Reading a module of a package runs the package's `__init__`, which imports more.
    assert "proxy.usage" in at_load["proxy.cloud_budget"]
    # profiler names the metrics for type checking only.
    assert "proxy.metrics" in everything["proxy.profiler"]
    assert "proxy.metrics" not in at_load["proxy.profiler"]


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_module_imports_itself_back() -> None:
    """Not at load time, nor for type checking, nor inside a function: the modules
    read in one direction."""
    assert find_cycle(import_graph(load_time_only=False)) is None


@pytest.mark.parametrize("prefix", NOT_ON_RELAY)
def test_outcome_readers_and_connections_do_not_import_the_relay(prefix: str) -> None:
    graph = import_graph(load_time_only=False)
    importers = [
        name
        for name, edges in graph.items()
        if (name == prefix or name.startswith(prefix + ".")) and RELAY in edges
    ]
    assert importers == []

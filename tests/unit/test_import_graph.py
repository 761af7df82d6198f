"""No import cycle in `sidecar/` or `ca_client/`, no module over 800 lines (issue 18, "Done when").

Every module's imports are read with `ast`, at any depth: those under ``if TYPE_CHECKING:``
count too, since a module that names the whole of another one's object in its annotations is
tied to it as surely as one that imports it to run. A cycle is a strongly connected set of two
or more modules (or a module importing itself); the test names each such set.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("sidecar", "ca_client")

# None left: the last one, config.py <-> preflight.py, went with issue 18 item 5.
KNOWN_CYCLES: frozenset[frozenset[str]] = frozenset()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for package in PACKAGES
        for path in sorted((REPO_ROOT / package).rglob("*.py"))
    }


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ``from ... import`` names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    # A package's own module is its __init__: ``.`` is the package itself.
    drop = node.level - 1 if is_package else node.level
    base = base[: len(base) - drop] if drop else base
    return ".".join([*base, node.module] if node.module else base)


def imports_of(module: str, path: Path, known: Iterable[str]) -> set[str]:
    """The modules of ``known`` that ``module`` imports, anywhere in its source."""
    known = set(known)
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def add(name: str) -> None:
        # ``import a.b.c`` loads a, a.b and a.b.c; the deepest one known is the one depended on.
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name:
            found.add(name)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, is_package, node)
            for alias in node.names:
                # ``from sidecar import wiring`` imports the module sidecar.wiring.
                submodule = f"{target}.{alias.name}"
                add(submodule if submodule in known else target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: Mapping[str, set[str]]) -> list[frozenset[str]]:
    """Tarjan's strongly connected components of two or more modules, or with a self-loop."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_type_checking_imports_and_package_imports() -> None:
    graph = import_graph()
    # A plain import, a ``from package import module`` and a TYPE_CHECKING-only import.
    assert "sidecar.wiring" in graph["sidecar.service"]
    assert "ca_client.errors" in graph["ca_client.transport"]
    assert "sidecar.config" in graph["sidecar.manager"]


def test_cycles_are_found_through_type_checking_back_references() -> None:
    # The shape issue 18 measured: a part that imports its owner only for annotations.
    graph = {"a.owner": {"a.part"}, "a.part": {"a.owner"}, "a.leaf": set()}
    assert cycles(graph) == [frozenset({"a.owner", "a.part"})]
    assert cycles({"a.x": {"a.x"}}) == [frozenset({"a.x"})]
    assert cycles({"a.x": {"a.y"}, "a.y": set()}) == []


def test_no_import_cycles_in_sidecar_or_ca_client() -> None:
    found = [cycle for cycle in cycles(import_graph()) if cycle not in KNOWN_CYCLES]
    assert not found, "import cycles: " + "; ".join(" <-> ".join(sorted(cycle)) for cycle in found)


def test_no_module_is_over_800_lines() -> None:
    """Issue 18, "Done when": a file past 800 lines holds more than one concept; split it."""
    long = {
        name: count
        for name, path in _modules().items()
        if (count := len(path.read_text(encoding="utf-8").splitlines())) > 800
    }
    assert not long, f"split these: {long}"

"""The import graph of the `adaptflow` package, read from the source (nothing is imported), for the layering
contracts in tests/test_contracts.py.

Every `import` statement of every module is an edge, with where it is written (file:line) and when it runs:
- `module`: at import time (module body, class bodies, `if`/`try` blocks at the top level);
- `function`: inside a function, when it is called (deferred imports: the CLI's, or heavy libraries');
- `typing`: under `if TYPE_CHECKING:`, never at run time;
- `script`: under `if __name__ == "__main__":`, run only by the file as a script (`python -m`), which is then
  the module `__main__`, not the module by its name.
Importing `a.b.c` runs the packages `a` and `a.b` first: those are edges too (but not the importer's own
packages, which are already importing).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

PACKAGE = "adaptflow"


@dataclass(frozen=True)
class Edge:
    source: str  # the importing module
    target: str  # the imported module (or, outside adaptflow, the dotted name as written)
    where: str  # path:line
    when: str  # "module", "function", "typing" or "script"

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} ({self.where}, {self.when} level)"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules(root: Path) -> dict[str, Path]:
    """Every module of the package under `root` (a package by its own name), by dotted name."""
    return {module_name(path, root): path for path in sorted((root / PACKAGE).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _is_main_guard(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators))


def _statements(tree: ast.Module) -> list[tuple[ast.stmt, str]]:
    """Every import statement with when it runs."""
    found: list[tuple[ast.stmt, str]] = []

    def visit(node: ast.AST, when: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append((child, when))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, "function" if when == "module" else when)
            elif isinstance(child, ast.If) and (_is_type_checking(child) or _is_main_guard(child)):
                for stmt in child.body:
                    visit(ast.Module(body=[stmt], type_ignores=[]), "typing" if _is_type_checking(child) else "script")
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]), when)
            else:
                visit(child, when)

    visit(tree, "module")
    return found


def _resolve(name: str, known: dict[str, Path]) -> str:
    """`name` as the deepest module of the package it names (`adaptflow.io.read_json` -> `adaptflow.io`)."""
    while name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def edges(root: Path) -> list[Edge]:
    """Every import of every adaptflow module, as edges (adaptflow targets resolved to their modules)."""
    known = modules(root)
    found: list[Edge] = []
    for source, path in known.items():
        is_package = path.name == "__init__.py"
        where = path.relative_to(root)
        for node, when in _statements(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: from the importer's package
                    package = source.split(".") if is_package else source.split(".")[:-1]
                    package = package[: len(package) - (node.level - 1)]
                    base = ".".join([*package, *([base] if base else [])])
                # `from pkg import sub` imports the module pkg.sub where there is one
                names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
            for name in dict.fromkeys(names):
                if name == PACKAGE or name.startswith(PACKAGE + "."):
                    target = _resolve(name, known)
                    parents = [".".join(target.split(".")[:i]) for i in range(2, target.count(".") + 1)]
                    ancestors = {".".join(source.split(".")[:i]) for i in range(1, source.count(".") + 2)}
                    for imported in [*parents, target]:
                        if imported != source and imported not in ancestors:
                            found.append(Edge(source, imported, f"{where}:{node.lineno}", when))
                else:
                    found.append(Edge(source, name, f"{where}:{node.lineno}", when))
    return found


def cycles(graph: list[Edge]) -> list[tuple[list[Edge], set[str]]]:
    """Each group of modules that import each other (a strongly connected component): the shortest cycle
    through its first module, as the chain of edges that closes it, and all the group's modules."""
    out: dict[str, dict[str, Edge]] = {}
    for edge in graph:
        out.setdefault(edge.source, {}).setdefault(edge.target, edge)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in out.get(node, {}):
            if target not in index:
                connect(target)
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
            if len(component) > 1:
                components.append(component)

    for node in sorted(out):
        if node not in index:
            connect(node)
    return sorted(((_shortest_cycle(component, out), component) for component in components), key=lambda found: len(found[0]))


def _shortest_cycle(component: set[str], out: dict[str, dict[str, Edge]]) -> list[Edge]:
    """The shortest chain of edges inside `component` from its first module back to itself."""
    start = min(component)
    paths: dict[str, list[Edge]] = {start: []}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target, edge in sorted(out.get(node, {}).items()):
                if target == start:
                    return [*paths[node], edge]
                if target in component and target not in paths:
                    paths[target] = [*paths[node], edge]
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # a strongly connected component always has one


def chain(cycle: list[Edge]) -> str:
    """`a -> b -> a`, with where each import is written."""
    return " -> ".join([cycle[0].source, *(f"{e.target} [{e.where}{'' if e.when == 'module' else ', ' + e.when}]" for e in cycle)])

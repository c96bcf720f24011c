"""The package's layering: no import runs up the layer order of docs/architecture.md, and no import cycles.

The import graph is read with `ast` from every module under ``spatial_probing/``: every ``import`` and
``from ... import`` statement counts, at module level, inside functions and under ``TYPE_CHECKING``
alike; ``from spatial_probing.x import y`` imports the submodule ``spatial_probing.x.y`` when there is one.
The layer order lives in one place: the ``layers`` block of docs/architecture.md (lowest first; each line
names the top-level modules and packages of one layer). ``python tests/test_layers.py`` prints the counts.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "spatial_probing"
ROOT = "spatial_probing"


def layer_order() -> list[list[str]]:
    """The ``layers`` block of docs/architecture.md: per layer (lowest first), its top-level names."""
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    block = re.search(r"^```layers\n(.*?)^```", text, flags=re.S | re.M)
    assert block, "docs/architecture.md has no ```layers block"
    lines = (line.split("#", 1)[0].split() for line in block.group(1).splitlines())
    return [names for names in lines if names]


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its ``__init__``)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (each resolved to the most specific module that exists)."""
    mods = modules()
    graph: dict[str, set[str]] = {name: set() for name in mods}
    for name, path in mods.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolve against this module's package
                    anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in mods else base for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in mods:  # `import a.b.c` of a non-module name: its module
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def layer_of(module: str, order: list[list[str]]) -> int:
    """Index in ``order`` of the layer holding ``module`` (the root package's ``__init__`` is ``__init__``)."""
    top = module.split(".")[1] if "." in module else "__init__"
    for index, names in enumerate(order):
        if top in names:
            return index
    raise AssertionError(f"{module} ({top}) is in no layer of docs/architecture.md's ```layers block")


def upward_imports(graph: dict[str, set[str]], order: list[list[str]]) -> list[str]:
    """``a -> b`` for every import of a module from a higher layer."""
    return [f"{a} ({order[layer_of(a, order)][0]}) -> {b} ({order[layer_of(b, order)][0]})"
            for a in sorted(graph) for b in sorted(graph[a]) if layer_of(b, order) > layer_of(a, order)]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def summary() -> tuple[list[str], list[list[str]], str]:
    graph = import_graph()
    up, loops = upward_imports(graph, layer_order()), cycles(graph)
    counts = (f"{len(graph)} modules, {sum(map(len, graph.values()))} import edges: "
              f"{len(up)} upward imports, {len(loops)} cycles")
    return up, loops, counts


def test_graph_sees_every_kind_of_import():
    graph = import_graph()
    assert "spatial_probing.cli.fit" in graph["spatial_probing.cli"]  # function-level import
    assert "spatial_probing.data.rows" in graph["spatial_probing.data.vsr"]  # from ... import name
    assert "spatial_probing.features.store" in graph["spatial_probing.features.extract"]


def test_layers():
    up, loops, counts = summary()
    print(counts)
    problems = [f"upward import: {edge}" for edge in up] + [f"cycle: {' <-> '.join(c)}" for c in loops]
    assert not problems, counts + "\n" + "\n".join(problems)


if __name__ == "__main__":
    up, loops, counts = summary()
    print("\n".join([*(f"upward import: {e}" for e in up), *(f"cycle: {' <-> '.join(c)}" for c in loops), counts]))

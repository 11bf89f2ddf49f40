"""Print the import cycles among the modules of emulator and vmstate as JSON.

Run as a script with the tree to check first on sys.path; every import is
counted, those under ``if TYPE_CHECKING:`` included.  A cycle is a strongly
connected component of two or more modules (Tarjan).
"""

from __future__ import annotations

import json
import sys

import grimp


def import_cycles() -> list[list[str]]:
    graph = grimp.build_graph("emulator", "vmstate", exclude_type_checking_imports=False)
    modules = sorted(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m) & set(modules)) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
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
                cycles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for m in modules:
        if m not in index:
            visit(m)
    return cycles


if __name__ == "__main__":
    json.dump(import_cycles(), sys.stdout)

"""Cycle finding over name graphs (role inclusion, group membership)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence


def cycles(graph: Mapping[str, Sequence[str]]) -> Iterator[list[str]]:
    """Yield each distinct cycle once, as a path that ends where it starts.

    Iterative depth-first search: graphs come from user input and may be long chains.
    Edges to nodes outside the graph are ignored.
    """
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    seen: set[frozenset[str]] = set()
    for start in graph:
        if state.get(start):
            continue
        stack: list[tuple[str, int]] = [(start, 0)]
        path: list[str] = []
        while stack:
            node, i = stack.pop()
            if i == 0:
                state[node] = 1
                path.append(node)
            edges = [n for n in graph[node] if n in graph]
            if i < len(edges):
                stack.append((node, i + 1))
                nxt = edges[i]
                if state.get(nxt) == 1:
                    cycle = path[path.index(nxt) :] + [nxt]
                    key = frozenset(cycle)
                    if key not in seen:
                        seen.add(key)
                        yield cycle
                elif not state.get(nxt):
                    stack.append((nxt, 0))
            else:
                state[node] = 2
                path.pop()

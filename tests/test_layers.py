"""The import graph: no cycle, no upward import, write path and live streaming apart.

Layers, top to bottom: ``server`` (the edge) → ``runtime`` (the composition root) →
``actors`` → ``storage``. A module imports only from its own layer or below;
``chat_storage.supervisor`` and ``chat_storage.tracing`` are below them all. Every
import counts, also one inside a function or under ``TYPE_CHECKING``: a cycle hidden in
a function is still a cycle.
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Iterator
from pathlib import Path

import chat_storage

ROOT = Path(chat_storage.__file__).parent
PACKAGE = "chat_storage"
LAYERS = {"supervisor": 0, "tracing": 0, "tracing_setup": 0, "storage": 1, "actors": 2,
          "runtime": 3, "server": 4}
APART = ("chat_storage.actors.write", "chat_storage.actors.live")


def modules() -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    out: dict[str, Path] = {}
    # the layers are links in chat_storage/ (see pyproject.toml): follow them
    paths = [Path(d, f) for d, _, files in os.walk(ROOT, followlinks=True)
             for f in files if f.endswith(".py")]
    for path in sorted(paths):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join((PACKAGE, *parts))] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> Iterator[str]:
    """The package's modules that ``name`` imports (``from x import y``: ``x.y`` if a module)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] in ("server", "actors", "storage", "runtime"):
                yield target  # a bare top-level name: always wrong, reported below
            elif target in known:
                yield target


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: set(imports(name, path, set(found))) - {name}
            for name, path in found.items()}


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_no_module_imports_a_top_level_folder_name() -> None:
    bare = {(m, t) for m, ts in graph().items() for t in ts if not t.startswith(PACKAGE)}
    assert bare == set()


def test_no_upward_import() -> None:
    upward = sorted(
        (m, t) for m, ts in graph().items() for t in ts
        if (lm := layer(m)) is not None and (lt := layer(t)) is not None and lt > lm
    )
    assert upward == []


def test_write_path_and_live_streaming_do_not_import_each_other() -> None:
    crossing = sorted(
        (m, t) for m, ts in graph().items() for t in ts
        for a, b in (APART, APART[::-1]) if m.startswith(a) and t.startswith(b)
    )
    assert crossing == []


def test_routes_import_no_other_route() -> None:
    prefix = "chat_storage.server.routes."
    crossing = sorted((m, t) for m, ts in graph().items() if m.startswith(prefix)
                      for t in ts if t.startswith(prefix))
    assert crossing == []


def test_no_import_cycle() -> None:
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    assert cycles == []


def test_the_checks_see_the_whole_package() -> None:
    found = graph()
    assert "chat_storage.server.app" in found and "chat_storage.storage.db" in found
    assert "chat_storage.runtime.settings" in found["chat_storage.server.app"]


def test_only_the_supervisor_creates_tasks() -> None:
    """Every background task has one owner (chat_storage.supervisor), which logs and
    counts its death; a bare create_task would be a task nobody answers for."""
    bare = []
    for name, path in modules().items():
        if name == "chat_storage.supervisor":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("create_task", "ensure_future")):
                bare.append(f"{name}:{node.lineno}")
    assert bare == []


SQL = re.compile(r"\b(SELECT|INSERT INTO|UPDATE \w+ SET|DELETE FROM|pg_\w+lock)\b")


def test_all_sql_lives_in_storage() -> None:
    """Queries, advisory locks included, are storage's: no other layer holds SQL text."""
    found = []
    for name, path in modules().items():
        if name.startswith("chat_storage.storage"):
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef
                                    | ast.AsyncFunctionDef)
                      and n.body and isinstance(n.body[0], ast.Expr)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and id(node) not in docstrings and SQL.search(node.value)):
                found.append(f"{name}:{node.lineno}")
    assert found == []

"""Which frame types the server's source can send, read from its syntax tree.

A census rather than a run: it also sees the frames no test happens to provoke, so a
new kind of reply that the AsyncAPI document lacks fails ``test_asyncapi`` at once.
"""

from __future__ import annotations

import ast
import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import chat_storage


def _package_modules() -> Iterator[tuple[Path, ast.Module]]:
    root = Path(chat_storage.__file__).resolve().parent
    for folder, _, files in os.walk(root, followlinks=True):
        for name in files:
            if name.endswith(".py"):
                path = Path(folder) / name
                yield path, ast.parse(path.read_text(), str(path))


# modules that read events but write another protocol's parts, documented in
# /openapi.json rather than /asyncapi.json: the AI SDK's UI message stream
OTHER_PROTOCOLS = frozenset({"uistream"})


def _builds_frames(path: Path, tree: ast.Module) -> bool:
    """The frame modules themselves, and every module that imports one of them."""
    if path.stem in OTHER_PROTOCOLS:
        return False
    if path.stem in ("events", "frames"):
        return True
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = {a.name for a in node.names}
            if node.module.endswith((".events", ".frames")) or names & {"events", "frames"}:
                return True
    return False


@dataclasses.dataclass
class Census:
    """Frame types read from the source, and the sites whose type could not be read."""

    kinds: set[str] = dataclasses.field(default_factory=set)
    unknown: list[str] = dataclasses.field(default_factory=list)

    def resolve(self, expr: ast.expr, scope: Scope, site: str) -> set[str]:
        """The strings ``expr`` can be: a literal, a constant, or a lookup in a dict of them."""
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            return {expr.value}
        if isinstance(expr, ast.Name):
            if expr.id in scope.local:
                return self.resolve(scope.local[expr.id], scope.module(), site)
            if expr.id in scope.params and scope.forwarding:
                return set()  # reply() handing its argument on: counted at its callers
            if expr.id in scope.consts:
                return self.resolve(scope.consts[expr.id], scope.module(), site)
        if isinstance(expr, ast.Subscript) and isinstance(expr.value, ast.Name):
            table = scope.consts.get(expr.value.id)
            if isinstance(table, ast.Dict):
                return set().union(*(self.resolve(v, scope.module(), site)
                                     for v in table.values))
        self.unknown.append(site)
        return set()


@dataclasses.dataclass
class Scope:
    consts: dict[str, ast.expr]
    local: dict[str, ast.expr] = dataclasses.field(default_factory=dict)
    params: set[str] = dataclasses.field(default_factory=set)
    forwarding: bool = False

    def module(self) -> Scope:
        return Scope(self.consts)


def _assignments(nodes: Iterator[ast.AST]) -> dict[str, ast.expr]:
    return {node.targets[0].id: node.value for node in nodes
            if isinstance(node, ast.Assign) and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)}


def sent_frame_types() -> Census:
    """Every frame type the server's source can send, read from its syntax tree.

    Sites: a ``reply``/``_reply`` call's first argument, and the ``"type"`` of a dict
    literal encoded with ``dumps`` (directly or through a local variable).
    """
    census = Census()
    for path, tree in _package_modules():
        if not _builds_frames(path, tree):
            continue
        consts = _assignments(iter(tree.body))
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            scope = Scope(consts, _assignments(ast.walk(func)),
                          {a.arg for a in func.args.args + func.args.kwonlyargs},
                          func.name in ("reply", "_reply"))
            for node in ast.walk(func):
                if not isinstance(node, ast.Call) or not node.args:
                    continue
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                site = f"{path.name}:{node.lineno}"
                arg = node.args[0]
                if name in ("reply", "_reply"):
                    census.kinds |= census.resolve(arg, scope, site)
                elif name == "dumps":
                    if isinstance(arg, ast.Name) and isinstance(scope.local.get(arg.id), ast.Dict):
                        arg = scope.local[arg.id]
                    if isinstance(arg, ast.Dict):
                        for key, value in zip(arg.keys, arg.values, strict=True):
                            if isinstance(key, ast.Constant) and key.value == "type":
                                census.kinds |= census.resolve(value, scope, site)
    return census

"""The dependency rules, read from the source: no import cycle among ``protocol/`` and ``server/``
(imports inside functions count), ``protocol/`` free of I/O, and the Redis clients behind the
store's adapters."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("protocol", "server")
IO_LIBRARIES = {"asyncio", "starlette", "uvicorn", "redis", "fakeredis", "hiredis", "openai", "websockets", "socket"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")}


def imported(path: Path) -> Iterator[str]:
    """Every module name ``path`` imports, anywhere in it (functions included)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def graph() -> dict[str, set[str]]:
    """Module -> the project's modules it imports."""
    known = modules()
    return {name: {target for target in imported(path) if target in known} - {name} for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_there_is_no_import_cycle_among_protocol_and_server() -> None:
    assert cycles(graph()) == []


def test_the_check_finds_a_cycle_through_a_lazy_import() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_a_lazy_import_is_seen(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from server.settings import Settings\n    import protocol.names\n")
    assert set(imported(source)) >= {"server.settings", "server.settings.Settings", "protocol.names"}


@pytest.mark.parametrize("name", sorted(name for name in modules() if name.startswith("protocol")))
def test_protocol_is_pure(name: str) -> None:
    roots = {target.split(".")[0] for target in imported(modules()[name])}
    assert not roots & (IO_LIBRARIES | {"server"})


def test_only_the_redis_adapter_uses_the_lean_client() -> None:
    users = {name for name, path in modules().items() if "server.store.resp" in set(imported(path))}
    assert users == {"server.store.redis_store"}


def test_only_the_store_adapters_import_a_redis_client() -> None:
    users = {name for name, path in modules().items()
             if {target.split(".")[0] for target in imported(path)} & {"redis", "fakeredis", "hiredis"}}
    assert users == {"server.store.redis_store", "server.store.cluster", "server.store.embedded", "server.store.resp"}

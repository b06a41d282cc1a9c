"""protocol/ is free of I/O: no module of it imports asyncio, Starlette, Redis, OpenAI or the server."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import protocol

PACKAGE = Path(protocol.__file__).parent
FORBIDDEN = {"asyncio", "starlette", "redis", "openai", "uvicorn", "websockets", "httpx", "server", "socket"}


@pytest.mark.parametrize("module", sorted(PACKAGE.glob("*.py")), ids=lambda path: path.name)
def test_protocol_modules_import_no_io(module: Path) -> None:
    imported = set()
    for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN

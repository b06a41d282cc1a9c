"""The client package stands alone: it may use protocol/, never the server."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_imports import ROOT, imported

CLIENT_MODULES = sorted((ROOT / "client").rglob("*.py"))


@pytest.mark.parametrize("path", CLIENT_MODULES, ids=lambda path: path.name)
def test_the_client_imports_nothing_of_the_server(path: Path) -> None:
    roots = {target.split(".")[0] for target in imported(path)}
    assert "server" not in roots
    assert not roots & {"redis", "starlette", "uvicorn", "openai", "fakeredis"}


def test_the_client_has_modules() -> None:
    assert len(CLIENT_MODULES) >= 4

"""Unit tests are pure: no sockets, no subprocesses. ``pytest tests/unit`` runs on a machine with no
Redis, no Node and no Chromium, in seconds.

The rule is enforced: while a unit test runs (its fixtures included), connecting or binding a socket,
or starting a process, fails it. A test that needs any of those belongs outside ``tests/unit``.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest


class NotAUnitTest(AssertionError):
    """A unit test reached for the network or another process."""


def _refuse(what: str) -> Any:
    def refuse(*args: Any, **kwargs: Any) -> NoReturn:
        raise NotAUnitTest(f"a unit test may not {what}: move it out of tests/unit (args: {args[1:]!r})")
    return refuse


UNIT = Path(__file__).parent


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    # Called for every test of the session once this conftest is loaded (pytest tests), not only for ours.
    if UNIT not in item.path.parents:
        return (yield)
    with pytest.MonkeyPatch.context() as patch:
        for name in ("connect", "connect_ex", "bind"):
            patch.setattr(socket.socket, name, _refuse(f"{name} a socket"))
        patch.setattr(subprocess.Popen, "__init__", _refuse("start a process"))
        return (yield)

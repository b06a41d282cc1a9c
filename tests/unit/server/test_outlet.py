"""Whether the direct write path is available, told without a connection (:func:`server.outlet.write_path`):
on under the installed uvicorn, which pyproject.toml pins, and off, with the reason, when uvicorn's
sans-I/O protocol lacks what the outlet uses."""

from __future__ import annotations

import asyncio
import tomllib
from importlib.metadata import version
from typing import Any

import pytest
from packaging.requirements import Requirement
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from server.outlet import DirectOutlet, WritePath, _unconnected, check_write_path, outlet_for, write_path
from tests.support.schemas import ROOT

UVICORN = ".".join(version("uvicorn").split(".")[:2])


def uvicorn_requirement() -> Requirement:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return next(r for r in map(Requirement, project["dependencies"]) if r.name == "uvicorn")


def test_uvicorn_is_pinned_below_a_minor_it_was_not_tested_with() -> None:
    assert any(spec.operator == "<" for spec in uvicorn_requirement().specifier)


def test_the_direct_path_is_on_under_the_installed_uvicorn_which_is_in_the_pinned_range() -> None:
    assert version("uvicorn") in uvicorn_requirement().specifier
    assert write_path() == WritePath(True, f"uvicorn {UVICORN} sans-I/O")
    assert str(write_path()) == f"direct (uvicorn {UVICORN} sans-I/O)"


def test_an_unconnected_protocol_has_what_the_outlet_uses() -> None:
    protocol = _unconnected(WebSocketsSansIOProtocol)
    assert outlet_for(protocol.send) is None  # no handshake yet
    protocol.handshake_complete = True
    assert isinstance(outlet_for(protocol.send), DirectOutlet)


def test_without_a_sans_io_protocol_the_asgi_send_is_used() -> None:
    path = check_write_path(None)
    assert not path.direct
    assert str(path) == f"ASGI send (uvicorn {UVICORN} has no sans-I/O WebSocket protocol)"


class WithoutWritable(WebSocketsSansIOProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        del self.writable


class WithoutSendText(WebSocketsSansIOProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = object()  # type: ignore[assignment]  # a websockets connection it is not


class WithAnotherWritable(WebSocketsSansIOProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.writable = asyncio.Condition()  # type: ignore[assignment]  # not the Event the outlet waits on


class WithPlainSend(WebSocketsSansIOProtocol):
    def send(self, message: Any) -> None:  # type: ignore[override]  # what the check is for
        pass


class Unbuildable(WebSocketsSansIOProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("a new signature")


@pytest.mark.parametrize(("protocol_class", "reason"), [
    (WithoutWritable, "sans-I/O protocol has no writable"),
    (WithoutSendText, "sans-I/O protocol has no conn.send_text, conn.data_to_send"),
    (WithAnotherWritable, "sans-I/O protocol's writable is not an asyncio.Event"),
    (WithPlainSend, "sans-I/O protocol has no send coroutine"),
    (Unbuildable, "sans-I/O protocol cannot be built: TypeError('a new signature')"),
])
def test_a_protocol_without_what_the_outlet_uses_turns_the_direct_path_off(protocol_class: type, reason: str) -> None:
    assert check_write_path(protocol_class) == WritePath(False, f"uvicorn {UVICORN}'s {reason}")

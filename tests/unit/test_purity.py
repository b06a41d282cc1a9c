"""The unit tests' guard: a unit test that reaches for a socket or a process fails."""

from __future__ import annotations

import asyncio
import socket
import subprocess

import pytest

from tests.unit.conftest import NotAUnitTest


def test_connecting_a_socket_fails_the_test() -> None:
    with socket.socket() as sock, pytest.raises(NotAUnitTest, match="connect a socket"):
        sock.connect(("127.0.0.1", 1))


def test_listening_fails_the_test() -> None:
    with socket.socket() as sock, pytest.raises(NotAUnitTest, match="bind a socket"):
        sock.bind(("127.0.0.1", 0))


async def test_asyncio_connections_fail_the_test() -> None:
    with pytest.raises(NotAUnitTest):
        await asyncio.open_connection("127.0.0.1", 1)


def test_starting_a_process_fails_the_test() -> None:
    with pytest.raises(NotAUnitTest, match="start a process"):
        subprocess.run(["true"], check=False)

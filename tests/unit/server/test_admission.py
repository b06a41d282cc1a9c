"""Admission's pure parts: which origins pass, how connections per address are counted."""

from __future__ import annotations

import pytest

from server.admission import ConnectionSlots, origin_allowed

ALLOWED = frozenset({"https://chat.example.com", "http://localhost:8080"})


@pytest.mark.parametrize("origin", [None, "https://chat.example.com", "HTTPS://Chat.Example.COM",
                                    "http://localhost:8080"])
def test_listed_origins_and_no_origin_pass(origin: str | None) -> None:
    assert origin_allowed(origin, ALLOWED)


@pytest.mark.parametrize("origin", ["https://evil.example.com", "http://chat.example.com", "https://chat.example.com:443",
                                    "https://chat.example.com.evil.example", "http://localhost", "null", ""])
def test_other_origins_are_refused(origin: str) -> None:
    assert not origin_allowed(origin, ALLOWED)


def test_any_origin_passes_when_none_are_listed() -> None:
    assert origin_allowed("https://anywhere.example", frozenset())


def test_an_address_holds_at_most_its_slots_and_gets_them_back() -> None:
    slots = ConnectionSlots(2)
    assert [slots.take("10.0.0.1") for _ in range(3)] == [True, True, False]
    assert slots.take("10.0.0.2")
    slots.release("10.0.0.1")
    assert slots.held("10.0.0.1") == 1
    assert slots.take("10.0.0.1")
    assert not slots.take("10.0.0.1")


def test_released_addresses_are_forgotten() -> None:
    slots = ConnectionSlots(1)
    slots.take("10.0.0.1")
    slots.release("10.0.0.1")
    slots.release("10.0.0.1")  # once too often: still nothing held, nothing negative
    assert slots.held("10.0.0.1") == 0
    assert slots.take("10.0.0.1")

from __future__ import annotations

import pytest

from protocol import is_valid_room, is_valid_stream_id


@pytest.mark.parametrize("room", ["room001", "a", "A-b_9", "x" * 64])
def test_valid_rooms(room: str) -> None:
    assert is_valid_room(room)


@pytest.mark.parametrize("room", ["", "x" * 65, "a b", "a/b", "room!", "ré", "a\n", "a.b", "a:b"])
def test_invalid_rooms(room: str) -> None:
    assert not is_valid_room(room)


@pytest.mark.parametrize("value", ["0", "0-0", "1700641234567-0", "1700641234567", "18446744073709551615-5"])
def test_valid_stream_ids(value: str) -> None:
    assert is_valid_stream_id(value)


@pytest.mark.parametrize("value", ["", "-", "1-", "-1", "01-0", "a-0", "1-0-0", "18446744073709551616-0", "$", "+"])
def test_invalid_stream_ids(value: str) -> None:
    assert not is_valid_stream_id(value)

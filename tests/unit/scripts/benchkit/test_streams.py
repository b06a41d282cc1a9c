"""The benchmark's check: each member's receipts against its room's stream."""

from __future__ import annotations

from benchkit.streams import Check

STREAM = [("1-0", "presence.join"), ("2-0", "chat.message"), ("3-0", "chat.message"), ("4-0", "chat.message")]


def checked(*received: list[str], accepted: int = 3) -> Check:
    check = Check()
    check.add_room("room", STREAM, list(received), accepted)
    return check


def test_members_that_received_every_entry_in_order_pass() -> None:
    check = checked(["1-0", "2-0", "3-0", "4-0"], ["2-0", "3-0", "4-0"])

    assert check.ok
    assert (check.members, check.stored, check.accepted) == (2, 4, 3)


def test_a_missing_entry_is_lost_but_entries_before_the_first_message_are_optional() -> None:
    check = checked(["2-0", "4-0"])

    assert (check.lost, check.duplicated, check.reordered, check.unknown) == (1, 0, 0, 0)
    assert not check.ok
    assert check.examples == [{"room": "room", "member": 0, "received": 2, "stored": 4,
                               "lost": 1, "duplicated": 0, "reordered": 0, "unknown": 0}]


def test_duplicates_reorders_and_unknown_ids_are_counted_apart() -> None:
    check = checked(["2-0", "3-0", "3-0", "9-0", "4-0"], ["2-0", "4-0", "3-0"])

    assert (check.lost, check.duplicated, check.reordered, check.unknown) == (0, 1, 1, 1)


def test_accepted_messages_missing_from_the_stream_are_unstored() -> None:
    check = checked(["2-0", "3-0", "4-0"], accepted=5)

    assert (check.lost, check.unstored, check.ok) == (0, 2, False)

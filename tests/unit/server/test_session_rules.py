"""When a resume's replay is complete: the rule, without I/O."""

from __future__ import annotations

import pytest

from server.session import Resume, cursor_of, replay_start
from server.store.ports import SessionInfo


def info(epoch: str | None = "e1", first: bytes | None = b"100-0", removed: int | None = 0,
         newest: bytes | None = b"200-0", kept: bool | None = None) -> SessionInfo:
    return SessionInfo(epoch, first, removed, [], newest_id=newest if first is not None else None, cursor_kept=kept)


@pytest.mark.parametrize(("resume", "room", "expected"), [
    (Resume("150-0", None), info(), ("(150-0", True)),
    (Resume("100-0", "e1"), info(), ("(100-0", True)),
    (Resume("99-5", None), info(removed=0), ("(99-5", False)),  # older than the oldest retained entry
    (Resume("99-5", None), info(removed=40), ("(99-5", False)),
    (Resume("150-0", "e0"), info(), ("-", False)),  # another epoch: the stream was recreated
    (Resume("0", None), info(removed=0), ("-", True)),
    (Resume("0", None), info(removed=7), ("-", False)),  # "everything" lost its oldest entries
    (Resume("0", None), info(removed=None), ("-", False)),
    (Resume("150-0", None), info(epoch=None, first=None), ("-", False)),  # no stream any more
    (Resume("0", None), info(epoch=None, first=None), ("-", True)),
    (Resume("150-0", "e1"), info(epoch=None, first=None), ("-", False)),
    (Resume("200-0", "e1"), info(), ("(200-0", True)),  # at the newest entry: nothing missed
    (Resume("200-1", "e1"), info(), ("-", False)),  # newer than the newest entry: entries were lost
    (Resume("300-0", None), info(), ("-", False)),
    (Resume("200-1", "e1"), info(removed=40), ("-", False)),
    (Resume("150-0", "e1"), info(newest=b"150-0"), ("(150-0", True)),
])
def test_replay_start(resume: Resume, room: SessionInfo, expected: tuple[str, bool]) -> None:
    assert replay_start(resume, room) == expected


@pytest.mark.parametrize(("resume", "room", "expected"), [
    (Resume("150-0", "e1"), info(kept=False), ("-", False)),  # lost, then newer entries were stored
    (Resume("150-0", None), info(kept=False, removed=40), ("-", False)),
    (Resume("150-0", "e1"), info(kept=True), ("(150-0", True)),  # still there: honoured
    (Resume("200-0", "e1"), info(kept=True), ("(200-0", True)),
    (Resume("99-5", None), info(kept=False), ("(99-5", False)),  # trimmed away: today's rule
    (Resume("100-0", None), info(kept=True), ("(100-0", True)),  # the oldest retained entry
    (Resume("0", None), info(kept=None), ("-", True)),
])
def test_a_cursor_whose_own_entry_the_stream_no_longer_holds_is_not_recovered(
        resume: Resume, room: SessionInfo, expected: tuple[str, bool]) -> None:
    """Entries lost with Redis (an older snapshot, a lagging replica) and new ones stored after: the
    cursor lies between the oldest and newest retained entries, but the stream does not hold it."""
    assert replay_start(resume, room) == expected


def test_the_cursor_checked_is_a_full_stream_id_and_none_for_everything() -> None:
    assert cursor_of(Resume("150-3", None)) == b"150-3"
    assert cursor_of(Resume("150", "e1")) == b"150-0"
    assert cursor_of(Resume("0", None)) is None and cursor_of(None) is None

"""When a resume's replay is complete: the rule, without I/O."""

from __future__ import annotations

import pytest

from server.session import Resume, replay_start
from server.store.ports import SessionInfo


def info(epoch: str | None = "e1", first: bytes | None = b"100-0", removed: int | None = 0,
         newest: bytes | None = b"200-0") -> SessionInfo:
    return SessionInfo(epoch, first, removed, [], newest_id=newest if first is not None else None)


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

"""RoomState: the cursor, each stored message once, a resume's replay, members."""

from __future__ import annotations

from typing import Any

from client.state import NOTHING, RoomState, id_key


def ready(last_id: str | None, epoch: str | None = "e1", recovered: bool = True, role: str = "A",
          members: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return {"hd": {"event": "session.ready", "sid": "r", "role": role, "conn": "c1"},
            "bd": {"last_id": last_id, "epoch": epoch, "recovered": recovered, "members": members or []}}


def message(entry_id: str, text: str = "x", cid: str | None = None) -> dict[str, Any]:
    hd = {"id": entry_id, "event": "chat.message", "role": "A", "sid": "r"}
    if cid is not None:
        hd["cid"] = cid
    return {"hd": hd, "bd": {"text": text}}


def presence(event: str, conn: str, role: str = "B") -> dict[str, Any]:
    return {"hd": {"event": event, "role": role, "sid": "r", "conn": conn}, "bd": {}}


def test_stream_ids_sort_as_the_stream_does() -> None:
    assert id_key("9-1") < id_key("10-0") < id_key("10-2") < id_key("11")
    assert id_key("0") == (0, 0)


def test_a_fresh_join_takes_the_room_s_newest_id_as_its_cursor() -> None:
    state = RoomState()
    assert state.resume_params() == {}
    assert state.ready(ready("5-0")) == [ready("5-0")]
    assert (state.last_id, state.epoch, state.role, state.conn) == ("5-0", "e1", "A", "c1")
    assert state.resume_params() == {"last_id": "5-0", "epoch": "e1"}


def test_a_join_to_an_empty_room_resumes_from_the_start() -> None:
    state = RoomState()
    state.ready(ready(None, epoch=None))
    assert state.resume_params() == {"last_id": NOTHING}
    assert state.admit(message("7-0"))
    assert state.resume_params() == {"last_id": "7-0"}  # the epoch is learnt at the next session.ready


def test_each_stored_message_is_admitted_once() -> None:
    state = RoomState()
    state.ready(ready("5-0"))
    assert state.admit(message("6-0"))
    assert not state.admit(message("6-0"))  # the sender-only re-broadcast of a re-sent cid
    assert not state.admit(message("5-0"))
    assert state.admit(message("6-1")) and state.last_id == "6-1"


def test_frames_that_are_not_stored_are_always_admitted() -> None:
    state = RoomState()
    state.ready(ready("5-0"))
    streaming = {"hd": {"event": "llm.streaming", "rid": "g", "seq": 0}, "bd": {"delta": "a"}}
    assert state.admit(streaming) and state.admit(streaming)
    assert state.last_id == "5-0"


def test_a_resume_s_replay_follows_its_session_ready_without_what_was_seen() -> None:
    state = RoomState(last_id="5-0", epoch="e1")
    state.connection_opened()
    for frame in (message("5-0"), message("6-0"), message("7-0")):
        state.hold(frame)
    delivered = state.ready(ready("7-0"))
    assert [f["hd"]["event"] for f in delivered] == ["session.ready", "chat.message", "chat.message"]
    assert [f["hd"]["id"] for f in delivered[1:]] == ["6-0", "7-0"]
    assert state.last_id == "7-0"


def test_an_unrecovered_resume_delivers_everything_retained_and_starts_the_cursor_over() -> None:
    state = RoomState(last_id="9-0", epoch="old")
    state.connection_opened()
    state.hold(message("3-0"))
    state.hold(message("4-0"))
    delivered = state.ready(ready("4-0", epoch="new", recovered=False))
    assert delivered[0]["bd"]["recovered"] is False
    assert [f["hd"]["id"] for f in delivered[1:]] == ["3-0", "4-0"]
    assert (state.last_id, state.epoch) == ("4-0", "new")


def test_a_new_connection_forgets_the_replay_of_one_that_dropped_before_its_ready() -> None:
    state = RoomState(last_id="5-0")
    state.connection_opened()
    state.hold(message("6-0"))
    state.connection_opened()
    assert [f["hd"]["event"] for f in state.ready(ready("6-0"))] == ["session.ready"]
    assert state.last_id == "6-0"


def test_members_follow_session_ready_and_presence() -> None:
    state = RoomState()
    state.ready(ready("1-0", members=[{"role": "A", "conn": "c1"}]))
    state.admit(presence("presence.join", "c2"))
    assert state.members == [{"role": "A", "conn": "c1"}, {"role": "B", "conn": "c2"}]
    state.admit(presence("presence.leave", "c1", role="A"))
    assert state.members == [{"role": "B", "conn": "c2"}]
    state.ready(ready("1-0", members=[{"role": "A", "conn": "c9"}]))
    assert state.members == [{"role": "A", "conn": "c9"}]


def bot(event: str, rid: str = "g-1", **hd: Any) -> dict[str, Any]:
    bd: dict[str, Any] = {"llm.streaming": {"delta": "x"}, "llm.snapshot": {"text": "so far"},
                          "llm.response": {"text": "so far x"}}.get(event, {})
    return {"hd": {"event": event, "role": "llm", "sid": "r", "rid": rid, "reply_to": "4-0", **hd}, "bd": bd}


def test_the_generations_start_from_session_ready_and_the_snapshot_starts_the_answer_text() -> None:
    state = RoomState()
    joined = ready("5-0")
    joined["bd"]["generations"] = [{"rid": "g-1", "reply_to": "4-0", "state": "running", "position": 0}]
    state.ready(joined)
    assert state.generations == joined["bd"]["generations"] and state.answers == {}
    assert state.admit(bot("llm.snapshot", seq=3))
    assert state.admit(bot("llm.streaming", seq=4, first_seq=4))
    assert state.answers["g-1"].text == "so farx"


def test_a_generation_is_listed_from_its_first_delta_and_gone_at_its_end() -> None:
    state = RoomState()
    state.ready(ready("5-0"))
    state.admit(bot("llm.streaming", seq=0, first_seq=0))
    assert state.generations == [{"rid": "g-1", "reply_to": "4-0", "state": "running", "position": 0}]
    assert state.answers["g-1"].text == "x"
    assert state.admit(bot("llm.response", id="6-0"))
    assert state.generations == [] and state.answers == {}


def test_a_queued_question_is_listed_with_its_position_until_it_runs() -> None:
    state = RoomState()
    state.ready(ready("5-0"))
    state.admit(bot("llm.queued", rid="g-2", position=1))
    assert state.generations == [{"rid": "g-2", "reply_to": "4-0", "state": "queued", "position": 1}]
    state.admit(bot("llm.streaming", rid="g-2", seq=0, first_seq=0))
    assert state.generations == [{"rid": "g-2", "reply_to": "4-0", "state": "running", "position": 0}]


def test_an_answer_no_longer_listed_by_a_new_session_ready_is_forgotten() -> None:
    state = RoomState()
    state.ready(ready("5-0"))
    state.admit(bot("llm.streaming", seq=0, first_seq=0))
    state.ready(ready("6-0"))  # a reconnect: the answer ended meanwhile (its llm.response is replayed)
    assert state.generations == [] and state.answers == {}


def test_the_questions_behind_one_that_starts_or_leaves_the_queue_move_up() -> None:
    state = RoomState()
    joined = ready("5-0")
    joined["bd"]["generations"] = [{"rid": "g-1", "reply_to": "4-0", "state": "running", "position": 0},
                                   {"rid": "g-2", "reply_to": "4-1", "state": "queued", "position": 1},
                                   {"rid": "g-3", "reply_to": "4-2", "state": "queued", "position": 2},
                                   {"rid": "g-4", "reply_to": "4-3", "state": "queued", "position": 3}]
    state.ready(joined)
    state.admit(bot("llm.error", rid="g-3"))  # taken off the queue (cancelled): g-4 moves up
    assert [(g["rid"], g["position"]) for g in state.generations] == [("g-1", 0), ("g-2", 1), ("g-4", 2)]
    state.admit(bot("llm.response", id="6-0"))  # g-1 ends: nobody moves until the next one starts
    state.admit(bot("llm.streaming", rid="g-2", seq=0, first_seq=0))
    assert [(g["rid"], g["state"], g["position"]) for g in state.generations] == [
        ("g-2", "running", 0), ("g-4", "queued", 1)]

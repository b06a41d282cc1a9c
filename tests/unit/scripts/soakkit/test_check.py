"""The soak's checker, rule by rule: records and streams in, violations out."""

from __future__ import annotations

from collections import Counter

from soakkit.check import ClientRecord, Report, Stored, check

ROOM = "r"


def msg(entry_id: str, role: str = "B", cid: str | None = None, event: str = "chat.message") -> Stored:
    return Stored(id=entry_id, role=role, event=event, cid=cid)


def answer(entry_id: str, reply_to: str, rid: str = "g-1") -> Stored:
    return Stored(id=entry_id, role="llm", event="llm.response", cid=rid, reply_to=reply_to, rid=rid)


def client(*received: Stored, role: str = "A", start: str | None = None, sent: dict[str, int] | None = None,
           acked: dict[str, str] | None = None) -> ClientRecord:
    return ClientRecord(room=ROOM, role=role, start=start, joined=True, received=list(received),
                        sent=Counter(sent or {}), acked=dict(acked or {}))


def run(stream: list[Stored], *records: ClientRecord) -> Report:
    return check(records, {ROOM: stream})


STREAM = [msg("1-0"), msg("2-0", "A", "A-1"), msg("3-0")]


def test_a_client_that_received_every_entry_after_it_joined_in_order_passes() -> None:
    report = run(STREAM, client(*STREAM[1:], start="1-0", sent={"A-1": 1}, acked={"A-1": "2-0"}))
    assert report.ok, report
    assert (report.stored, report.sent, report.acked) == (3, 1, 1)


def test_a_message_sent_but_never_stored_is_lost() -> None:
    report = run(STREAM, client(*STREAM, sent={"A-1": 1, "A-2": 3}, acked={"A-1": "2-0"}))
    assert report.counts()["lost"] == 1 and "A-2 sent 3 times" in report.lost[0]


def test_an_acknowledgement_naming_another_id_than_the_stored_one_is_lost() -> None:
    report = run(STREAM, client(*STREAM, sent={"A-1": 1}, acked={"A-1": "9-0"}))
    assert report.counts()["lost"] == 1


def test_an_invoke_refused_busy_and_not_stored_is_not_lost() -> None:
    record = client(*STREAM, sent={"A-1": 1, "A-2": 1}, acked={"A-1": "2-0"})
    record.refused_busy.add("A-2")
    assert run(STREAM, record).ok


def test_a_cid_stored_twice_is_duplicated() -> None:
    stream = [*STREAM, msg("4-0", "A", "A-1")]
    report = run(stream, client(*stream, sent={"A-1": 2}, acked={"A-1": "2-0"}))
    assert any("stored 2 times" in d for d in report.duplicated)


def test_an_entry_received_twice_is_duplicated() -> None:
    report = run(STREAM, client(STREAM[0], STREAM[1], STREAM[1], STREAM[2], sent={"A-1": 1}, acked={"A-1": "2-0"}))
    assert report.duplicated == ["r/A: received 2-0 twice"]


def test_the_sender_only_echo_of_a_resent_cid_is_allowed_twice_and_out_of_order() -> None:
    report = run(STREAM, client(STREAM[0], STREAM[2], STREAM[1], STREAM[1], sent={"A-1": 2}, acked={"A-1": "2-0"}))
    assert report.ok, report


def test_an_entry_received_after_a_newer_one_is_reordered() -> None:
    report = run(STREAM, client(STREAM[0], STREAM[2], STREAM[1], role="B"))
    assert report.reordered == ["r/B: received 2-0 after a newer entry"]


def test_an_entry_after_the_join_never_received_is_a_gap_and_one_not_in_the_stream_a_phantom() -> None:
    report = run(STREAM, client(STREAM[0], msg("2-5"), STREAM[2], role="B"))
    assert report.gaps == ["r/B: never received 2-0"]
    assert report.phantoms == ["r/B: received 2-5, not in the stream"]


def test_entries_before_the_join_are_not_expected() -> None:
    assert run(STREAM, client(STREAM[2], role="B", start="2-0")).ok


def test_a_client_that_never_joined_is_only_checked_for_what_it_sent() -> None:
    record = ClientRecord(room=ROOM, role="B")
    assert run(STREAM, record).ok


def test_every_recovered_false_is_counted() -> None:
    record = client(*STREAM, role="B")
    record.not_recovered = 2
    assert run(STREAM, record).counts()["not_recovered"] == 2


QUESTION = msg("1-0", "A", "A-1", event="llm.invoke")


def test_a_question_with_one_stored_answer_has_one_terminal_event() -> None:
    report = run([QUESTION, answer("2-0", "1-0")])
    assert report.ok and (report.questions, report.answered) == (1, 1)


def error(entry_id: str, reply_to: str, rid: str = "g-1") -> Stored:
    return Stored(id=entry_id, role="llm", event="llm.error", cid=rid, reply_to=reply_to, rid=rid)


def test_a_question_without_a_terminal_event_is_reported() -> None:
    report = run([QUESTION])
    assert report.terminal == ["r: question 1-0: 0 llm.response, 0 llm.error"]


def test_a_question_answered_twice_is_reported() -> None:
    report = run([QUESTION, answer("2-0", "1-0"), answer("3-0", "1-0", rid="g-2")])
    assert report.counts()["terminal"] == 1


def test_a_question_with_an_answer_and_an_llm_error_is_reported() -> None:
    report = run([QUESTION, answer("2-0", "1-0"), error("3-0", "1-0")])
    assert report.terminal == ["r: question 1-0: 1 llm.response, 1 llm.error"]


def test_a_stored_llm_error_ends_a_question() -> None:
    report = run([QUESTION, error("2-0", "1-0")])
    assert report.ok and report.errored == 1


def test_two_generations_whose_deltas_interleave_overlap() -> None:
    record = client(role="B")
    record.llm_events += [("delta", "g-1", "1-0"), ("delta", "g-2", "2-0"), ("delta", "g-1", "1-0")]
    assert run([], record).overlapping == ["r/B: g-1 streamed while g-2 did"]


def test_a_generation_after_the_previous_ended_or_stopped_for_good_does_not_overlap() -> None:
    record = client(role="B")
    record.llm_events += [("delta", "g-1", "1-0"), ("end", "g-1", "1-0"), ("delta", "g-2", "2-0"),
                          ("delta", "g-3", "3-0"), ("end", "g-2", "2-0"), ("delta", "g-3", "3-0"),
                          ("end", "g-3", "3-0"), ("delta", "g-2", "2-0")]
    assert run([], record).ok


def test_a_reconnect_forgets_which_stream_was_interrupted() -> None:
    record = client(role="B")
    record.llm_events += [("delta", "g-1", "1-0"), ("delta", "g-2", "2-0"), ("reset", "", ""),
                          ("delta", "g-1", "1-0")]
    assert run([], record).ok


def test_a_stored_question_refused_busy_has_no_terminal_event_and_none_is_expected() -> None:
    question = msg("1-0", "A", "A-1", event="llm.invoke")  # stored, then refused busy: the room's queue was full
    record = client(question, sent={"A-1": 1}, acked={"A-1": "1-0"})
    record.refused_busy.add("A-1")
    assert run([question], record).ok
    answered = run([question, answer("2-0", "1-0")], record)
    assert answered.terminal == ["r: question 1-0: 1 llm.response, 0 llm.error"]

"""Answers resume: a connection entering a room while the bot answers (new, or resuming with ``last_id``,
on any node, wherever the generation runs) gets ``session.ready`` listing the running generation, one
``llm.snapshot`` of its text so far (deltas 0..K), then exactly its deltas after K: the snapshot's text
and the later deltas join to the final ``llm.response`` text, with no gap and no overlap."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from client.answer import Answer
from tests.conftest import RUN
from tests.support.client import Client
from tests.support.server_process import ServerProcess, WorkerProcess

DELAY_MS = "40"  # a #long answer streams about 100 chunks: some 4 s, long enough to join mid-answer
QUESTION = "@llm #long tell me everything"


async def question_and_early_deltas(asker: Client, deltas: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Ask the long question; return its stored entry and the asker's ``deltas``-th delta, once it came."""
    await asker.chat(QUESTION, cid="q")
    question = await asker.recv()
    assert question["hd"]["cid"] == "q"
    while True:
        frame = await asker.recv()
        assert frame["hd"]["event"] == "llm.streaming", frame
        if frame["hd"]["seq"] >= deltas - 1:
            return question, frame


async def rest_of_answer(client: Client) -> list[dict[str, Any]]:
    """The client's frames up to the generation's llm.response."""
    frames: list[dict[str, Any]] = []
    while not frames or frames[-1]["hd"]["event"] != "llm.response":
        frames.append(await client.recv())
    return frames


def check_snapshot_then_rest(client: Client, frames: list[dict[str, Any]], question: dict[str, Any],
                             rid: str) -> int:
    """session.ready lists the generation; the snapshot comes first, then the deltas after its seq, one
    after the other, then the llm.response, whose text is the snapshot's and the deltas' joined. Returns
    the snapshot's seq."""
    assert client.ready["bd"]["generations"] == [{"rid": rid, "reply_to": question["hd"]["id"], "state": "running",
                                                  "position": 0}]
    snapshot, *streamed, response = frames
    assert snapshot["hd"]["event"] == "llm.snapshot", snapshot
    assert (snapshot["hd"]["rid"], snapshot["hd"]["reply_to"]) == (rid, question["hd"]["id"])
    assert "attempt" not in snapshot["hd"]
    assert all(frame["hd"]["event"] == "llm.streaming" for frame in streamed)
    seq = snapshot["hd"]["seq"]
    for frame in streamed:  # no gap, no overlap
        assert frame["hd"]["first_seq"] == seq + 1, (seq, frame["hd"])
        seq = frame["hd"]["seq"]
    assert response["hd"]["rid"] == rid and response["bd"]["finish_reason"] == "stop"
    joined = snapshot["bd"]["text"] + "".join(frame["bd"]["delta"] for frame in streamed)
    assert joined == response["bd"]["text"]
    answer = Answer()  # the Python client, on the real frames
    for frame in [snapshot, *streamed]:
        answer.apply(frame)
    assert answer.text == response["bd"]["text"]
    return int(snapshot["hd"]["seq"])


async def test_a_late_joiner_and_a_resumer_on_nodes_without_the_worker_get_snapshot_and_rest(
        start_server: Callable[..., ServerProcess], redis_url: str, room: str, logs_dir: Path) -> None:
    env = {"REDIS_URL": redis_url, "LLM_QUEUE": f"t{RUN}-snap-{room}", "LLM_SCRIPTED_DELAY_MS": DELAY_MS}
    one, two = start_server(**env, LLM_WORKERS="0"), start_server(**env, LLM_WORKERS="0")
    worker = WorkerProcess(env, logs_dir / f"worker-{room}.log").start()
    try:
        async with await Client.open(one.ws(room, role="A")) as a:
            question, early = await question_and_early_deltas(a, 3)
            rid = early["hd"]["rid"]
            async with await Client.open(two.ws(room, role="B")) as late, \
                    await Client.open(one.ws(room, last_id=question["hd"]["id"])) as resumer:
                assert resumer.ready["bd"]["recovered"] is True and resumer.replayed == []
                late_seq = check_snapshot_then_rest(late, await rest_of_answer(late), question, rid)
                resumed_seq = check_snapshot_then_rest(resumer, await rest_of_answer(resumer), question, rid)
            asked = await rest_of_answer(a)
        assert late_seq >= 2 and resumed_seq >= 2  # they joined mid-answer
        assert asked[-1]["hd"]["rid"] == rid and asked[-1]["bd"]["text"].startswith("You said: A: @llm #long")
    finally:
        worker.stop()


async def test_a_late_joiner_on_the_generating_node_gets_snapshot_and_rest(
        start_server: Callable[..., ServerProcess], redis_url: str, room: str) -> None:
    node = start_server(REDIS_URL=redis_url, LLM_SCRIPTED_DELAY_MS=DELAY_MS)  # its own worker
    async with await Client.open(node.ws(room, role="A")) as a:
        question, early = await question_and_early_deltas(a, 3)
        async with await Client.open(node.ws(room, role="B")) as late:
            assert check_snapshot_then_rest(late, await rest_of_answer(late), question, early["hd"]["rid"]) >= 2
        async with await Client.open(node.ws(room, role="B")) as after:  # the answer is over: nothing runs
            assert after.ready["bd"]["generations"] == []

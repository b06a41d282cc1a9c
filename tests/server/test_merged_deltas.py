"""A member that stops reading during a long, fast answer, after its link is full of stored messages, is
not closed: the deltas queued meanwhile reach it merged, and join to the final text. A member that reads
promptly gets every delta on its own."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

from tests.support.client import Client
from tests.support.raw_ws import CLOSE, TEXT, RawWebSocket
from tests.support.schemas import frame_errors
from tests.support.server_process import ServerProcess

QUEUE_MAX = 32
FILL_CHARS = 500_000  # a stored message of about 500 KB: about ten fill the stalled member's link (the
RCVBUF = 4096  # server's socket buffer grows to 4 MB on Linux, whatever the client's is)
WAIT_S = 30.0


async def metric(node: ServerProcess, name: str) -> float:
    async with httpx.AsyncClient(base_url=node.http) as http:
        response = await http.get("/metrics")
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} is not in /metrics")


async def fill_until_backed_up(node: ServerProcess, a: Client) -> int:
    """Send stored messages (reading each back) until the server says a connection is backed up: the
    stalled member's. Returns how many were sent."""
    sent = 0
    while await metric(node, "chat_backed_up_connections") < 1:
        assert sent < QUEUE_MAX - 2, "the link did not fill up with stored messages"
        await a.chat("x" * FILL_CHARS, cid=f"fill-{sent}")
        assert (await a.recv())["hd"]["cid"] == f"fill-{sent}"
        sent += 1
    return sent


async def frames_until(stalled: RawWebSocket, event: str) -> list[dict[str, Any]]:
    """The stalled member's frames, once it reads again, up to the first ``event`` (a close fails)."""
    frames = []
    while True:
        opcode, payload = await asyncio.wait_for(stalled.read_frame(), WAIT_S)
        assert opcode != CLOSE, f"closed: {int.from_bytes(payload[:2], 'big')} {payload[2:]!r}"
        if opcode != TEXT:
            continue
        frame = orjson.loads(payload)
        frames.append(frame)
        if frame["hd"]["event"] == event:
            return frames


def spans(frames: list[dict[str, Any]]) -> list[tuple[int, int]]:
    return [(f["hd"]["first_seq"], f["hd"]["seq"]) for f in frames if f["hd"]["event"] == "llm.streaming"]


async def test_a_reader_that_stops_during_a_long_answer_is_not_closed_and_reads_merged_deltas(
        start_server: Callable[..., ServerProcess], redis_url: str, room: str) -> None:
    node = start_server(REDIS_URL=redis_url, SEND_QUEUE_MAX=str(QUEUE_MAX), MAX_TEXT_CHARS=str(FILL_CHARS),
                        MAX_MESSAGE_BYTES=str(FILL_CHARS + 1000),
                        LLM_PROVIDER="scripted", LLM_SCRIPTED_DELAY_MS="0", PING_INTERVAL_S="0")
    stalled = await RawWebSocket.open(node.port, f"/v1/session/chat?sid={room}&role=B", rcvbuf=RCVBUF)
    assert (await frames_until(stalled, "session.ready"))[-1]["hd"]["role"] == "B"
    # From here on the stalled member reads nothing until the answer is over.
    async with await Client.open(node.ws(room, role="A")) as a:
        filled = await fill_until_backed_up(node, a)
        merged_before = await metric(node, "chat_llm_deltas_merged_total")
        await a.chat("@llm #long tell me everything", cid="question")
        prompt: list[dict[str, Any]] = []
        while not prompt or prompt[-1]["hd"]["event"] != "llm.response":
            prompt.append(await a.recv())
        answer = prompt[-1]["bd"]["text"]
        prompt_spans = spans(prompt)
        # The prompt reader: every delta on its own, as before (first_seq = seq), more of them than the
        # stalled member's queue may hold: counted, they would have closed it.
        assert prompt_spans == [(seq, seq) for seq in range(len(prompt_spans))]
        assert len(prompt_spans) + filled > QUEUE_MAX
        assert await metric(node, "chat_llm_deltas_merged_total") > merged_before
        assert await metric(node, "chat_backed_up_connections") == 1  # still not read: still backed up

        late = await frames_until(stalled, "llm.response")
        assert [f["hd"].get("cid") for f in late if f["hd"]["event"] == "chat.message"] == [
            *(f"fill-{n}" for n in range(filled)), "question"]
        late_spans = spans(late)
        assert late_spans[0][0] == 0 and late_spans[-1][1] == prompt_spans[-1][1]
        assert all(later[0] == earlier[1] + 1 for earlier, later in itertools.pairwise(late_spans))
        assert len(late_spans) < len(prompt_spans)  # merged: fewer frames, nothing missing
        assert "".join(f["bd"]["delta"] for f in late if f["hd"]["event"] == "llm.streaming") == answer
        assert late[-1]["bd"]["text"] == answer
        assert all(frame_errors(f, "send") == [] for f in late)

        await a.chat("still there?", cid="after")  # the stalled member was never closed
        assert (await frames_until(stalled, "chat.message"))[-1]["hd"]["cid"] == "after"
    stalled.close()

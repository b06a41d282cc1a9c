"""``postman/POSTMAN_EXAMPLES.md`` tells the truth: every example frame, sent in order to a live
server from its tab, gets exactly the documented answers, and only the documented tabs get them;
every frame shown matches ``protocol/asyncapi.yaml``."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.client import Client
from tests.support.examples import Bindings, Example, differences, parse_examples
from tests.support.schemas import check_server_frame, frame_errors
from tests.support.server_process import ServerProcess

EXAMPLES = parse_examples()
#: Refusals a client frame earns by its shape alone: the AsyncAPI client schemas refuse it too.
SHAPE_REFUSALS = {"invalid_json", "invalid_envelope", "unknown_event", "invalid_role", "reserved_role", "empty_text",
                  "too_large"}
TAB_ROLES = {"A": "A", "B": "B", "U": None}


def test_there_are_enough_examples_of_every_kind() -> None:
    assert len(EXAMPLES) >= 12
    events = {e.frame["hd"].get("event") for e in EXAMPLES}
    assert {"chat.message", "llm.invoke", "llm.cancel"} <= events
    codes = {a.frame["bd"]["code"] for e in EXAMPLES for a in e.answers if a.frame["hd"]["event"] == "error"}
    assert {"invalid_role", "reserved_role", "empty_text", "unknown_event", "invalid_envelope"} <= codes


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.title for e in EXAMPLES])
def test_example_frames_match_the_asyncapi_schemas(example: Example) -> None:
    for answer in example.answers:
        assert "id" in answer.frame["hd"] or answer.frame["hd"]["event"] == "error"  # answers are stored or refusals
        check_server_frame(answer.frame)
    refused = {a.frame["bd"]["code"] for a in example.answers if a.frame["hd"]["event"] == "error"}
    errors = frame_errors(example.frame, "receive")
    if refused & SHAPE_REFUSALS:
        assert errors, f"the schemas accept a frame the server refuses with {refused}"
    else:
        assert not errors


async def next_answer(client: Client) -> dict[str, Any]:
    """The next frame that is not a piece of a streamed answer."""
    while True:
        frame = await client.recv()
        if frame["hd"]["event"] != "llm.streaming":
            return frame


async def test_every_example_gets_its_documented_answer(server: ServerProcess, room: str) -> None:
    tabs = {name: await Client.open(server.ws(room, **({"role": role} if role else {})))
            for name, role in TAB_ROLES.items()}
    bindings = Bindings(room)
    try:
        for example in EXAMPLES:
            await tabs[example.tab].send_raw(example.frame_text)
            for name, client in tabs.items():
                for answer in (a for a in example.answers if a.everyone or name == example.tab):
                    real = await next_answer(client)
                    found = differences(answer.frame, real, bindings)
                    assert not found, f"{example.title}, tab {name}: {found}; received {real}"
        await tabs["A"].chat("the end", cid="end")  # nobody received anything undocumented before it
        for client in tabs.values():
            assert (await next_answer(client))["hd"].get("cid") == "end"
    finally:
        for client in tabs.values():
            await client.close()

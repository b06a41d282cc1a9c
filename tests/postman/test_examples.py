"""``postman/POSTMAN_EXAMPLES.md`` tells the truth: every example frame, sent in order to a live
server from its tab, gets exactly the documented answers, and only the documented tabs get them.
(That every frame shown matches ``protocol/asyncapi.yaml``: ``tests/unit/postman/test_examples.py``.)"""

from __future__ import annotations

from typing import Any

from tests.support.client import Client
from tests.support.examples import Bindings, differences, parse_examples
from tests.support.server_process import ServerProcess

EXAMPLES = parse_examples()
TAB_ROLES = {"A": "A", "B": "B", "U": None}


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

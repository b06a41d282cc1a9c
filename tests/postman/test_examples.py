"""``postman/POSTMAN_EXAMPLES.md`` tells the truth: every example frame, sent in order to a live
server from its tab, gets exactly the documented answers, and only the documented tabs get them.
Examples that name server settings run on a server started with them, in a room of their own.
(That every frame shown matches ``protocol/asyncapi.yaml``: ``tests/unit/postman/test_examples.py``.)"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import new_room
from tests.support.client import Client
from tests.support.examples import Bindings, Example, differences, parse_examples
from tests.support.server_process import ServerProcess

EXAMPLES = parse_examples()
TAB_ROLES = {"A": "A", "B": "B", "U": None}
GROUPS = [(dict(settings), list(examples)) for settings, examples in itertools.groupby(EXAMPLES, lambda e: e.settings)]
GROUP_IDS = [" ".join(f"{k}={v}" for k, v in settings.items()) or "defaults" for settings, _ in GROUPS]


async def next_answer(client: Client, streaming: bool = False) -> dict[str, Any]:
    """The next frame that is not a piece of a streamed answer (unless ``streaming``: the next frame)."""
    while True:
        frame = await client.recv()
        if streaming or frame["hd"]["event"] != "llm.streaming":
            return frame


async def run_examples(server: ServerProcess, room: str, examples: list[Example]) -> None:
    tabs = {name: await Client.open(server.ws(room, **({"role": role} if role else {})))
            for name, role in TAB_ROLES.items()}
    bindings = Bindings(room)
    try:
        for example in examples:
            await tabs[example.tab].send_raw(bindings.sent(example.frame_text))
            for name, client in tabs.items():
                for answer in (a for a in example.answers if a.everyone or name == example.tab):
                    real = await next_answer(client, answer.frame["hd"]["event"] == "llm.streaming")
                    found = differences(answer.frame, real, bindings)
                    assert not found, f"{example.title}, tab {name}: {found}; received {real}"
        await tabs["A"].chat("the end", cid="end")  # nobody received anything undocumented before it
        for client in tabs.values():
            assert (await next_answer(client))["hd"].get("cid") == "end"
    finally:
        for client in tabs.values():
            await client.close()


@pytest.mark.parametrize(("settings", "examples"), GROUPS, ids=GROUP_IDS)
async def test_every_example_gets_its_documented_answer(settings: dict[str, str], examples: list[Example],
                                                        server: ServerProcess, redis_url: str,
                                                        start_server: Callable[..., ServerProcess]) -> None:
    node = start_server(REDIS_URL=redis_url, **settings) if settings else server
    await run_examples(node, new_room(), examples)

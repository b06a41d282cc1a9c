"""``protocol/asyncapi.yaml`` covers the code: every event and error code, and client schemas that
accept exactly the frames the parser accepts. (Its validity against the AsyncAPI 3 specification's
own schema, installed with npm, is checked by ``tests/protocol/test_asyncapi_spec.py``.)"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from protocol import CLIENT_EVENTS, ERROR_CODES, Event, Limits, ProtocolError, parse_frame
from protocol.errors import LLM_ERROR_CODES
from tests.support.schemas import asyncapi, event_validators, frame_errors, resolve, schema_validator


def test_every_event_is_documented_in_its_direction() -> None:
    assert set(event_validators("receive")) == set(CLIENT_EVENTS)
    assert set(event_validators("send")) == {str(event) for event in Event} - {Event.LLM_CANCEL, Event.LLM_REGENERATE}


def codes(schema: str) -> set[str]:
    return {option["const"] for option in asyncapi()["components"]["schemas"][schema]["oneOf"]}


def test_error_codes_are_the_vocabulary() -> None:
    assert codes("ErrorCode") == set(ERROR_CODES)
    assert codes("LlmErrorCode") == set(LLM_ERROR_CODES)


def test_message_examples_match_their_payloads() -> None:
    examples = [(name, message, example["payload"])
                for name, message in asyncapi()["components"]["messages"].items()
                for example in message.get("examples", [])]
    assert examples
    for name, message, payload in examples:
        errors = list(schema_validator(message["payload"]["$ref"]).iter_errors(payload))
        assert not errors, f"{name}: {errors[0].message}"
        direction = "receive" if name in {"chatMessage", "llmInvoke", "llmCancel", "llmRegenerate"} else "send"
        assert frame_errors(payload, direction) == []


def test_the_union_schemas_hold_each_event_once() -> None:
    for union, action in (("ClientFrame", "receive"), ("ServerFrame", "send")):
        members = {option["$ref"] for option in asyncapi()["components"]["schemas"][union]["oneOf"]}
        assert members == {v.schema["$ref"].removeprefix("urn:chat-relay:asyncapi")
                           for v in event_validators(action).values()}


def test_every_channel_message_is_in_an_operation() -> None:
    in_operations = {ref["$ref"] for operation in asyncapi()["operations"].values() for ref in operation["messages"]}
    assert in_operations == {f"#/channels/room/messages/{name}" for name in asyncapi()["channels"]["room"]["messages"]}
    assert all(resolve(ref)["payload"] for ref in in_operations)


FRAMES: list[Any] = [
    {"hd": {"event": "chat.message"}, "bd": {"text": "hi"}},
    {"hd": {"event": "chat.message", "role": "A", "cid": "c-1", "timestamp": "ignored"}, "bd": {"text": "hi", "x": 1}},
    {"hd": {"event": "chat.message", "role": "B"}, "bd": {"text": " x "}},
    {"hd": {"event": "chat.message", "role": "C"}, "bd": {"text": "hi"}},
    {"hd": {"event": "chat.message", "role": "llm"}, "bd": {"text": "hi"}},
    {"hd": {"event": "chat.message", "role": None}, "bd": {"text": "hi"}},
    {"hd": {"event": "chat.message", "role": "user"}, "bd": {"text": "hi"}},
    {"hd": {"event": "chat.message"}, "bd": {"text": " \t\n "}},
    {"hd": {"event": "chat.message"}, "bd": {"text": ""}},
    {"hd": {"event": "chat.message"}, "bd": {}},
    {"hd": {"event": "chat.message"}, "bd": {"text": 5}},
    {"hd": {"event": "chat.message"}, "bd": {"text": "x" * 5000}},
    {"hd": {"event": "chat.message"}, "bd": {"text": "x" * 5001}},
    {"hd": {"event": "chat.message"}},
    {"hd": {"event": "chat.message"}, "bd": []},
    {"hd": {"event": "chat.message", "cid": ""}, "bd": {"text": "hi"}},
    {"hd": {"event": "chat.message", "cid": "c" * 64}, "bd": {"text": "hi"}},
    {"hd": {"event": "chat.message", "cid": "c" * 65}, "bd": {"text": "hi"}},
    {"hd": {"event": "chat.message", "cid": 7}, "bd": {"text": "hi"}},
    {"hd": {"event": 1}, "bd": {}},
    {"hd": {}, "bd": {}},
    {"hd": {"event": "chat.typing"}, "bd": {}},
    {"bd": {"text": "hi"}},
    [],
    "hello",
    {"hd": {"event": "llm.invoke"}, "bd": {}},
    {"hd": {"event": "llm.invoke", "role": "A", "cid": "q"}, "bd": {"prompt": "why?"}},
    {"hd": {"event": "llm.invoke"}, "bd": {"prompt": ""}},
    {"hd": {"event": "llm.invoke"}, "bd": {"prompt": 3}},
    {"hd": {"event": "llm.invoke"}, "bd": {"prompt": "x" * 5001}},
    {"hd": {"event": "llm.cancel"}, "bd": {"rid": "g-1"}},
    {"hd": {"event": "llm.cancel"}, "bd": {}},
    {"hd": {"event": "llm.cancel"}, "bd": {"rid": ""}},
    {"hd": {"event": "llm.cancel"}, "bd": {"rid": "r" * 65}},
]


@pytest.mark.parametrize("frame", FRAMES, ids=[orjson.dumps(f).decode()[:60] for f in FRAMES])
def test_the_client_schemas_accept_what_the_parser_accepts(frame: Any) -> None:
    try:
        parse_frame(orjson.dumps(frame), Limits())
        accepted = True
    except ProtocolError:
        accepted = False
    errors = list(schema_validator("#/components/schemas/ClientFrame").iter_errors(frame))
    assert accepted == (not errors), errors

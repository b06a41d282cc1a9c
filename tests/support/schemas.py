"""The payload schemas of ``protocol/asyncapi.yaml``, as validators for the tests.

Server events are looked up by name among the messages of the document's ``send`` operations,
client events among those of its ``receive`` operations, so a frame is checked against exactly
the schema the document gives its event. The tests' WebSocket client checks every frame it
receives (:func:`check_server_frame`): the document cannot drift from what the server sends.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry
from referencing.jsonschema import DRAFT7

ROOT = Path(__file__).resolve().parents[2]
ASYNCAPI_PATH = ROOT / "protocol" / "asyncapi.yaml"
_URI = "urn:chat-relay:asyncapi"


@cache
def asyncapi() -> dict[str, Any]:
    document = yaml.safe_load(ASYNCAPI_PATH.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def resolve(ref: str) -> Any:
    """The node a local reference (``#/a/b``) points at, following references to references."""
    node: Any = asyncapi()
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return resolve(node["$ref"]) if isinstance(node, dict) and "$ref" in node else node


def schema_validator(pointer: str) -> jsonschema.Draft7Validator:
    """A validator for the schema at ``pointer`` (``#/components/schemas/...``) of the document."""
    registry: Registry[Any] = Registry().with_resource(_URI, DRAFT7.create_resource(asyncapi()))
    return jsonschema.Draft7Validator({"$ref": _URI + pointer}, registry=registry)


@cache
def event_validators(action: str) -> dict[str, jsonschema.Draft7Validator]:
    """Event name -> validator of its payload, for the messages of the ``action`` operations."""
    validators: dict[str, jsonschema.Draft7Validator] = {}
    for operation in asyncapi()["operations"].values():
        if operation["action"] != action:
            continue
        for ref in operation["messages"]:
            message = resolve(ref["$ref"])
            name, payload = message["name"], message["payload"]["$ref"]
            existing = validators.get(name)
            assert existing is None or existing.schema["$ref"].endswith(payload), f"two payloads for {name}"
            validators[name] = schema_validator(payload)
    return validators


def frame_errors(frame: Any, action: str) -> list[str]:
    """Why ``frame`` does not match its event's payload schema (empty: it does)."""
    hd = frame.get("hd") if isinstance(frame, dict) else None
    event = hd.get("event") if isinstance(hd, dict) else None
    validator = event_validators(action).get(event) if isinstance(event, str) else None
    if validator is None:
        return [f"no {action} message named {event!r} in protocol/asyncapi.yaml"]
    return [f"{'/'.join(map(str, error.absolute_path)) or '(frame)'}: {error.message}"
            for error in validator.iter_errors(frame)]


def check_server_frame(frame: Any) -> None:
    """Fail unless ``frame`` is a server frame as the AsyncAPI document describes it."""
    errors = frame_errors(frame, "send")
    assert not errors, f"server frame does not match protocol/asyncapi.yaml: {errors}: {frame}"


def check_client_frame(frame: Any) -> None:
    errors = frame_errors(frame, "receive")
    assert not errors, f"client frame does not match protocol/asyncapi.yaml: {errors}: {frame}"

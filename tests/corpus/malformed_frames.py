"""Malformed client frames, each with the error code the relay answers it with.

Every frame is meant for a connection bound to role ``B`` (``?role=B``), under the default limits
(``MAX_MESSAGE_BYTES``, ``MAX_TEXT_CHARS``). Text frames are ``str``; ``bytes`` are binary frames,
which only the WebSocket layer sees (``unsupported_frame``). The protocol unit tests feed the text
frames to the parser; one integration test sends all of them over one live connection.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from protocol.limits import DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MAX_TEXT_CHARS, MAX_CID_CHARS, MAX_JSON_DEPTH

BOUND_ROLE = "B"


@dataclass(frozen=True, slots=True)
class Bad:
    name: str
    frame: str | bytes
    code: str


def envelope(hd: object = None, bd: object = None, **hd_keys: object) -> str:
    """A frame from Python values; ``hd`` defaults to a chat.message header with ``hd_keys`` added."""
    header = {"event": "chat.message", **hd_keys} if hd is None else hd
    return json.dumps({"hd": header, "bd": {"text": "hi"} if bd is None else bd})


def nested(depth: int, leaf: str = "1") -> str:
    """``depth`` levels of arrays around ``leaf``, as JSON text."""
    return "[" * depth + leaf + "]" * depth


def with_raw(key: str, raw_json: str, where: str = "bd") -> str:
    """A chat.message whose ``hd`` or ``bd`` has ``key`` set to the raw JSON text ``raw_json``."""
    if where == "hd":
        return '{"hd": {"event": "chat.message", "' + key + '": ' + raw_json + '}, "bd": {"text": "hi"}}'
    return '{"hd": {"event": "chat.message"}, "bd": {"text": "hi", "' + key + '": ' + raw_json + "}}"


GOOD = envelope()
TOO_MANY_CHARS = "x" * (DEFAULT_MAX_TEXT_CHARS + 1)

CORPUS: list[Bad] = [
    # -- not JSON --------------------------------------------------------------------------------
    Bad("empty frame", "", "invalid_json"),
    Bad("only whitespace", " \n\t ", "invalid_json"),
    Bad("plain text", "hello there", "invalid_json"),
    Bad("truncated object", GOOD[:-1], "invalid_json"),
    Bad("trailing comma", '{"hd": {"event": "chat.message",}, "bd": {"text": "hi"}}', "invalid_json"),
    Bad("single quotes", "{'hd': {'event': 'chat.message'}, 'bd': {'text': 'hi'}}", "invalid_json"),
    Bad("unquoted keys", '{hd: {event: "chat.message"}, bd: {text: "hi"}}', "invalid_json"),
    Bad("comment", "// hello\n" + GOOD, "invalid_json"),
    Bad("trailing garbage", GOOD + " x", "invalid_json"),
    Bad("two envelopes in one frame", GOOD + GOOD, "invalid_json"),
    Bad("byte order mark", "\ufeff" + GOOD, "invalid_json"),
    Bad("raw control character in a string", '{"hd": {"event": "chat.message"}, "bd": {"text": "a\x01b"}}',
        "invalid_json"),
    Bad("unknown escape", '{"hd": {"event": "chat.message"}, "bd": {"text": "\\x41"}}', "invalid_json"),
    Bad("truncated unicode escape", '{"hd": {"event": "chat.message"}, "bd": {"text": "\\u12"}}', "invalid_json"),
    Bad("leading zero", with_raw("n", "0123"), "invalid_json"),
    Bad("hex number", with_raw("n", "0x10"), "invalid_json"),
    Bad("undefined", with_raw("n", "undefined"), "invalid_json"),
    Bad("python None", with_raw("n", "None"), "invalid_json"),
    # -- lone surrogates -------------------------------------------------------------------------
    Bad("lone high surrogate in text", '{"hd": {"event": "chat.message"}, "bd": {"text": "a\\ud800b"}}',
        "invalid_json"),
    Bad("lone low surrogate in cid", with_raw("cid", '"\\udc00"', "hd"), "invalid_json"),
    Bad("surrogates in the wrong order", '{"hd": {"event": "chat.message"}, "bd": {"text": "\\ude00\\ud83d"}}',
        "invalid_json"),
    Bad("lone surrogate in a key", '{"hd": {"event": "chat.message"}, "bd": {"text": "hi", "\\ud800": 1}}',
        "invalid_json"),
    Bad("lone surrogate as the event", '{"hd": {"event": "\\udbff"}, "bd": {"text": "hi"}}', "invalid_json"),
    # -- numbers out of range --------------------------------------------------------------------
    Bad("NaN", with_raw("n", "NaN"), "invalid_json"),
    Bad("Infinity", with_raw("n", "Infinity"), "invalid_json"),
    Bad("negative infinity", with_raw("n", "-Infinity"), "invalid_json"),
    Bad("float over the double range", with_raw("n", "1e400"), "invalid_json"),
    Bad("integer just over 64 bits", with_raw("n", str(2**64)), "invalid_json"),
    Bad("integer just under 64 bits signed", with_raw("n", str(-(2**63) - 1)), "invalid_json"),
    Bad("30-digit integer", with_raw("n", "9" * 30), "invalid_json"),
    Bad("5000-digit integer", with_raw("n", "7" * 5000), "invalid_json"),
    Bad("huge integer deep in the body", with_raw("meta", '{"a": [1, 2, {"b": 123456789012345678901234}]}'),
        "invalid_json"),
    Bad("huge integer as the role", with_raw("role", "1" * 25, "hd"), "invalid_json"),
    # -- nesting ---------------------------------------------------------------------------------
    Bad("nesting one level over the limit", with_raw("x", nested(MAX_JSON_DEPTH - 1)), "invalid_json"),
    Bad("nesting 300 levels", with_raw("x", nested(300)), "invalid_json"),
    Bad("nesting past the JSON parser's own limit", with_raw("x", nested(2000)), "invalid_json"),
    Bad("deeply nested objects", with_raw("x", '{"a": ' * 200 + "1" + "}" * 200), "invalid_json"),
    Bad("deeply nested role", with_raw("role", nested(1000, '"A"'), "hd"), "invalid_json"),
    Bad("deeply nested event", '{"hd": {"event": ' + nested(500, '"chat.message"') + '}, "bd": {}}',
        "invalid_json"),
    Bad("a frame that is only brackets", nested(5000, ""), "invalid_json"),
    # -- not an envelope -------------------------------------------------------------------------
    Bad("array", "[]", "invalid_envelope"),
    Bad("string", '"chat.message"', "invalid_envelope"),
    Bad("null", "null", "invalid_envelope"),
    Bad("number", "42", "invalid_envelope"),
    Bad("true", "true", "invalid_envelope"),
    Bad("empty object", "{}", "invalid_envelope"),
    Bad("no hd", json.dumps({"bd": {"text": "hi"}}), "invalid_envelope"),
    Bad("no bd", json.dumps({"hd": {"event": "chat.message"}}), "invalid_envelope"),
    Bad("hd is an array", envelope(hd=[{"event": "chat.message"}]), "invalid_envelope"),
    Bad("hd is a string", envelope(hd="chat.message"), "invalid_envelope"),
    Bad("hd is null", '{"hd": null, "bd": {"text": "hi"}}', "invalid_envelope"),
    Bad("bd is a string", json.dumps({"hd": {"event": "chat.message"}, "bd": "hi"}), "invalid_envelope"),
    Bad("bd is null", '{"hd": {"event": "chat.message"}, "bd": null}', "invalid_envelope"),
    Bad("bd is an array", json.dumps({"hd": {"event": "chat.message"}, "bd": [{"text": "hi"}]}),
        "invalid_envelope"),
    Bad("no event", envelope(hd={"role": "B"}), "invalid_envelope"),
    Bad("event is a number", envelope(hd={"event": 1}), "invalid_envelope"),
    Bad("event is null", envelope(hd={"event": None}), "invalid_envelope"),
    Bad("event is an object", envelope(hd={"event": {"name": "chat.message"}}), "invalid_envelope"),
    Bad("event is an array", envelope(hd={"event": ["chat.message"]}), "invalid_envelope"),
    Bad("event is true", envelope(hd={"event": True}), "invalid_envelope"),
    Bad("text is a number", envelope(bd={"text": 42}), "invalid_envelope"),
    Bad("text is the largest double", '{"hd": {"event": "chat.message"}, "bd": {"text": 1.7976931348623157e308}}',
        "invalid_envelope"),
    Bad("text is an array", envelope(bd={"text": ["hi"]}), "invalid_envelope"),
    Bad("text is an object", envelope(bd={"text": {"value": "hi"}}), "invalid_envelope"),
    Bad("text is false", envelope(bd={"text": False}), "invalid_envelope"),
    # -- ids -------------------------------------------------------------------------------------
    Bad("empty cid", envelope(cid=""), "invalid_envelope"),
    Bad("cid one character too long", envelope(cid="c" * (MAX_CID_CHARS + 1)), "invalid_envelope"),
    Bad("cid of 10000 characters", envelope(cid="c" * 10000), "invalid_envelope"),
    Bad("cid of 65 emoji", envelope(cid="\U0001f600" * (MAX_CID_CHARS + 1)), "invalid_envelope"),
    Bad("cid is a number", envelope(cid=17), "invalid_envelope"),
    Bad("cid is a 64-bit integer", envelope(cid=2**64 - 1), "invalid_envelope"),
    Bad("cid is null", envelope(cid=None), "invalid_envelope"),
    Bad("cid is an object", envelope(cid={"id": "c-1"}), "invalid_envelope"),
    Bad("cid is an array", envelope(cid=["c-1"]), "invalid_envelope"),
    # -- unknown events --------------------------------------------------------------------------
    Bad("unknown event", envelope(hd={"event": "no.such.event", "cid": "u-1"}), "unknown_event"),
    Bad("the server's own error event", envelope(hd={"event": "error"}, bd={"code": "internal"}), "unknown_event"),
    Bad("empty event", envelope(hd={"event": ""}), "unknown_event"),
    Bad("event in capitals", envelope(hd={"event": "CHAT.MESSAGE"}), "unknown_event"),
    Bad("event with a trailing space", envelope(hd={"event": "chat.message "}), "unknown_event"),
    Bad("event with a NUL", envelope(hd={"event": "chat.message\u0000"}), "unknown_event"),
    Bad("event of 10000 characters", envelope(hd={"event": "e" * 10000}), "unknown_event"),
    Bad("event with a lookalike letter", envelope(hd={"event": "chat.m\u0435ssage"}), "unknown_event"),
    # -- role games (the connection is bound to B) -----------------------------------------------
    Bad("role C", envelope(role="C"), "invalid_role"),
    Bad("role in lower case", envelope(role="b"), "invalid_role"),
    Bad("role user", envelope(role="user"), "invalid_role"),
    Bad("role null", envelope(role=None), "invalid_role"),
    Bad("role empty", envelope(role=""), "invalid_role"),
    Bad("role with a space", envelope(role=" B"), "invalid_role"),
    Bad("role with a NUL", envelope(role="B\u0000"), "invalid_role"),
    Bad("role is an array", envelope(role=["B"]), "invalid_role"),
    Bad("role is an object", envelope(role={"B": True}), "invalid_role"),
    Bad("role is a number", envelope(role=1), "invalid_role"),
    Bad("role is true", envelope(role=True), "invalid_role"),
    Bad("role LLM in capitals", envelope(role="LLM"), "invalid_role"),
    Bad("role llm", envelope(role="llm"), "reserved_role"),
    Bad("role llm after B in the same header", '{"hd": {"event": "chat.message", "role": "B", "role": "llm"}, '
        '"bd": {"text": "hi"}}', "reserved_role"),
    Bad("a second header naming llm", '{"hd": {"event": "chat.message", "role": "B"}, '
        '"hd": {"event": "chat.message", "role": "llm"}, "bd": {"text": "hi"}}', "reserved_role"),
    Bad("the other human's role", envelope(role="A"), "role_mismatch"),
    Bad("role A after llm in the same header", '{"hd": {"event": "chat.message", "role": "llm", "role": "A"}, '
        '"bd": {"text": "hi"}}', "role_mismatch"),
    # -- empty text ------------------------------------------------------------------------------
    Bad("no text", envelope(bd={}), "empty_text"),
    Bad("text null", envelope(bd={"text": None}), "empty_text"),
    Bad("empty text", envelope(bd={"text": ""}), "empty_text"),
    Bad("only whitespace text", envelope(bd={"text": " \n\t\r "}), "empty_text"),
    Bad("only unicode spaces", envelope(bd={"text": "\u00a0\u2003\u3000"}), "empty_text"),
    Bad("text under another key", envelope(bd={"Text": "hi"}), "empty_text"),
    # -- too large -------------------------------------------------------------------------------
    Bad("text one character over the limit", envelope(bd={"text": TOO_MANY_CHARS}), "too_large"),
    Bad("multibyte text over the limit", envelope(bd={"text": "\ud55c" * (DEFAULT_MAX_TEXT_CHARS + 1)}), "too_large"),
    Bad("frame over the byte limit", envelope(bd={"text": "hi", "pad": "p" * DEFAULT_MAX_MESSAGE_BYTES}),
        "too_large"),
    Bad("frame over the byte limit in whitespace", GOOD + " " * DEFAULT_MAX_MESSAGE_BYTES, "too_large"),
    # -- the bot's events, malformed (refused before anything reaches the bot) ---------------------
    Bad("llm.invoke with a numeric prompt", envelope(hd={"event": "llm.invoke"}, bd={"prompt": 42}),
        "invalid_envelope"),
    Bad("llm.invoke with a prompt over the limit", envelope(hd={"event": "llm.invoke"}, bd={"prompt": TOO_MANY_CHARS}),
        "too_large"),
    Bad("llm.invoke as the bot", envelope(hd={"event": "llm.invoke", "role": "llm"}, bd={}), "reserved_role"),
    Bad("llm.cancel without a rid", envelope(hd={"event": "llm.cancel"}, bd={}), "invalid_envelope"),
    Bad("llm.cancel with an oversize rid", envelope(hd={"event": "llm.cancel"}, bd={"rid": "r" * 65}),
        "invalid_envelope"),
    Bad("llm.response from a client", envelope(hd={"event": "llm.response"}, bd={"text": "I am the bot"}),
        "unknown_event"),
    # -- binary frames ---------------------------------------------------------------------------
    Bad("binary", b"\x00\x01\x02binary", "unsupported_frame"),
    Bad("empty binary", b"", "unsupported_frame"),
    Bad("a valid envelope as binary", GOOD.encode(), "unsupported_frame"),
    Bad("binary that is not UTF-8", b"\xff\xfe\xfd", "unsupported_frame"),
]

TEXT_CORPUS = [bad for bad in CORPUS if isinstance(bad.frame, str)]

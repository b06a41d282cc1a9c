"""The JSON the relay accepts: what orjson parses, and no more than the rest of the relay can hold.

orjson alone refuses what is not JSON, lone surrogates (``"\\ud800"``), ``NaN``/``Infinity`` and
numbers too big for a double (``1e400``), and nesting past 1024 levels. Two more rules keep an
accepted frame storable and stored exactly as sent:

- nesting at most :data:`~protocol.limits.MAX_JSON_DEPTH` levels (orjson *writes* at most 254,
  and the stored body is written again inside history pages);
- integers within 64 bits (orjson quietly turns bigger ones into lossy floats).

Both are checked only when the raw frame could break them (enough brackets, a run of 19 digits),
so an ordinary frame costs one C-speed pass over its bytes (``bytes.translate``).
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

from protocol.errors import ProtocolError
from protocol.limits import MAX_JSON_DEPTH

MIN_INT = -(2**63)
MAX_INT = 2**64 - 1
_LONG_DIGITS = re.compile(rb"[0-9]{19}")  # |n| >= 2**63 needs 19 digits or more
_NEITHER_DIGIT_NOR_OPENING = bytes(sorted(set(range(256)) - set(b"0123456789[{")))


def decode_json(frame: str | bytes) -> Any:
    """The frame's JSON value, or ``ProtocolError("invalid_json")``."""
    try:
        data = orjson.loads(frame)
    except orjson.JSONDecodeError:
        raise ProtocolError("invalid_json") from None
    raw = frame.encode("utf-8", "surrogatepass") if isinstance(frame, str) else frame
    kept = raw.translate(None, _NEITHER_DIGIT_NOR_OPENING)
    if len(kept) < 19:  # the common case: too few digits and brackets to break either rule
        return data
    brackets = kept.count(b"[") + kept.count(b"{")
    long_digits = len(kept) - brackets >= 19 and _LONG_DIGITS.search(raw) is not None
    if brackets > MAX_JSON_DEPTH or long_digits:
        big_float = _walk(data)  # refuses deep nesting
        if big_float and long_digits:
            _check_ints(raw)
    return data


def _walk(data: Any) -> bool:
    """Refuse nesting deeper than the limit; True when a float may stand for a too-big integer."""
    suspect = False
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            suspect = suspect or (isinstance(value, float) and abs(value) >= 2**63 and value.is_integer())
            continue
        if depth > MAX_JSON_DEPTH:
            raise ProtocolError("invalid_json", f"The frame nests arrays and objects deeper than {MAX_JSON_DEPTH} "
                                "levels.")
        stack.extend((child, depth + 1) for child in children)
    return suspect


def _check_ints(frame: bytes) -> None:
    """Parse again, exactly, to tell ``1e19`` (a float, fine) from ``10000000000000000000`` (too big)."""
    try:
        json.loads(frame, parse_int=_int64)  # depth is checked already: no RecursionError
    except ValueError:  # never seen: orjson accepted this text
        raise ProtocolError("invalid_json") from None


def _int64(literal: str) -> int:
    digits = literal.removeprefix("-")
    if len(digits) <= 20 and MIN_INT <= (value := int(literal)) <= MAX_INT:
        return value
    raise ProtocolError("invalid_json", "Integers must fit in 64 bits (-2**63 to 2**64-1); send bigger numbers "
                        "as strings.")

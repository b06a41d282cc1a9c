"""The one step every state table takes (the member, the feed's cursor, a generation), h11-style."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import TypeVar

S = TypeVar("S", bound=enum.Enum)
T = TypeVar("T", bound=enum.Enum)


def next_state(table: Mapping[tuple[S, T], S], state: S, trigger: T, error: type[Exception], what: str) -> S:
    """The state ``trigger`` leads to from ``state``; ``error`` (naming ``what``) for a pair not in
    ``table``: that is a bug."""
    try:
        return table[state, trigger]
    except KeyError:
        raise error(f"{what}: can't handle {trigger.name} in state {state.name}") from None

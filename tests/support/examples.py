"""The examples of ``postman/POSTMAN_EXAMPLES.md``, parsed, and the rule matching a documented
answer with a real one.

Each ``## N. Title`` section names its tab (``Tab **A**``), then has ```` ```json ```` blocks: the
first is the client frame, each later one an answer. The paragraph before an answer says who
receives it: ``every member`` or ``only the sender``. A section may say ``Server settings: `KEY=VALUE`,
...``: it runs, with the sections after it that say the same, on a server started with them, in a room
of its own. An id of an earlier answer in a client frame (``bd.rid``) is sent as the real id it stands
for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import orjson

from tests.support.schemas import ROOT

EXAMPLES_PATH = ROOT / "postman" / "POSTMAN_EXAMPLES.md"
DOCUMENTED_ROOM = "room001"

_SECTION = re.compile(r"^## (\d+\. .+)$", re.MULTILINE)
_BLOCK = re.compile(r"^```json\n(.*?)\n```$", re.MULTILINE | re.DOTALL)
_TAB = re.compile(r"Tab \*\*(A|B|U)\*\*")
_SETTINGS = re.compile(r"^Server settings: (.+)$", re.MULTILINE)
_SETTING = re.compile(r"`([A-Z][A-Z0-9_]*)=([^`]*)`")
_SO_FAR = "…"  # a documented text ending with it stands for any text that starts with what comes before it
_IDS = ("id", "reply_to", "rid", "regenerates")  # unique values: one documented value stands for one real one
_TIMES = ("ts",)


@dataclass(frozen=True)
class Answer:
    frame: dict[str, Any]
    everyone: bool  # every member receives it (else only the sender)


@dataclass(frozen=True)
class Example:
    title: str
    tab: str
    frame_text: str
    answers: list[Answer]
    settings: tuple[tuple[str, str], ...] = ()  # the server's (none: the shared server's defaults)

    @property
    def frame(self) -> Any:
        return orjson.loads(self.frame_text)


def parse_examples() -> list[Example]:
    text = EXAMPLES_PATH.read_text(encoding="utf-8")
    starts = [(m.start(), m.group(1)) for m in _SECTION.finditer(text)]
    return [_example(title, text[start:end])
            for (start, title), (end, _) in zip(starts, [*starts[1:], (len(text), "")], strict=True)]


def _example(title: str, section: str) -> Example:
    tab = _TAB.search(section)
    assert tab is not None, f"{title}: no 'Tab **A|B|U**'"
    blocks = list(_BLOCK.finditer(section))
    assert len(blocks) >= 2, f"{title}: a client frame and at least one answer are needed"
    answers = []
    for previous, block in pairwise(blocks):
        lead = " ".join(section[previous.end():block.start()].strip().split("\n\n")[-1].split()).lower()
        everyone, sender = "every member" in lead, "only the sender" in lead
        assert everyone != sender, f"{title}: say 'every member' or 'only the sender' before each answer"
        answers.append(Answer(orjson.loads(block.group(1)), everyone))
    settings = _SETTINGS.search(section)
    pairs = tuple(_SETTING.findall(settings.group(1))) if settings else ()
    assert settings is None or pairs, f"{title}: 'Server settings:' names no `KEY=VALUE`"
    return Example(title, tab.group(1), blocks[0].group(1), answers, pairs)


def intro_frames() -> list[dict[str, Any]]:
    """The frames shown in ``json`` blocks before the first example (what the server sends by itself)."""
    text = EXAMPLES_PATH.read_text(encoding="utf-8")
    first = _SECTION.search(text)
    return [orjson.loads(block.group(1)) for block in _BLOCK.finditer(text[:first.start() if first else len(text)])]


class Bindings:
    """Documented ids and times stand for real ones: the first time one is met it is bound to the
    real value, and each later occurrence must be that value again (ids are also one-to-one)."""

    def __init__(self, room: str) -> None:
        self._real: dict[str, str] = {DOCUMENTED_ROOM: room}
        self._documented: dict[str, str] = {room: DOCUMENTED_ROOM}

    def sent(self, frame_text: str) -> str:
        """A client frame as it is sent: each documented id bound already replaced by its real one."""
        for documented, real in self._real.items():
            if documented != DOCUMENTED_ROOM:
                frame_text = frame_text.replace(f'"{documented}"', f'"{real}"')
        return frame_text

    def same(self, documented: str, real: str, one_to_one: bool) -> bool:
        bound = self._real.setdefault(documented, real)
        owner = self._documented.setdefault(real, documented) if one_to_one else documented
        return bound == real and owner == documented


def differences(documented: Any, real: Any, bindings: Bindings, path: str = "") -> list[str]:
    """Where ``real`` differs from ``documented``: same keys everywhere, equal values, except ids,
    times and the room (bound, see :class:`Bindings`), token counts and ``retry_after_s`` (any integer),
    and a text ending with ``…`` (any text that starts with what comes before it: an answer cut short)."""
    key = path.rpartition("/")[2]
    if isinstance(documented, dict):
        if not isinstance(real, dict) or documented.keys() != real.keys():
            return [f"{path or '/'}: {documented!r} != {real!r}"]
        return [d for k in documented for d in differences(documented[k], real[k], bindings, f"{path}/{k}")]
    if key in (*_IDS, *_TIMES, "sid") and isinstance(documented, str):
        if isinstance(real, str) and bindings.same(documented, real, one_to_one=key != "ts"):
            return []
        return [f"{path}: {documented!r} does not stand for {real!r}"]
    if path.startswith("/bd/usage/") or path == "/bd/retry_after_s":
        return [] if type(real) is type(documented) else [f"{path}: {real!r} is not a {type(documented).__name__}"]
    if isinstance(documented, str) and documented.endswith(_SO_FAR):
        so_far = documented.removesuffix(_SO_FAR)
        begins = isinstance(real, str) and real.startswith(so_far)
        return [] if begins else [f"{path}: {real!r} does not start {so_far!r}"]
    return [] if documented == real else [f"{path}: {documented!r} != {real!r}"]

"""No Lua script names or builds a key: every key a script touches comes in ``KEYS`` (so each call
touches the keys it was given, of one room, and can run on Redis Cluster), and every name comes from
:mod:`server.store.keys`."""

from __future__ import annotations

import re
from importlib import resources

import pytest

SCRIPTS = {path.name: path.read_text() for path in resources.files("server.store").joinpath("lua").iterdir()
           if path.name.endswith(".lua")}
#: Commands whose first argument is not a key.
NOT_KEYS = {"PUBLISH", "SPUBLISH", "TIME", "SCRIPT"}  # (a shard channel: in the room's slot, see keys.py)
#: Commands whose key comes after a subcommand (``XINFO STREAM key``).
SUBCOMMANDS = {"XINFO", "XGROUP", "OBJECT"}
_CALL = re.compile(r"redis\.p?call\(\s*'([A-Za-z]+)'\s*(?:,\s*([^,)]+))?(?:,\s*([^,)]+))?")
_LOCAL = re.compile(r"local\s+([\w\s,]+?)\s*=\s*([^\n]+)")
_FOR_KEYS = re.compile(r"for\s+\w+\s*,\s*(\w+)\s+in\s+ipairs\(KEYS\)")
_KEY = re.compile(r"^KEYS\[[^\]]+\]$")
_FUNCTION = re.compile(r"local\s+function\s+(\w+)\(([^)]*)\)")


def _code(source: str) -> str:
    """The script without its comments."""
    return "\n".join(line.split("--", 1)[0] for line in source.splitlines())


def _names_bound_to_keys(code: str) -> set[str]:
    names = set(_FOR_KEYS.findall(code))
    for targets, values in _LOCAL.findall(code):
        for name, value in zip(targets.split(","), values.split(","), strict=False):
            value = value.strip()
            if "KEYS[" in value and ".." not in value and "'" not in value:
                names.add(name.strip())
    return names | _parameters_bound_to_keys(code, names)


def _parameters_bound_to_keys(code: str, bound: set[str]) -> set[str]:
    """A local function's parameters that every call of the function passes a key (``KEYS[i]`` or a
    name bound to one) in."""
    names: set[str] = set()
    for function, parameters in _FUNCTION.findall(code):
        params = [param.strip() for param in parameters.split(",") if param.strip()]
        calls = [[arg.strip() for arg in args.split(",")]
                 for args in re.findall(rf"(?<![\w.]){function}\(([^()]*(?:\([^()]*\)[^()]*)*)\)", code)]
        calls = [args for args in calls if args != params]  # (not the definition)
        for n, param in enumerate(params):
            passed = [args[n] if n < len(args) else "" for args in calls]
            if passed and all(_KEY.match(arg) or arg in bound for arg in passed):
                names.add(param)
    return names


def violations(source: str) -> list[str]:
    """What in ``source`` names or builds a key: empty for a script that only uses ``KEYS``."""
    code = _code(source)
    found = [f"names a key: {literal}" for literal in re.findall(r"'[^']*chat:[^']*'", code)]
    bound = _names_bound_to_keys(code)
    for command, first, second in _CALL.findall(code):
        if command.upper() in NOT_KEYS:
            continue
        argument = (second if command.upper() in SUBCOMMANDS else first).strip()
        if not (_KEY.match(argument) or argument in bound):
            found.append(f"{command} on {argument!r}, not a key from KEYS")
    return found


def test_a_local_functions_parameter_counts_as_a_key_only_when_every_call_passes_one() -> None:
    helper = "local function drop(set, rid)\n  redis.call('SADD', set, rid)\nend\n"
    assert violations(helper + "drop(KEYS[2], ARGV[1])\n") == []
    assert violations(helper + "drop(KEYS[2], ARGV[1])\ndrop(ARGV[3], ARGV[1])\n") != []


def test_the_scripts_are_found() -> None:
    assert {"append.lua", "ephemeral.lua", "follow.lua", "jobs.lua", "session.lua", "sweep.lua"} <= set(SCRIPTS)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_a_script_touches_only_the_keys_it_is_given(name: str) -> None:
    assert violations(SCRIPTS[name]) == []


@pytest.mark.parametrize(("source", "problem"), [
    ("redis.call('GET', 'chat:epoch:' .. ARGV[1])", "names a key"),
    ("local key = 'chat:node:' .. ARGV[1]\nredis.call('EXISTS', key)", "names a key"),
    ("redis.call('EXISTS', ARGV[1] .. ':alive')", "not a key from KEYS"),
    ("local room = string.sub(KEYS[1], 14)\nredis.call('SMEMBERS', 'x' .. room)", "not a key from KEYS"),
    ("redis.call('DEL', ARGV[2])", "not a key from KEYS"),
])
def test_the_check_catches_a_script_that_builds_a_key(source: str, problem: str) -> None:
    assert any(problem in violation for violation in violations(source))


def test_the_check_accepts_keys_bound_to_local_names() -> None:
    source = ("local stream, epoch = KEYS[1], KEYS[2]\nfor _, key in ipairs(KEYS) do redis.call('DEL', key) end\n"
              "redis.call('GET', stream)\nredis.call('SET', epoch, 1)\nredis.call('PUBLISH', ARGV[1] .. 'x', 1)\n"
              "local dedupe = d > 0 and KEYS[d]\nredis.call('SET', dedupe, 1)")
    assert violations(source) == []

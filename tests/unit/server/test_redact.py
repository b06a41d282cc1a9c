"""No secret in any log line: the redaction filter, record by record, and where it is installed."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from server import redact
from server.redact import REDACTED, Redactor
from server.settings import Settings

JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzaWQiOiJyMSIsInJvbGUiOiJBIn0.cQ-HeuW8V6tLCaDHAUePI2A8xG321PxErG0k"
ADMIN = "admin-key-0123456789abcdef"
OPENAI = "sk-test-0123456789abcdefghij"


def record(msg: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = None if exc is None else (type(exc), exc, exc.__traceback__)
    return logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, msg, args or None, exc_info)


def shown(rec: logging.LogRecord, secrets: tuple[str, ...] = ()) -> str:
    """What a handler with the filter writes for ``rec``."""
    assert Redactor(secrets).filter(rec) is True  # it never drops a record
    return logging.Formatter("%(message)s").format(rec)


def test_a_token_in_a_query_string_is_redacted_in_uvicorns_websocket_line() -> None:
    # uvicorn's line for every WebSocket handshake, with the path and its query string as an argument
    line = shown(record('%s - "WebSocket %s" %s', "127.0.0.1:5000", f"/v1/session/chat?sid=r1&token={JWT}&role=A",
                        "[accepted]"))
    assert line == f'127.0.0.1:5000 - "WebSocket /v1/session/chat?sid=r1&token={REDACTED}&role=A" [accepted]'


@pytest.mark.parametrize("query", ["token=abc.def", "access_token=opaque-123", "api_key=k-1", "key=abc",
                                   "admin_key=xyz", "secret=s", "password=p", "TOKEN=abc"])
def test_every_credential_named_query_parameter_is_redacted(query: str) -> None:
    name = query.partition("=")[0]
    assert shown(record(f"GET /x?a=1&{query}&b=2 HTTP/1.1")) == f"GET /x?a=1&{name}={REDACTED}&b=2 HTTP/1.1"


def test_query_parameters_that_are_not_credentials_are_kept() -> None:
    line = "GET /v1/session/chat?sid=r1&role=A&last_id=1-0&epoch=abc HTTP/1.1"
    assert shown(record(line)) == line


def test_authorization_values_and_bearer_credentials_are_redacted() -> None:
    assert shown(record("< Authorization: Bearer opaque-admin-key")) == f"< Authorization: Bearer {REDACTED}"
    assert shown(record("< authorization: Basic dXNlcjpwYXNz")) == f"< authorization: Basic {REDACTED}"
    assert shown(record("headers={'authorization': 'abc123'}")) == f"headers={{'authorization': '{REDACTED}'}}"
    assert shown(record("sent with bearer k-0123")) == f"sent with Bearer {REDACTED}"


def test_a_jwt_is_redacted_wherever_it_appears() -> None:
    assert shown(record("refused %s for room %s", JWT, "r1")) == f"refused {REDACTED} for room r1"


def test_the_configured_secrets_are_redacted_verbatim_the_longest_first() -> None:
    secrets = (ADMIN, OPENAI, ADMIN + "-longer")
    assert shown(record("keys %s %s %s", ADMIN, OPENAI, ADMIN + "-longer"), secrets) == (
        f"keys {REDACTED} {REDACTED} {REDACTED}")
    assert Redactor(("short", "")).secrets == ()  # too short to be a secret: ordinary words stay


def test_a_traceback_and_a_stack_are_redacted_too() -> None:
    try:
        raise RuntimeError(f"cannot reach https://api.example.com with key {OPENAI}")
    except RuntimeError as exc:
        rec = record("a call failed", exc=exc)
    rec.stack_info = f"Stack (most recent call last):\n  token={JWT}"
    text = shown(rec, (OPENAI,))
    assert OPENAI not in text and JWT not in text and "RuntimeError: cannot reach" in text


def test_a_record_is_redacted_once_whatever_the_handlers() -> None:
    rec = record("token=%s", "abc")
    first, second = Redactor(), Redactor(("abc",))
    assert first.filter(rec) and second.filter(rec)
    assert (rec.getMessage(), rec.args) == (f"token={REDACTED}", None)


def test_a_record_with_a_bad_format_string_is_kept_and_redacted() -> None:
    rec = record("%d tokens", f"token={JWT}")
    assert JWT not in shown(rec)


@pytest.fixture
def root_handler() -> Iterator[logging.StreamHandler[io.StringIO]]:
    """The root logger with a handler writing to a string, as ``settings_or_exit`` sets it up (restored
    afterwards; pytest's capture handler comes and goes beside it)."""
    root = logging.getLogger()
    handler = logging.StreamHandler(io.StringIO())
    saved, level = root.handlers[:], root.level
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG)
    yield handler
    root.handlers[:] = saved
    root.setLevel(level)


def test_install_puts_the_filter_on_the_root_handlers_so_every_logger_passes_it(
        root_handler: logging.StreamHandler[io.StringIO]) -> None:
    redact.install((ADMIN,))
    redact.install((ADMIN, OPENAI))  # installing again replaces the filter, never stacks it
    assert [type(f) for f in root_handler.filters] == [Redactor]
    logging.getLogger("uvicorn.error").info('%s - "WebSocket %s" 403', "127.0.0.1:1", f"/chat?token={JWT}")
    logging.getLogger("websockets.server").debug("< Authorization: Bearer %s", ADMIN)
    logging.getLogger("openai").debug("key %s", OPENAI)
    text = root_handler.stream.getvalue()
    assert JWT not in text and ADMIN not in text and OPENAI not in text
    assert text.count(REDACTED) == 3


def test_the_settings_name_every_secret_they_hold() -> None:
    settings = Settings.from_env({"AUTH_SECRET": "s" * 32, "ADMIN_KEY": ADMIN, "METRICS_TOKEN": "m" * 16,
                                  "OPENAI_API_KEY": OPENAI, "REDIS_URL": "redis://:redis-password-1@10.0.0.5:6379/0"})
    assert set(settings.secrets) == {"s" * 32, ADMIN, "m" * 16, OPENAI, "redis-password-1"}
    assert Settings.from_env({}).secrets == ()

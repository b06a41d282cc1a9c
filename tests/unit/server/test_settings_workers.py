"""``WORKERS``: how many processes serve the port, and the refusals that name it."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from server import redact
from server.redact import REDACTED, Redactor
from server.settings import Settings, SettingsError, label_logs

REDIS = {"REDIS_URL": "redis://127.0.0.1:6379/0"}


def test_one_process_serves_the_port_by_default() -> None:
    settings = Settings.from_env({})
    assert settings.workers == 1
    assert settings.worker_processes(cores=16) == 1


def test_workers_is_the_number_of_processes() -> None:
    assert Settings.from_env({**REDIS, "WORKERS": " 4 "}).worker_processes(cores=16) == 4
    assert Settings.from_env({**REDIS, "WORKERS": "1"}).worker_processes(cores=16) == 1


def test_zero_workers_is_one_per_core() -> None:
    settings = Settings.from_env({**REDIS, "WORKERS": "0"})
    assert settings.workers == 0
    assert settings.worker_processes(cores=16) == 16
    assert settings.worker_processes(cores=0) == 1  # a machine that does not say still gets one


def test_an_empty_workers_keeps_the_default() -> None:
    assert Settings.from_env({"WORKERS": ""}).workers == 1


@pytest.mark.parametrize("raw", ["2", "0", "1024"])
def test_the_embedded_store_refuses_more_than_one_process_naming_workers(raw: str) -> None:
    with pytest.raises(SettingsError, match=rf"^WORKERS={raw} needs REDIS_URL: ") as refused:
        Settings.from_env({"WORKERS": raw})
    assert "\n" not in str(refused.value)
    assert Settings.from_env({"WORKERS": "1"}).redis_url is None  # one process on the embedded store is fine


@pytest.mark.parametrize(("raw", "why"), [("-1", "out of range"), ("1025", "out of range"), ("two", "not an integer"),
                                          ("1.5", "not an integer")])
def test_bad_workers_values_are_refused_naming_the_variable(raw: str, why: str) -> None:
    with pytest.raises(SettingsError, match=f"^WORKERS.*{why}"):
        Settings.from_env({**REDIS, "WORKERS": raw})


@pytest.fixture
def root_handler() -> Iterator[logging.StreamHandler[io.StringIO]]:
    """The root logger with one handler writing to a string, as ``settings_or_exit`` sets it up."""
    root = logging.getLogger()
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved, level = root.handlers[:], root.level
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    yield handler
    root.handlers[:] = saved
    root.setLevel(level)


def test_labelled_logs_name_the_node_on_every_line_and_stay_redacted(
        root_handler: logging.StreamHandler[io.StringIO]) -> None:
    redact.install(("admin-key-0123456789",))
    label_logs("node 3fa2b1c0d9e8")
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 4242)
    logging.getLogger("server.app").warning("key %s, 100%% sure", "admin-key-0123456789")
    lines = root_handler.stream.getvalue().splitlines()
    assert [line.split(" ", 3)[3] for line in lines] == [
        "[node 3fa2b1c0d9e8] uvicorn.error: Started server process [4242]",
        f"[node 3fa2b1c0d9e8] server.app: key {REDACTED}, 100% sure",
    ]
    assert [type(f) for f in root_handler.filters] == [Redactor]


def test_a_label_with_a_percent_sign_is_written_as_it_is(root_handler: logging.StreamHandler[io.StringIO]) -> None:
    label_logs("50%(name)s")
    logging.getLogger("x").info("hello")
    assert "[50%(name)s] x: hello" in root_handler.stream.getvalue()

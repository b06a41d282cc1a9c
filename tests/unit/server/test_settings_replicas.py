"""``REDIS_MIN_REPLICAS`` and its timeout: parsed, and the combinations refused with a message naming them."""

from __future__ import annotations

import pytest

from server.settings import Settings, SettingsError

REDIS = {"REDIS_URL": "redis://127.0.0.1:6379/0"}


def test_appends_wait_for_no_replica_by_default() -> None:
    settings = Settings.from_env(REDIS)
    assert (settings.redis_min_replicas, settings.redis_min_replicas_timeout_ms) == (0, 1000)


def test_min_replicas_and_its_timeout_are_read() -> None:
    settings = Settings.from_env({**REDIS, "REDIS_MIN_REPLICAS": "1", "REDIS_MIN_REPLICAS_TIMEOUT_MS": "250"})
    assert (settings.redis_min_replicas, settings.redis_min_replicas_timeout_ms) == (1, 250)


@pytest.mark.parametrize(("env", "named"), [
    ({"REDIS_MIN_REPLICAS": "-1"}, "REDIS_MIN_REPLICAS"),
    ({"REDIS_MIN_REPLICAS": "one"}, "REDIS_MIN_REPLICAS"),
    ({"REDIS_MIN_REPLICAS_TIMEOUT_MS": "0"}, "REDIS_MIN_REPLICAS_TIMEOUT_MS"),
])
def test_a_bad_value_is_refused_naming_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env({**REDIS, **env})


def test_the_embedded_store_has_no_replicas_to_wait_for() -> None:
    with pytest.raises(SettingsError, match="REDIS_MIN_REPLICAS=1 needs REDIS_URL"):
        Settings.from_env({"REDIS_MIN_REPLICAS": "1"})


def test_the_wait_must_end_before_the_replys_own_timeout() -> None:
    with pytest.raises(SettingsError, match="TIMEOUT_MS=2000 must be shorter than REDIS_TIMEOUT_S=2 s"):
        Settings.from_env({**REDIS, "REDIS_MIN_REPLICAS": "1", "REDIS_MIN_REPLICAS_TIMEOUT_MS": "2000",
                           "REDIS_TIMEOUT_S": "2"})
    # without replicas to wait for, the timeout is not used: a short REDIS_TIMEOUT_S is fine
    assert Settings.from_env({**REDIS, "REDIS_TIMEOUT_S": "0.5"}).redis_timeout_s == 0.5

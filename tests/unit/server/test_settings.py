"""The hardening settings: defaults, parsing, and a one-line refusal naming the variable."""

from __future__ import annotations

import pytest

from server.ratelimit import RateLimit
from server.settings import Settings, SettingsError


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.allowed_origins == frozenset()
    assert settings.rate_limit == RateLimit(per_s=50, burst=200)
    assert settings.max_connections_per_ip == 0
    assert (settings.ping_interval_s, settings.ping_timeout_s) == (20, 20)
    assert settings.append_gather_ms == 0


def test_the_append_gather_time_is_whole_milliseconds_up_to_a_second() -> None:
    assert Settings.from_env({"APPEND_GATHER_MS": "2"}).append_gather_ms == 2


def test_allowed_origins_are_a_comma_separated_lower_case_set() -> None:
    settings = Settings.from_env({"ALLOWED_ORIGINS": " https://Chat.Example.com, http://localhost:8080 ,,null"})
    assert settings.allowed_origins == {"https://chat.example.com", "http://localhost:8080", "null"}


def test_fractional_rates_and_intervals_are_allowed() -> None:
    settings = Settings.from_env({"RATE_LIMIT_PER_SEC": "0.5", "RATE_LIMIT_BURST": "3", "PING_INTERVAL_S": "0.25",
                                  "PING_TIMEOUT_S": "0", "MAX_CONNECTIONS_PER_IP": "100000"})
    assert settings.rate_limit == RateLimit(per_s=0.5, burst=3)
    assert (settings.ping_interval_s, settings.ping_timeout_s, settings.max_connections_per_ip) == (0.25, 0, 100000)


def test_a_rate_of_zero_turns_the_limit_off() -> None:
    assert Settings.from_env({"RATE_LIMIT_PER_SEC": "0"}).rate_limit.limiter() is None


@pytest.mark.parametrize(("name", "raw"), [
    ("ALLOWED_ORIGINS", "https://chat.example.com/app"),
    ("ALLOWED_ORIGINS", "chat.example.com"),
    ("ALLOWED_ORIGINS", "*"),
    ("RATE_LIMIT_PER_SEC", "-1"),
    ("RATE_LIMIT_PER_SEC", "fast"),
    ("RATE_LIMIT_PER_SEC", "nan"),
    ("RATE_LIMIT_PER_SEC", "inf"),
    ("RATE_LIMIT_BURST", "0"),
    ("RATE_LIMIT_BURST", "2.5"),
    ("MAX_CONNECTIONS_PER_IP", "-1"),
    ("PING_INTERVAL_S", "-0.5"),
    ("PING_TIMEOUT_S", "soon"),
    ("METRICS_TOKEN", "too-short"),
    ("APPEND_GATHER_MS", "-1"),
    ("APPEND_GATHER_MS", "1001"),
    ("APPEND_GATHER_MS", "0.5"),
])
def test_bad_values_are_refused_naming_the_variable(name: str, raw: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: raw})


def test_a_metrics_token_is_a_secret_kept_out_of_the_settings_repr() -> None:
    settings = Settings.from_env({"METRICS_TOKEN": " metrics-token-0123456789 "})
    assert settings.metrics_token == "metrics-token-0123456789"
    assert "metrics-token" not in repr(settings)


def test_a_bad_redis_url_is_refused_without_echoing_its_password() -> None:
    with pytest.raises(SettingsError, match="REDIS_URL must start with redis://") as info:
        Settings.from_env({"REDIS_URL": "http://:hunter2-password@10.0.0.5:6379/0"})
    assert "hunter2" not in str(info.value)
